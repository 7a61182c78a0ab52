"""The certification protocol (SPEC §7.8): label counts of the smoothed model on the first
images with a relevant label, recorded per image, and the certified measures over a grid
of radii computed from those records.

Results folder: ``config.json`` (what determines the counts; σ values may grow),
``records/sigma<σ>.jsonl`` (one record per image: ``index``, ``relevant`` label indices,
``counts`` per label over the ``n`` noisy copies), ``summary.csv`` (one
:class:`CertifyRow` per σ and radius). The radii, ``k`` and ``alpha`` act only on the
records, so a rerun with others re-derives the tables without drawing any noise.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from tkmia.certificate import certified_intersection, label_bounds
from tkmia.data.common import LabelledDataset
from tkmia.errors import InputError
from tkmia.experiments.records import append_records, check_indexed, read_records
from tkmia.experiments.results_dir import check_out_dir
from tkmia.files import write_text_atomic
from tkmia.models.smoothed import Smoothed

__all__ = [
    "CertifyConfig",
    "CertifyRow",
    "EmpiricalRow",
    "attack_smoothed",
    "certify_rows",
    "run_certify",
    "write_rows",
]

#: images whose noise is counted between two appends to the records (what an interrupt
#: can lose)
CHUNK = 8


@dataclass(frozen=True)
class CertifyConfig:
    """Everything a certification run needs.

    Attributes:
        dataset, model: names (for the tables and ``config.json``).
        split: the split certified.
        sigmas: noise levels (pixel units of images in [0, 1]).
        n: noisy copies per image; k_prime: the base model's top-k' that is counted.
        seed: the noise streams' seed (image ``i``'s noise depends on ``(seed, i)`` only).
        samples: the first ``samples`` images with at least one relevant label.
        batch: noisy images per forward pass.
        k, alpha, radii: the certificate's (read from the records; free to change).
    """

    dataset: str
    model: str
    split: str
    sigmas: tuple[float, ...]
    n: int
    k_prime: int
    seed: int
    samples: int
    batch: int
    k: int
    alpha: float
    radii: tuple[float, ...]

    def as_json(self) -> dict[str, Any]:
        """The ``config.json`` entries that determine the records (σ values may grow)."""
        keys = ("dataset", "model", "split", "n", "k_prime", "seed", "samples")
        return {"command": "certify", **{key: getattr(self, key) for key in keys}}


@dataclass(frozen=True)
class CertifyRow:
    """One σ and radius: certified precision@k ``Σ e(R) / (k·n)``, recall@k
    ``Σ e(R) / Σ|Y|``, and the share of images certified nothing (``e(R) = 0``); at
    ``R = 0`` with ``smoothed_*`` the smoothed prediction's own clean values."""

    sigma: float
    radius: float
    k: int
    certified_precision: float
    certified_recall: float
    abstained: float
    smoothed_precision: float
    smoothed_recall: float
    images: int


def _check_record(record: Any) -> str:
    """What is wrong with a certify record read back (``""``: nothing): ``counts`` a list
    of counts, and ``relevant`` (when present) a list of label indices."""
    problem = check_indexed(record)
    if problem:
        return problem
    for key in ("counts", "relevant"):
        value = record.get(key, [] if key == "relevant" else None)
        if not (isinstance(value, list)
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                        for v in value)):  # fmt: skip
            return f"{key!r} is not a list of integers >= 0"
    if not record["counts"]:
        return "'counts' is empty"
    if any(r >= len(record["counts"]) for r in record.get("relevant", [])):
        return "'relevant' names a label beyond the counts"
    return ""


def _sigma_key(sigma: float) -> str:
    return f"sigma{sigma:g}"


def _candidates(dataset: LabelledDataset, samples: int) -> list[int]:
    """The first ``samples`` image indices with at least one relevant label."""
    chosen: list[int] = []
    for index in range(len(dataset)):
        if bool(dataset[index][1].bool().any()):
            chosen.append(index)
            if len(chosen) == samples:
                break
    return chosen


