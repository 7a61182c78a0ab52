"""Per-sample records: the single source of truth of a run.

Records of one (setting, method) live in JSON-lines files, one line per attacked image,
appended (and flushed to disk) batch by batch, each batch in one ``write``: a run that is
interrupted loses at most the batch in flight; a partly written last line is ignored when
the file is read back (and cut off before a resumed run appends). A single process writes
``<method>.jsonl``; rank ``r`` of a distributed run writes ``<method>.rank<r>.jsonl``
(see :func:`record_files`).

Also here: the 8-bit quantisation an attacker faces when the adversarial image is saved
as a PNG.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tkmia.attacks import AttackResult
from tkmia.attacks.pixels import quantize
from tkmia.errors import InputError
from tkmia.files import write_text_atomic
from tkmia.metrics import (
    ap_at_k,
    l2_norm,
    linf_norm,
    ndcg_at_k,
    precision_at_k,
    psnr,
    removed_count,
    ssim,
    topk_accuracy,
)
from tkmia.score_stats import (
    count_above_half,
    kth_sigmoid,
    sorted_sigmoid,
    topk_margin,
    topk_sigmoid_mass,
)

MEASURES = {
    "tkacc": topk_accuracy,
    "p_at_k": precision_at_k,
    "map_at_k": ap_at_k,
    "ndcg_at_k": ndcg_at_k,
}
#: the label-free statistics of the scores (SPEC §7.5), ``(scores (B, c), k) -> (B,)``; a
#: record holds ``<name>_clean`` and ``<name>_adv`` of each (records written before they
#: existed lack them: the audit names what is missing)
LABEL_FREE: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
    "kth_score": kth_sigmoid,
    "topk_mass": topk_sigmoid_mass,
    "margin": topk_margin,
    "n_above_half": lambda scores, k: count_above_half(scores),
}
#: the record fields of the learned label-free monitor (SPEC §7.6): the largest
#: ``min(c, 2k + 2)`` sigmoid scores in decreasing order, clean and adversarial (lists;
#: records written before they existed lack them, and the audit skips that monitor)
SORTED_SCORES = ("sorted_sigmoid_clean", "sorted_sigmoid_adv")


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] as the 8-bit values a PNG stores: ``round(x · 255)`` (uint8)."""
    return images.detach().clamp(0, 1).mul(255).round().to(torch.uint8)


def quantize_uint8(images: torch.Tensor) -> torch.Tensor:
    """``round(x · 255) / 255``: the image saved as an 8-bit PNG and read back, in [0, 1]
    (the attacks' ``quantize=8``, :func:`tkmia.attacks.pixels.quantize`)."""
    return quantize(images.detach(), 8)


def make_records(
    indices: list[int],
    images: torch.Tensor,
    labels: torch.Tensor,
    result: AttackResult,
    k: int,
    seconds: float,
    success_uint8: torch.Tensor | None = None,
) -> list[dict[str, Any]]:
    """One record per sample: success, ΔN, the four measures and the label-free statistics
    (:data:`LABEL_FREE`) before/after, the sorted sigmoid scores (:data:`SORTED_SCORES`),
    norms.

    ``success_uint8`` ``(B,)``: success re-measured on the 8-bit quantised adversarial
    images (see :func:`quantize_uint8`); stored as ``success_uint8`` when given.
    """
    labels = labels.to(result.clean_scores.device)
    out: dict[str, list] = {
        "index": indices,
        "success": result.success.tolist(),
        "iterations": result.iterations.tolist(),
        "n_specified": result.specified.sum(dim=1).tolist(),
        "required": result.required.tolist(),
        "delta_n": removed_count(
            result.clean_scores, result.adv_scores, result.specified, k
        ).tolist(),
    }
    for name, fn in MEASURES.items():
        out[f"{name}_clean"] = fn(result.clean_scores, labels, k).tolist()
        out[f"{name}_adv"] = fn(result.adv_scores, labels, k).tolist()
    for name, stat in LABEL_FREE.items():
        out[f"{name}_clean"] = stat(result.clean_scores, k).tolist()
        out[f"{name}_adv"] = stat(result.adv_scores, k).tolist()
    out[SORTED_SCORES[0]] = sorted_sigmoid(result.clean_scores, k).tolist()
    out[SORTED_SCORES[1]] = sorted_sigmoid(result.adv_scores, k).tolist()
    clean, adv = images.to(result.adv_images.device), result.adv_images.detach()
    out["l2"] = l2_norm(clean, adv).tolist()
    out["linf"] = linf_norm(clean, adv).tolist()
    out["psnr"] = psnr(clean, adv).tolist()
    out["ssim"] = ssim(clean, adv).tolist()
    if success_uint8 is not None:
        out["success_uint8"] = success_uint8.bool().tolist()
    out["specified"] = [torch.nonzero(r).flatten().tolist() for r in result.specified]
    per_sample = seconds / max(len(indices), 1)
    return [
        {key: values[i] for key, values in out.items()} | {"seconds": per_sample}
        for i in range(len(indices))
    ]


