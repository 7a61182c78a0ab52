"""Per-sample records: the single source of truth of a run.

Records of one (setting, method) live in one JSON-lines file, one line per attacked image,
appended (and flushed to disk) batch by batch. A run that is interrupted loses at most the
batch in flight; a partly written last line is ignored when the file is read back.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from tkmia.attacks import AttackResult
from tkmia.metrics import ap_at_k, ndcg_at_k, precision_at_k, removed_count, topk_accuracy

MEASURES = {
    "tkacc": topk_accuracy,
    "p_at_k": precision_at_k,
    "map_at_k": ap_at_k,
    "ndcg_at_k": ndcg_at_k,
}


def psnr(clean: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB for pixels in [0, 1], per sample ``(B,)``."""
    mse = (adv - clean).pow(2).flatten(1).mean(dim=1)
    return 10 * torch.log10(1.0 / mse.clamp(min=1e-20))


def make_records(
    indices: list[int],
    images: torch.Tensor,
    labels: torch.Tensor,
    result: AttackResult,
    k: int,
    seconds: float,
) -> list[dict[str, Any]]:
    """One record per sample: success, ΔN, the four measures before/after, norms."""
    labels = labels.to(result.clean_scores.device)
    out: dict[str, list] = {
        "index": indices,
        "success": result.success.tolist(),
        "iterations": result.iterations.tolist(),
        "n_specified": result.specified.sum(dim=1).tolist(),
        "required": result.required.tolist(),
        "delta_n": removed_count(result.clean_scores, result.adv_scores, result.specified, k)
        .tolist(),
    }
    for name, fn in MEASURES.items():
        out[f"{name}_clean"] = fn(result.clean_scores, labels, k).tolist()
        out[f"{name}_adv"] = fn(result.adv_scores, labels, k).tolist()
    delta = (result.adv_images - images.to(result.adv_images.device)).flatten(1)
    out["l2"] = delta.norm(dim=1).tolist()
    out["linf"] = delta.abs().amax(dim=1).tolist()
    out["psnr"] = psnr(images.to(result.adv_images.device), result.adv_images).tolist()
    out["specified"] = [torch.nonzero(r).flatten().tolist() for r in result.specified]
    per_sample = seconds / max(len(indices), 1)
    return [
        {key: values[i] for key, values in out.items()} | {"seconds": per_sample}
        for i in range(len(indices))
    ]


def append_records(path: Path, records: list[dict[str, Any]]) -> None:
    """Append records as JSON lines and flush them to disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, allow_nan=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_records(path: Path, repair: bool = False) -> list[dict[str, Any]]:
    """Records of a file; a truncated last line (an interrupted write) is dropped.

    With ``repair=True`` the torn tail is also cut from the file, so that records
    appended by a resumed run start on a line of their own.
    """
    if not path.is_file():
        return []
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if repair and len(complete) != len(data):
        with path.open("r+b") as fh:
            fh.truncate(len(complete))
    return [json.loads(line) for line in complete.decode("utf-8").splitlines() if line]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def summarise(records: list[dict[str, Any]]) -> dict[str, float]:
    """Aggregate records of one (setting, method) into the summary's measure columns.

    Drops are clean minus adversarial, averaged over all attacked samples; APer is the
    mean L2 norm over the successful samples only (NaN when none succeeded).
    """
    ok = [r for r in records if r["success"]]
    row = {
        "attacked": len(records),
        "success_rate": _mean([float(r["success"]) for r in records]),
    }
    for name in MEASURES:
        row[f"d_{name}"] = _mean([r[f"{name}_clean"] - r[f"{name}_adv"] for r in records])
    row |= {
        "delta_n": _mean([float(r["delta_n"]) for r in records]),
        "mean_specified": _mean([float(r["n_specified"]) for r in records]),
        "aper": _mean([r["l2"] for r in ok]),
        "linf": _mean([r["linf"] for r in ok]),
        "psnr": _mean([r["psnr"] for r in ok]),
        "mean_iterations": _mean([float(r["iterations"]) for r in records]),
        "seconds": sum(r["seconds"] for r in records),
    }
    return row
