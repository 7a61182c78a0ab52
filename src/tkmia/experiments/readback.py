"""The JSON files of a results folder, read back and validated like user input.

A results folder is written by tkmia, but anything may have happened to it since (an
editor, a full disk, another program, a person): ``config.json``, each setting's
``setting.json`` and each method's ``<method>.json`` are checked here before a number is
computed from them, and every fault is an :class:`~tkmia.errors.InputError` that names the
file, what is wrong and what to do (records lines: :func:`~tkmia.experiments.records.
check_record`; a universal run's δ files: :func:`~tkmia.attacks.universal.check_delta`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tkmia.errors import InputError
from tkmia.experiments.settings import MethodConfig, Setting

__all__ = ["is_universal", "read_config", "read_json", "read_method", "read_setting"]

#: the fix for a damaged ``config.json``
CONFIG_FIX = (
    "restore it (it is written by the tkmia command that made the folder), or pass "
    "another --out to start afresh"
)
#: the fix for a damaged setting or method description
SETTING_FIX = (
    "delete that setting's folder under records/ and rerun the same tkmia run command to redo it"
)


def read_json(path: Path, what: str, fix: str) -> Any:
    """The JSON value of ``path``.

    Raises:
        InputError: ``path`` is not UTF-8 JSON (the message names ``what`` and ``fix``).
    """
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        problem = "is not UTF-8 text"
    except json.JSONDecodeError as err:
        problem = "is empty" if not err.doc.strip() else f"is not valid JSON ({err.msg})"
    raise InputError(f"{what} {str(path)!r} {problem}; {fix}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


#: the keys of a `tkmia run` folder's ``config.json``: key → (check, what it must be)
_RUN_KEYS = {
    "dataset": (lambda v: isinstance(v, str), "a string"),
    "model": (lambda v: isinstance(v, str), "a string"),
    "settings": (_strings, "a list of setting names"),
    "methods": (_strings, "a list of method keys"),
}
#: keys that need not be there (older folders), but are checked when they are
_RUN_OPTIONAL = {
    "samples": (_is_int, "an integer"),
    "seed": (_is_int, "an integer"),
    "chunk_size": (_is_int, "an integer"),
}
_UNIVERSAL_KEYS = {
    "dataset": (lambda v: isinstance(v, str), "a string"),
    "model": (lambda v: isinstance(v, str), "a string"),
    "settings": (lambda v: isinstance(v, list) and all(isinstance(s, dict) for s in v),
                 "a list of objects"),
    "objectives": (_strings, "a list of objective names"),
    "eps": (lambda v: isinstance(v, list) and all(isinstance(e, (int, float)) for e in v),
            "a list of numbers"),
}  # fmt: skip
#: the keys of a `tkmia evaluate` or `tkmia certify` folder (their own modules check the
#: rest: every key there must match the command line's, see ``results_dir._mismatch``)
_OTHER_KEYS = {
    "dataset": (lambda v: isinstance(v, str), "a string"),
    "model": (lambda v: isinstance(v, str), "a string"),
}
#: the commands whose folders hold a ``"command"`` key, and their required keys
_COMMAND_KEYS = {"universal": _UNIVERSAL_KEYS, "evaluate": _OTHER_KEYS, "certify": _OTHER_KEYS}


def is_universal(config: dict[str, Any]) -> bool:
    """Whether a (validated) ``config.json`` is a `tkmia universal` folder's."""
    return config.get("command") == "universal"


def read_config(out: Path) -> dict[str, Any]:
    """The validated ``config.json`` of the results folder ``out``.

    Raises:
        InputError: there is none, or it is not a JSON object with the keys (and kinds) a
            `tkmia run` (or `tkmia universal`) folder has.
    """
    path = out / "config.json"
    if path.is_symlink() or not path.is_file():
        raise InputError(f"{str(out)!r} is not a tkmia results folder (no config.json)")
    config = read_json(path, "config file", CONFIG_FIX)
    if not isinstance(config, dict):
        raise InputError(
            f"config file {str(path)!r} holds a JSON {type(config).__name__}, not an object; "
            f"{CONFIG_FIX}"
        )
    command = config.get("command")
    if command is not None and command not in _COMMAND_KEYS:
        raise InputError(
            f"config file {str(path)!r}: 'command' {command!r} is none of "
            f"{sorted(_COMMAND_KEYS)}; {CONFIG_FIX}"
        )
    required = _COMMAND_KEYS[command] if command is not None else _RUN_KEYS
    for key, (check, kind) in required.items():
        if key not in config:
            raise InputError(f"config file {str(path)!r} lacks {key!r}; {CONFIG_FIX}")
        if not check(config[key]):
            raise InputError(f"config file {str(path)!r}: {key!r} must be {kind}; {CONFIG_FIX}")
    for key, (check, kind) in (_RUN_OPTIONAL if command is None else {}).items():
        if key in config and not check(config[key]):
            raise InputError(f"config file {str(path)!r}: {key!r} must be {kind}; {CONFIG_FIX}")
    return config


def _object(path: Path, what: str) -> dict[str, Any]:
    data = read_json(path, what, SETTING_FIX)
    if not isinstance(data, dict):
        raise InputError(
            f"{what} {str(path)!r} holds a JSON {type(data).__name__}, not an object; {SETTING_FIX}"
        )
    return data


def read_setting(path: Path) -> tuple[Setting, int, int, list[int] | None]:
    """``(setting, skipped, bad_images, selected indices or None)`` of a ``setting.json``.

    Raises:
        InputError: it is not the object :meth:`~tkmia.experiments.plan.SettingPlan.
            setting_json` writes (the message names the file and the key).
    """
    data = _object(path, "setting description")

    def bad(key: str, kind: str) -> InputError:
        return InputError(
            f"setting description {str(path)!r}: {key!r} must be {kind}; {SETTING_FIX}"
        )

    skipped, bad_images = data.pop("skipped", None), data.pop("bad_images", 0)
    if not _is_int(skipped) or skipped < 0:
        raise bad("skipped", "an integer >= 0")
    if not _is_int(bad_images) or bad_images < 0:
        raise bad("bad_images", "an integer >= 0")
    data.pop("bad_image_indices", None)
    selected = data.pop("indices", None)
    if selected is not None and not (
        isinstance(selected, list) and all(_is_int(i) and i >= 0 for i in selected)
    ):
        raise bad("indices", "a list of image indices")
    group = data.get("group_indices")
    if group is not None:
        if not (isinstance(group, list) and all(_is_int(i) for i in group)):
            raise bad("group_indices", "a list of label indices")
        data["group_indices"] = tuple(group)
    try:
        setting = Setting(**data)
    except TypeError as err:
        raise bad("(keys)", f"the keys of a setting ({err})") from None
    if not isinstance(setting.scheme, str) or not _is_int(setting.k):
        raise bad("scheme/k", "a scheme name and an integer k")
    return setting, skipped, bad_images, selected


def read_method(path: Path) -> MethodConfig:
    """The method configuration of a ``<method>.json``.

    Raises:
        InputError: it is not a method configuration tkmia knows (the message names the
            file).
    """
    data = _object(path, "method description")
    try:
        return MethodConfig.from_dict(data)
    except (KeyError, TypeError, ValueError) as err:
        detail = str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}"
        raise InputError(
            f"method description {str(path)!r} is not a method configuration ({detail}); "
            f"{SETTING_FIX}"
        ) from None