def append_records(path: Path, records: list[dict[str, Any]]) -> None:
    """Append records as JSON lines (one ``write`` for the batch) and fsync them.

    Raises:
        InputError: ``path`` is a symbolic link (it is never followed, even dangling).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(rec, allow_nan=True) + "\n" for rec in records).encode("utf-8")
    _refuse_link(path)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def record_files(directory: Path, method_key: str) -> list[Path]:
    """Every records file of one method in a setting's folder: the single-process file
    ``<method>.jsonl`` and the per-rank files ``<method>.rank<r>.jsonl``, in that order."""
    files = [directory / f"{method_key}.jsonl"]
    ranked = directory.glob(f"{method_key}.rank*.jsonl")
    files += sorted(
        (p for p in ranked if p.name[len(method_key) + 5 : -6].isdigit()),
        key=lambda p: int(p.name[len(method_key) + 5 : -6]),
    )
    for path in files:
        _refuse_link(path)
    return [p for p in files if p.is_file()]


def read_all_records(
    directory: Path, method_key: str, repair: bool = False
) -> list[dict[str, Any]]:
    """The records of one method from all its files, one per image (the first seen),
    sorted by image index, so that sums over them never depend on sharding or resuming."""
    seen: dict[int, dict[str, Any]] = {}
    for path in record_files(directory, method_key):
        for rec in read_records(path, repair=repair):
            seen.setdefault(int(rec["index"]), rec)
    return [seen[i] for i in sorted(seen)]


def drop_records(path: Path, indices: set[int]) -> int:
    """Rewrite ``path`` atomically without the records of ``indices``; returns how many
    were dropped (0: the file is left untouched)."""
    records = read_records(path, repair=True)
    keep = [r for r in records if int(r["index"]) not in indices]
    if len(keep) == len(records):
        return 0
    write_text_atomic(path, "".join(json.dumps(rec, allow_nan=True) + "\n" for rec in keep))
    return len(records) - len(keep)


def _refuse_link(path: Path) -> None:
    """Refuse a records file that is a symbolic link (reading, repairing or appending to
    it would reach whatever it points at, outside the results folder)."""
    if path.is_symlink():
        raise InputError(
            f"records file {str(path)!r} is a symbolic link; tkmia never reads or writes "
            "records through a link (it could lead outside the results folder): remove "
            "the link, or pass another --out"
        )


def read_records(
    path: Path, repair: bool = False, check: Callable[[Any], str] | None = None
) -> list[dict[str, Any]]:
    """Records of a file, each checked (by ``check``: what is wrong with a record, ``""``
    for nothing; default :func:`check_record`, a `tkmia run` record); a truncated last
    line (an interrupted write: no newline at its end) is dropped.

    With ``repair=True`` the torn tail is also cut from the file, so that records
    appended by a resumed run start on a line of their own.

    Raises:
        InputError: ``path`` is a symbolic link, or a complete line is not a valid record
            (the message names the file, the line and the fix).
    """
    _refuse_link(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    records = [
        _parse_line(line, path, number, check or check_record)
        for number, line in enumerate(complete.split(b"\n"), start=1)
        if line.strip()
    ]
    if repair and len(complete) != len(data):
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
        try:
            os.ftruncate(fd, len(complete))
        finally:
            os.close(fd)
    return records


def _parse_line(
    line: bytes, path: Path, number: int, check: Callable[[Any], str]
) -> dict[str, Any]:
    """One line of a records file, decoded and checked."""
    try:
        record = json.loads(line.decode("utf-8"))
        problem = check(record)
    except UnicodeDecodeError:
        problem = "it is not UTF-8 text"
    except json.JSONDecodeError as err:
        problem = f"it is not valid JSON ({err.msg})"
    if problem:
        raise InputError(
            f"records file {str(path)!r} line {number}: {problem}; a records file holds "
            "one JSON object per attacked image, as tkmia writes it: delete the line (or "
            "the file) and rerun the same command to redo those images"
        )
    return record


#: what every record holds: ``index`` and ``success``, and the numbers summaries use
_NUMBERS = (
    "iterations", "n_specified", "delta_n", "l2", "linf", "psnr", "seconds",
    *(f"{name}_{when}" for name in MEASURES for when in ("clean", "adv")),
)  # fmt: skip
#: numbers a record may hold (records of older runs lack some)
_OPTIONAL_NUMBERS = (
    "ssim", "required",
    *(f"{name}_{when}" for name in LABEL_FREE for when in ("clean", "adv")),
)  # fmt: skip


def _show(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_indexed(record: Any) -> str:
    """What is wrong with a record of another command (``""``: nothing): it must be a JSON
    object with an integer ``index`` >= 0."""
    if not isinstance(record, dict):
        return f"it holds a JSON {type(record).__name__}, not an object"
    index = record.get("index")
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        return f"'index' is {_show(index)}, not an image index (an integer >= 0)"
    return ""


def check_record(record: Any) -> str:
    """What is wrong with one record read back (``""``: nothing).

    A record is a JSON object with an integer ``index`` >= 0, a boolean ``success`` (and
    ``success_uint8`` if present) and a number (NaN and infinities allowed) in each of the
    columns summaries are made of.
    """
    problem = check_indexed(record)
    if problem:
        return problem
    missing = [key for key in ("success", *_NUMBERS) if key not in record]
    if missing:
        return f"it lacks {', '.join(map(repr, missing[:3]))}" + (
            " ..." if len(missing) > 3 else ""
        )
    for key in ("success", "success_uint8"):
        if (key in record or key == "success") and not isinstance(record.get(key), bool):
            return f"{key!r} is {_show(record.get(key))}, not true or false"
    for key in _NUMBERS:
        if not _is_number(record.get(key)):
            return f"{key!r} is {_show(record.get(key))}, not a number"
    for key in _OPTIONAL_NUMBERS:
        if key in record and not _is_number(record[key]):
            return f"{key!r} is {_show(record[key])}, not a number"
    return ""


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def summarise(records: list[dict[str, Any]]) -> dict[str, float]:
    """Aggregate records of one (setting, method) into the summary's measure columns.

    Drops are clean minus adversarial, averaged over all attacked samples; APer is the
    mean L2 norm over the successful samples only (NaN when none succeeded), and so are
    ``linf``, ``psnr`` and ``ssim``. ``success_uint8`` is the success rate after 8-bit
    quantisation (NaN for records written before it existed).
    """
    ok = [r for r in records if r["success"]]
    row = {
        "attacked": len(records),
        "success_rate": _mean([float(r["success"]) for r in records]),
        "success_uint8": _mean([float(r.get("success_uint8", math.nan)) for r in records]),
    }
    for name in MEASURES:
        row[f"d_{name}"] = _mean([r[f"{name}_clean"] - r[f"{name}_adv"] for r in records])
    row |= {
        "delta_n": _mean([float(r["delta_n"]) for r in records]),
        "mean_specified": _mean([float(r["n_specified"]) for r in records]),
        "aper": _mean([r["l2"] for r in ok]),
        "linf": _mean([r["linf"] for r in ok]),
        "psnr": _mean([r["psnr"] for r in ok]),
        "ssim": _mean([r.get("ssim", math.nan) for r in ok]),
        "mean_iterations": _mean([float(r["iterations"]) for r in records]),
        "seconds": sum(r["seconds"] for r in records),
    }
    return row
