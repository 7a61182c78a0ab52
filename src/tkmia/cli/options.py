"""The options of `tkmia run`, declared once: each entry makes a flag and a `--config` key.

A flag ``--max-iter`` is the config key ``max_iter`` (``max-iter`` is accepted in the file
too). A list option takes a comma-separated list on the command line and a list or a single
value in the file. Flags win over the file; what neither gives takes the option's default.
The hyper-parameter options come from the method registry's
:data:`~tkmia.experiments.methods.HYPERPARAMETERS`.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tkmia.errors import InputError, MissingFileError
from tkmia.experiments.builtin import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_K,
    DEFAULT_N,
    DEFAULT_SAMPLES,
    FALLBACK_BATCH_SIZE,
    FALLBACK_SAMPLES,
)
from tkmia.experiments.methods import HYPERPARAMETERS, REGISTRY, HyperParameter
from tkmia.experiments.selection import DEFAULT_SCOPE, DEFAULT_TOL, SCOPES
from tkmia.protocol import SCHEMES, TARGET_CHOICES


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Check:
    """A range check of one value: ``valid(value)``, else "--flag must be <expected>"."""

    expected: str
    valid: Callable[[Any], bool]


POSITIVE = Check("a positive integer", lambda v: _is_int(v) and v >= 1)
NON_NEGATIVE = Check("a non-negative integer", lambda v: _is_int(v) and v >= 0)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


POSITIVE_NUMBER = Check("a positive number", lambda v: _is_number(v) and 0 < v < math.inf)
NON_NEGATIVE_NUMBER = Check("a number >= 0", lambda v: _is_number(v) and 0 <= v < math.inf)


@dataclass(frozen=True)
class Option:
    """One option of `tkmia run`.

    Attributes:
        name: the config key; the flag is ``--name`` with ``-`` for ``_``.
        kind: ``str``, ``int``, ``float``, ``Path`` or ``bool`` (a switch).
        help: the help text (the default and the choices are appended).
        many: a list (comma-separated on the command line).
        default: the value when neither the flag nor the config file gives one; ``None``
            when it depends on other options (``shown`` then says how).
        shown: the default as the help shows it, when ``default`` does not say it.
        choices: the accepted values, if only some are.
        aliases: more flag names.
        check: a range check of each value.
        in_config: whether a config file may set it (``--config`` itself may not).
    """

    name: str
    kind: type = str
    help: str = ""
    many: bool = False
    default: Any = None
    shown: str | None = None
    choices: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    check: Check | None = None
    in_config: bool = True

    @property
    def flag(self) -> str:
        """The flag's main name, ``--max-iter`` for ``max_iter``."""
        return "--" + self.name.replace("_", "-")


def _hyperparameter(hp: HyperParameter) -> Option:
    per_method = ", ".join(
        f"{name} {hp.text(spec.defaults[hp.name])}"
        for name, spec in REGISTRY.items()
        if hp.name in spec.defaults
    )
    return Option(
        hp.option,
        hp.kind,
        f"{hp.help}; several values make a grid",
        many=True,
        shown=f"per method: {per_method}",
        choices=hp.choices,
        check=Check(hp.expected, hp.valid),
    )


def _per_dataset(values: dict[str, int], fallback: int) -> str:
    return "".join(f"{value} for {name}, " for name, value in values.items()) + f"else {fallback}"


_METHODS = ", ".join(REGISTRY)