def run_certify(
    config: CertifyConfig,
    model: nn.Module,
    dataset: LabelledDataset,
    out: Path,
    device: str = "cpu",
    log: Callable[[str], None] | None = None,
) -> list[CertifyRow]:
    """Count, record and certify; write ``summary.csv``. A rerun resumes where it stopped.

    Args:
        config: what to run.
        model: images in [0, 1] → scores (normalisation inside).
        dataset: the split to certify.
        out: the results folder.
        device: where to run the model.
        log: called with one line per σ.

    Returns:
        The rows, σ by σ, radii ascending.

    Raises:
        InputError: ``out`` holds another configuration, or no image has a label.
    """
    check_out_dir(out, config.as_json())
    indices = _candidates(dataset, config.samples)
    if not indices:
        raise InputError(f"no image of the {config.split!r} split has a relevant label")
    for sigma in config.sigmas:
        path = out / "records" / f"{_sigma_key(sigma)}.jsonl"
        done = {int(r["index"]) for r in read_records(path, True, _check_record)}
        todo = [i for i in indices if i not in done]
        smoothed = Smoothed(model, sigma, config.k_prime, config.n, config.batch, config.seed)
        started = time.perf_counter()
        for at in range(0, len(todo), CHUNK):
            part = todo[at : at + CHUNK]
            images = torch.stack([dataset[i][0] for i in part]).to(device)
            counts = smoothed.counts(images, ids=part).cpu()
            append_records(path, [
                {"index": i, "relevant": dataset[i][1].nonzero().flatten().tolist(),
                 "counts": counts[j].tolist()}
                for j, i in enumerate(part)
            ])  # fmt: skip
        if log is not None:
            log(f"  sigma={sigma:g}: {len(todo)} images counted ({len(indices) - len(todo)} "
                f"read back), {time.perf_counter() - started:.1f} s")  # fmt: skip
    rows = [row for sigma in config.sigmas for row in certify_rows(
        _records(out, sigma, indices), sigma, config)]  # fmt: skip
    write_rows(out / "summary.csv", rows)
    return rows


def _records(out: Path, sigma: float, indices: Sequence[int]) -> list[dict[str, Any]]:
    path = out / "records" / f"{_sigma_key(sigma)}.jsonl"
    by_index = {int(rec["index"]): rec for rec in read_records(path, check=_check_record)}
    return [by_index[i] for i in indices]


def certify_rows(
    records: Sequence[dict[str, Any]], sigma: float, config: CertifyConfig
) -> list[CertifyRow]:
    """The certified measures of one σ at every radius of ``config.radii``, from records."""
    if config.k > len(records[0]["counts"]):
        raise InputError(f"--k {config.k} exceeds the {len(records[0]['counts'])} labels")
    radii = sorted(config.radii)
    e = _certified_e(records, sigma, config, radii)
    hits = float(sum(_smoothed_hits(r["counts"], r["relevant"], config.k) for r in records))
    n_images = len(records)
    n_relevant = float(sum(len(r["relevant"]) for r in records))
    return [
        CertifyRow(
            sigma,
            float(r),
            config.k,
            float(e[:, j].sum()) / (config.k * n_images),
            float(e[:, j].sum()) / n_relevant,
            float((e[:, j] == 0).mean()),
            hits / (config.k * n_images),
            hits / n_relevant,
            n_images,
        )  # fmt: skip
        for j, r in enumerate(radii)
    ]


def write_rows(path: Path, rows: Sequence[CertifyRow]) -> None:
    """``summary.csv``: one line per :class:`CertifyRow`, floats to 6 significant digits."""
    names = [f.name for f in fields(CertifyRow)]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(names)
    for row in rows:
        values = asdict(row)
        writer.writerow(
            "nan" if isinstance(v, float) and math.isnan(v)
            else (f"{v:.6g}" if isinstance(v, float) else v)
            for v in (values[name] for name in names)
        )  # fmt: skip
    write_text_atomic(path, buf.getvalue())


@dataclass(frozen=True)
class EmpiricalRow:
    """One σ and radius: the certified precision@k (a lower bound) beside the precision@k
    the smoothed classifier keeps under an L2 attack of that radius (an upper bound), and
    the images whose attacked smoothed prediction holds fewer relevant labels than their
    certificate (``violations``; the bounds hold with probability 1 − α per image, and
    the attacked prediction is a Monte-Carlo estimate, so a few may occur)."""

    sigma: float
    radius: float
    k: int
    certified_precision: float
    empirical_precision: float
    violations: int
    images: int


