"""A run's results folder: its ``config.json`` handshake, each setting's description, and
the repair of records an interrupted run left behind.

Layout: ``config.json`` (what determines the results), ``records/<setting>/setting.json``
(the selected images), ``records/<setting>/<method>.json`` (the configuration) and its
records files (see :mod:`tkmia.experiments.records`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tkmia.data.common import LabelledDataset
from tkmia.errors import InputError
from tkmia.experiments.distributed import DistInfo
from tkmia.experiments.plan import SettingPlan, chunks
from tkmia.experiments.readback import read_config
from tkmia.experiments.records import drop_records, read_all_records, record_files
from tkmia.experiments.settings import MethodConfig
from tkmia.files import check_inside, write_text_atomic


def _write_json(path: Path, data: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True))


def config_difference(old: dict[str, Any], new: dict[str, Any], most: int = 3) -> str:
    """The keys whose values differ between two ``config.json`` objects, each with both
    values (``samples: 24 in the folder, 12 now``), at most ``most`` of them."""

    def show(value: Any) -> str:
        text = "missing" if value is _MISSING else json.dumps(value)
        return text if len(text) <= 60 else text[:57] + "..."

    keys = [k for k in sorted(set(old) | set(new)) if old.get(k, _MISSING) != new.get(k, _MISSING)]
    parts = [
        f"{k}: {show(old.get(k, _MISSING))} in the folder, {show(new.get(k, _MISSING))} now"
        for k in keys[:most]
    ]
    more = f"; and {len(keys) - most} more" if len(keys) > most else ""
    return "; ".join(parts) + more


_MISSING = object()


#: the ``config.json`` keys that list what a run covers: a rerun may name other settings or
#: methods (in any order); what is new is attacked and added, what is done is kept
GROWING = ("settings", "methods")


def _mismatch(out: Path, old: dict[str, Any], new: dict[str, Any]) -> InputError | None:
    """The refusal when ``new`` (any subset of a ``config.json``) differs from the folder's
    ``old`` in a key that determines results, else None."""
    keys = [k for k in new if k not in GROWING]
    old_part = {k: old.get(k, _MISSING) for k in keys}
    new_part = {k: new[k] for k in keys}
    if old_part == new_part:
        return None
    return InputError(
        f"{str(out)!r} holds results of a different run configuration "
        f"({config_difference(old_part, new_part)}); pass another --out to start a new run "
        "(or the same options to resume or extend it)"
    )


def merged_config(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The folder's ``config.json`` after a run of ``new`` in it: the settings and methods
    the folder held, in their order, then the ones ``new`` adds."""
    merged = dict(old)
    for key in GROWING:
        merged[key] = list(old.get(key, []))
        merged[key] += [item for item in new.get(key, []) if item not in merged[key]]
    return merged


def check_compatible(out: Path, partial: dict[str, Any]) -> None:
    """Refuse at once (before any data is read) a folder whose ``config.json`` differs
    from ``partial`` in one of its keys.

    Args:
        out: the results folder (it need not exist).
        partial: the ``config.json`` entries known before the data is opened.

    Raises:
        InputError: names every differing key with both values.
    """
    path = out / "config.json"
    if path.is_file():
        error = _mismatch(out, read_config(out), partial)
        if error is not None:
            raise error


def check_out_dir(out: Path, config: dict[str, Any], write: bool = True) -> None:
    """Create ``out`` with ``config.json``, or make sure it holds runs compatible with
    ``config`` and add ``config``'s new settings and methods to it.

    Two configurations are compatible when they agree on every key but the settings and
    methods (:data:`GROWING`); the order of those does not matter.

    Args:
        out: the results folder.
        config: the run's ``config.json`` object.
        write: whether this process may create the folder and write ``config.json``.

    Raises:
        InputError: ``out`` holds another configuration, cannot be written, or (with
            ``write=False``) has no ``config.json``.
    """
    path = out / "config.json"
    try:
        if write:
            out.mkdir(parents=True, exist_ok=True)
        if path.is_file():
            old = read_config(out)
            error = _mismatch(out, old, config)
            if error is not None:
                raise error
            merged = merged_config(old, config)
            if write and merged != old:
                _write_json(path, merged)
            return
        if not write:
            raise InputError(f"{str(path)!r} is missing (rank 0 should have written it)")
        _write_json(path, config)
    except OSError as err:
        raise InputError(f"cannot write results to {str(out)!r}: {err.strerror}") from None


def prepare_out_dir(out: Path, config: dict[str, Any], dist: DistInfo) -> None:
    """:func:`check_out_dir` on rank 0, then on the other ranks once rank 0 is done; every
    rank raises rank 0's error.

    Raises:
        InputError: see :func:`check_out_dir`.
    """
    error = None
    if dist.is_main:
        try:
            check_out_dir(out, config)
        except InputError as err:
            error = str(err)
    error = dist.share(error)
    if error is not None:
        raise InputError(error)
    if not dist.is_main:
        check_out_dir(out, config, write=False)


def write_setting(
    out: Path, plan: SettingPlan, methods: Sequence[MethodConfig], chunk_size: int
) -> None:
    """Describe a setting and its methods under ``out/records/<setting>/`` and drop the
    records an interrupted run left incomplete (see :func:`drop_incomplete_chunks`)."""
    setting_dir = check_inside(out, out / "records" / plan.setting.key)
    _write_json(check_inside(out, setting_dir / "setting.json"), plan.setting_json())
    for method in methods:
        _write_json(setting_dir / f"{method.key}.json", method.as_dict())
        drop_incomplete_chunks(setting_dir, method.key, plan.indices, chunk_size)


def drop_incomplete_chunks(
    setting_dir: Path, method_key: str, indices: list[int], chunk_size: int
) -> None:
    """Cut torn tails and drop the records of chunks that were only partly written (the
    chunk is then attacked again as a whole)."""
    done = {r["index"] for r in read_all_records(setting_dir, method_key, repair=True)}
    drop: set[int] = set()
    for chunk in chunks(len(indices), chunk_size):
        have = [indices[p] for p in chunk if indices[p] in done]
        if 0 < len(have) < len(chunk):
            drop.update(have)
    if drop:
        for path in record_files(setting_dir, method_key):
            drop_records(path, drop)


def report_bad_images(plans: Sequence[SettingPlan], dataset: LabelledDataset) -> None:
    """Say on stderr which unreadable images the selection skipped (nothing if none)."""
    bad = sorted({i for plan in plans for i in plan.bad})
    if not bad:
        return
    paths = getattr(dataset, "paths", None)
    names = [str(paths[i]) if paths is not None else f"#{i}" for i in bad[:3]]
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    print(
        f"tkmia run: skipped {len(bad)} unreadable image(s) (--skip-bad-images; counted "
        f"as skipped and as bad_images in setting.json): {', '.join(names)}{more}",
        file=sys.stderr,
        flush=True,
    )