#: every option of `tkmia run`, in the order of `tkmia run --help`
RUN_OPTIONS: tuple[Option, ...] = (
    Option("config", Path, "TOML file with the same keys as the flags", in_config=False),
    Option("dataset", help="digits, voc2012, coco2014, nuswide or folder", default="digits"),
    Option("root", Path, "the dataset's folder (see docs/datasets.md)"),
    Option("csv", Path, "label file of a 'folder' dataset"),
    Option("split", help="split to attack", shown="val, or test for digits and nuswide"),
    Option("image_size", int, "image side in pixels", shown="the dataset's", check=POSITIVE),
    Option(
        "model",
        help="'builtin', a .safetensors checkpoint with a .json sidecar, a TorchScript "
        ".pt/.ts or torch.export .pt2 archive, or a factory pkg.module:function or "
        "file.py:function returning an nn.Module (your own Python code: it is imported and "
        "run, only when named here), or timm:<name>@WEIGHTS (a timm model with local "
        "weights, nothing downloaded); see docs/own-model.md",
        shown="the built-in model for digits",
    ),
    Option(
        "normalize",
        help="TorchScript/export/factory/timm models: the normalisation they expect, "
        "imagenet, none (pixels in [0, 1]), MEAN,STD or 3 means and 3 stds",
        shown="none; a timm model's pretrained_cfg",
    ),
    Option(
        "classes", Path, "TorchScript/export/factory/timm models: their label names, one a line"
    ),
    Option(
        "methods",
        help=f"comma-separated, some of {_METHODS}, or your own attack class "
        "path/to/file.py:Class or package.module:Class (your code: imported and run; see "
        "docs/attacks.md)",
        many=True,
        shown="all",
    ),
    Option(
        "set",
        help="name=value[,...]: keyword arguments of your own attack class (--methods "
        "file.py:Class), e.g. lr=0.001,max_iter=300",
        many=True,
    ),
    Option(
        "scheme",
        help="S1 (global), S2 (random) or both",
        default="both",
        choices=(*SCHEMES, "both"),
    ),
    Option(
        "k",
        int,
        "e.g. 2,3",
        many=True,
        default=DEFAULT_K,
        check=Check("a positive integer (1 <= k < c)", lambda v: _is_int(v) and v >= 1),
    ),
    Option(
        "groups",
        help="S1 label groups by name, or label names joined by '+'",
        many=True,
        shown="the dataset's built-in groups",
    ),
    Option(
        "n",
        int,
        "S2: labels drawn per image, e.g. 1,2 (under torchrun write --n-labels: torchrun "
        "takes --n for one of its own options)",
        many=True,
        default=DEFAULT_N,
        aliases=("--n-labels",),
        check=POSITIVE,
    ),
    Option("threshold", int, "S2: success needs ΔN >= t", many=True, shown="t = n", check=POSITIVE),
    Option(
        "targets",
        help="targeted methods (tkmlapt): how the n targets per image are chosen (SPEC §7.3)",
        many=True,
        default=["random"],
        choices=TARGET_CHOICES,
    ),
    Option(
        "samples",
        int,
        "eligible images attacked per setting",
        shown=_per_dataset(DEFAULT_SAMPLES, FALLBACK_SAMPLES),
        check=POSITIVE,
    ),
    *(_hyperparameter(hp) for hp in HYPERPARAMETERS.values()),
    Option(
        "batch_size",
        int,
        "images optimised at once; a finished image's slot is refilled at once from the queue",
        shown=_per_dataset(DEFAULT_BATCH_SIZE, FALLBACK_BATCH_SIZE),
        check=POSITIVE,
    ),
    Option(
        "chunk_size",
        int,
        "images per chunk, the unit of records, resuming and torchrun sharding; a "
        "setting's chunks stream through one working set",
        shown="4 x --batch-size",
        check=POSITIVE,
    ),
    Option(
        "device", help="auto (cuda when a GPU is there, else cpu), cpu or cuda[:i]", default="auto"
    ),
    Option("seed", int, "random seed (S2 draws its labels with it)", default=0, check=NON_NEGATIVE),
    Option(
        "examples", int, "images per setting drawn in the figures", default=3, check=NON_NEGATIVE
    ),
    Option(
        "out",
        Path,
        "results folder; rerunning resumes, and more settings or methods extend it",
        shown="results/<dataset>-<model>",
    ),
    Option("no_progress", bool, "no progress bars", in_config=False),
    Option(
        "select_tol",
        float,
        "selection rule of a grid: among the configurations within this much of the best "
        "success rate, the smallest APer is reported",
        default=DEFAULT_TOL,
    ),
    Option(
        "select_scope",
        help="select per setting, or one configuration per method for all settings (mean "
        "success rate and APer over settings)",
        default=DEFAULT_SCOPE,
        choices=SCOPES,
    ),
    Option(
        "skip_bad_images",
        bool,
        "skip and count unreadable images instead of stopping",
        default=False,
    ),
    Option(
        "no_audit", bool, "skip the defender's audit at the end (see tkmia audit)", default=False
    ),
)

#: the options by config key
OPTIONS = {option.name: option for option in RUN_OPTIONS}
#: keys accepted in a --config TOML file (the flags' names with '_' for '-')
CONFIG_KEYS = frozenset(option.name for option in RUN_OPTIONS if option.in_config)

_KIND_WORDS = {
    str: "a string",
    Path: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
}


def _of_kind(kind: type, value: object) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return _is_int(value)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, str)


def _list(convert: type) -> Callable[[str], list[Any]]:
    """An argparse type: a comma-separated list of ``convert`` values."""

    def parse(text: str) -> list[Any]:
        items = [t.strip() for t in str(text).split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        try:
            return [convert(t) for t in items]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"cannot read {text!r} as a comma-separated list of "
                f"{'integers' if convert is int else 'numbers'}"
            ) from None

    return parse


def _help(option: Option) -> str:
    default = option.shown
    if default is None and option.default is not None and option.default is not False:
        value = option.default
        default = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    if option.kind is bool:
        return option.help  # a switch: off unless given
    return f"{option.help} (default: {default or 'none'})"