#: the attack on the smoothed model: APGD iterations, noise draws per step (EOT), and the
#: seed offset of the judging draws (fresh noise, not the certificate's)
ATTACK_ITERATIONS, EOT_DRAWS, JUDGE_SEED = 20, 8, 7_777


def attack_smoothed(
    config: CertifyConfig,
    model: nn.Module,
    dataset: LabelledDataset,
    out: Path,
    radii: Sequence[float],
    device: str = "cpu",
) -> list[EmpiricalRow]:
    """Attack the smoothed classifier within each radius and judge it with fresh noise.

    The attack is `tkmia evaluate`'s L2 APGD (smallest-margin loss) on
    :class:`~tkmia.models.smoothed.SmoothedScores` (EOT: the mean base softmax over
    :data:`EOT_DRAWS` fresh draws per step); the attacked image's smoothed top-k is then
    counted over ``config.n`` new draws (seed ``config.seed + JUDGE_SEED``). Records:
    ``records/attack-sigma<σ>-r<R>.jsonl`` (index, judged counts), resumable.
    """
    from tkmia.attacks.budget import APGD
    from tkmia.models.smoothed import SmoothedScores

    indices = _candidates(dataset, config.samples)
    rows = []
    for sigma in config.sigmas:
        clean = _records(out, sigma, indices)
        certified = certify_rows(clean, sigma, replace(config, radii=tuple(radii)))
        e = _certified_e(clean, sigma, config, radii)
        judge = Smoothed(model, sigma, config.k_prime, config.n, config.batch,
                         config.seed + JUDGE_SEED)  # fmt: skip
        for j, radius in enumerate(sorted(radii)):
            path = out / "records" / f"attack-{_sigma_key(sigma)}-r{radius:g}.jsonl"
            done = {int(r["index"]) for r in read_records(path, True, _check_record)}
            todo = [i for i in indices if i not in done]
            attack = APGD(SmoothedScores(model, sigma, EOT_DRAWS, config.seed), config.k,
                          "l2", iterations=ATTACK_ITERATIONS, seed=config.seed)  # fmt: skip
            for at in range(0, len(todo), CHUNK):
                part = todo[at : at + CHUNK]
                images = torch.stack([dataset[i][0] for i in part]).to(device)
                labels = torch.stack([dataset[i][1] for i in part]).to(device)
                adv = attack(images, labels, radius, torch.tensor(part)).adv_images
                counts = judge.counts(adv, ids=part).cpu()
                append_records(path, [{"index": i, "counts": counts[n].tolist()}
                                      for n, i in enumerate(part)])  # fmt: skip
            judged = {int(r["index"]): r["counts"] for r in read_records(path, check=_check_record)}
            kept = np.array([_smoothed_hits(judged[rec["index"]], rec["relevant"], config.k)
                             for rec in clean])  # fmt: skip
            rows.append(EmpiricalRow(
                sigma, float(radius), config.k, certified[j].certified_precision,
                float(kept.sum()) / (config.k * len(clean)), int((kept < e[:, j]).sum()),
                len(clean),
            ))  # fmt: skip
    return rows


def _certified_e(
    records: Sequence[dict[str, Any]], sigma: float, config: CertifyConfig, radii: Sequence[float]
) -> NDArray[np.int64]:
    """``(n, R)`` the certified intersection sizes of the records at ``sorted(radii)``."""
    counts = np.array([rec["counts"] for rec in records], dtype=np.int64)
    relevant = np.zeros(counts.shape, dtype=bool)
    for row, rec in enumerate(records):
        relevant[row, rec["relevant"]] = True
    lower, upper = label_bounds(counts, config.n, config.alpha)
    grid = np.array(sorted(radii), dtype=np.float64)
    return certified_intersection(lower, upper, relevant, config.k, grid, sigma, config.k_prime)


def _smoothed_hits(counts: Sequence[int], relevant: Sequence[int], k: int) -> int:
    """``|T_k(g) ∩ Y|`` of the smoothed top-k from counts (ties to the lower label)."""
    order = np.argsort(-np.asarray(counts), kind="stable")[:k]
    return int(np.isin(order, relevant).sum())