def add_options(parser: argparse.ArgumentParser, options: Sequence[Option] = RUN_OPTIONS) -> None:
    """Add one flag per option to ``parser``.

    Every flag's default is ``None`` (so a config file's value shows through); defaults
    are applied by :func:`complete`.

    Args:
        parser: the `run` subcommand's parser.
        options: the table to add.
    """
    for option in options:
        kwargs: dict[str, Any] = {"dest": option.name, "help": _help(option), "default": None}
        if option.kind is bool:
            kwargs["action"] = "store_true"
        else:
            kwargs["type"] = _list(option.kind) if option.many else option.kind
            kwargs["metavar"] = option.name.upper() + ("[,...]" if option.many else "")
            if option.choices:
                # a list's items are checked by check_values (argparse would test the list)
                kwargs["metavar"] = "{" + ",".join(option.choices) + "}"
                if option.many:
                    kwargs["metavar"] += "[,...]"
                else:
                    kwargs["choices"] = option.choices
        parser.add_argument(option.flag, *option.aliases, **kwargs)


def load_config(path: Path, options: Sequence[Option] = RUN_OPTIONS) -> dict[str, Any]:
    """The options a TOML config file sets, typed like the flags.

    Args:
        path: the TOML file; keys are option names (``max_iter`` or ``max-iter``).
        options: the command's option table.

    Returns:
        ``{config key: value}``: list options as lists (a single value becomes a
        one-item list), path options as :class:`~pathlib.Path`.

    Raises:
        MissingFileError: the file does not exist.
        InputError: it is not TOML, has an unknown key, or a value of the wrong type.
    """
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # Python 3.10
        import tomli as tomllib
    if not path.is_file():
        raise MissingFileError(f"config file {str(path)!r} not found")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"config file {str(path)!r} is not valid TOML: {err}") from None
    data = {key.replace("-", "_"): value for key, value in data.items()}
    table = {option.name: option for option in options}
    keys = {option.name for option in options if option.in_config}
    unknown = sorted(set(data) - keys)
    if unknown:
        raise InputError(
            f"config file {str(path)!r} has unknown keys {unknown}; expected some of {sorted(keys)}"
        )
    for key, value in data.items():
        option = table[key]
        if option.many and not isinstance(value, list):
            value = data[key] = [value]
        for item in value if option.many else [value]:
            if not _of_kind(option.kind, item):
                raise InputError(
                    f"config file {str(path)!r}: {key} must be {_KIND_WORDS[option.kind]}, "
                    f"got {item!r}"
                )
        if option.kind is Path:
            data[key] = Path(value)
    return data


def resolve_options(
    args: argparse.Namespace, options: Sequence[Option] = RUN_OPTIONS
) -> dict[str, Any]:
    """Merge the config file (if any) and the flags; flags win.

    Args:
        args: the parsed `run` command line.
        options: the command's option table.

    Returns:
        ``{config key: value}`` for the options given, plus ``"progress"``: whether to show
        progress bars (not ``--no-progress`` and stderr is a terminal). Defaults are not
        filled in (see :func:`complete`).

    Raises:
        MissingFileError, InputError: see :func:`load_config`.
    """
    opts = load_config(args.config, options) if args.config else {}
    for key in (option.name for option in options if option.in_config):
        value = getattr(args, key, None)
        if value is not None:
            opts[key] = value
    opts["progress"] = not args.no_progress and sys.stderr.isatty()
    return opts


def complete(opts: dict[str, Any], options: Sequence[Option] = RUN_OPTIONS) -> dict[str, Any]:
    """``opts`` with the table's defaults for the options not given.

    An empty list counts as not given. Options whose default depends on others
    (``samples``, ``split``, ...) stay absent.

    Args:
        opts: as :func:`resolve_options` returns them.
        options: the command's option table.

    Returns:
        A new dict (list defaults are copies).
    """
    defaults = {
        option.name: list(option.default) if option.many else option.default
        for option in options
        if option.default is not None and option.in_config
    }
    return defaults | {key: value for key, value in opts.items() if value != []}


def check_values(opts: dict[str, Any], options: Sequence[Option] = RUN_OPTIONS) -> None:
    """Check each given value against its option's choices and range.

    Args:
        opts: as :func:`resolve_options` or :func:`complete` return them.
        options: the command's option table.

    Raises:
        InputError: ``--<flag> must be <expected>, got <value>`` for the first bad value.
    """
    table = {option.name: option for option in options}
    for key, value in opts.items():
        option = table.get(key)
        if option is None or value is None:
            continue
        for item in value if option.many else [value]:
            if option.choices and item not in option.choices:
                choices = ", ".join(option.choices)
                raise InputError(f"{option.flag} must be one of {choices}, got {item!r}")
            if option.check is not None and not option.check.valid(item):
                raise InputError(f"{option.flag} must be {option.check.expected}, got {item!r}")
