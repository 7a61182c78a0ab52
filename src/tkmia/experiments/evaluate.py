"""Robustness at a budget ε (SPEC §7.7, `tkmia evaluate`): every attack on the first
images of a split, for each ε of a grid, records per image, and the summary rows.

Results folder: ``config.json`` (the handshake of
:func:`~tkmia.experiments.results_dir.check_out_dir`; more attacks may be added to a
folder, the ``methods`` key grows), ``records/<attack>.jsonl`` (one line per image with its
values at every ε of the grid, written batch by batch: a rerun attacks only the images
missing) and the tables and figure :mod:`tkmia.reports.evaluate` writes.

Monotone in ε by construction: an attack at ε starts from its best point at the previous
ε of the grid (a point of the smaller ball is in the larger one), and the recorded ``ê``
is the minimum of what it found and the previous ε's ``ê``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tkmia.attacks.budget import APGD, Square, worst_case
from tkmia.data.common import LabelledDataset
from tkmia.errors import InputError
from tkmia.experiments.records import append_records, check_indexed, read_records
from tkmia.experiments.results_dir import check_out_dir
from tkmia.metrics import l2_norm, linf_norm

__all__ = [
    "ATTACKS",
    "DEFAULT_EPS",
    "EvaluateConfig",
    "ENSEMBLE",
    "RobustRow",
    "build_attack",
    "ensemble_log",
    "evaluate",
    "robust_rows",
]

#: the attacks in the ensemble's fixed order: name → (kind, loss); white-box first
ATTACKS: dict[str, tuple[str, str]] = {
    "apgd-margin": ("apgd", "margin"),
    "apgd-tkmlapu": ("apgd", "tkmlapu"),
    "square": ("square", "margin"),
}
#: the default grid per norm (pixels in [0, 1])
DEFAULT_EPS = {"linf": [4 / 255, 8 / 255], "l2": [0.5, 1.0]}
ENSEMBLE = "ensemble"


@dataclass(frozen=True)
class EvaluateConfig:
    """Everything that determines an evaluation's results.

    Attributes:
        dataset, model, split: names (``config.json``, tables).
        k: the top-k; norm: ``"linf"`` or ``"l2"``; eps: the grid, increasing, > 0.
        attacks: names of :data:`ATTACKS`, run in that table's order.
        iterations, restarts: APGD's steps per restart and restarts.
        queries: Square's query budget per image.
        samples: the first this many images of the split are evaluated.
        seed: the seed of every random draw (restarts, Square's search).
        batch_size: images attacked at once (results never depend on it).
    """

    dataset: str
    model: str
    split: str
    k: int
    norm: str
    eps: tuple[float, ...]
    attacks: tuple[str, ...]
    iterations: int = 100
    restarts: int = 1
    queries: int = 5000
    samples: int = 1000
    seed: int = 0
    batch_size: int = 64

    def config_json(self) -> dict[str, Any]:
        """``config.json``: every field; ``methods`` (the attacks) may grow on a rerun."""
        return {
            "command": "evaluate", "dataset": self.dataset, "model": self.model,
            "split": self.split, "k": self.k, "norm": self.norm, "eps": list(self.eps),
            "iterations": self.iterations, "restarts": self.restarts, "queries": self.queries,
            "samples": self.samples, "seed": self.seed, "methods": list(self.attacks),
        }  # fmt: skip


@dataclass(frozen=True)
class RobustRow:
    """One row of the results: an attack (or the ensemble, or ``clean`` at ε = 0) at one ε.

    Attributes:
        norm, eps, attack: what the row is.
        images: n; precision: robust precision@k ``Σ ê / (k n)``; recall: robust recall@k
        ``Σ ê / Σ |Y|``; hidden: the share of images with ``ê = 0``.
        queries: mean model calls per image (the ensemble's: the sum over its attacks);
        seconds: attack time over all images (the ensemble's: the sum).
        set_by: the ensemble's rows: per attack, the images whose worst case it set first.
    """

    norm: str
    eps: float
    attack: str
    images: int
    precision: float
    recall: float
    hidden: float
    queries: float
    seconds: float
    set_by: str = ""


def build_attack(name: str, model: nn.Module, config: EvaluateConfig) -> APGD | Square:
    """The attack ``name`` of :data:`ATTACKS` with the configuration's parameters."""
    if name not in ATTACKS:
        raise InputError(f"unknown attack {name!r}; expected some of {list(ATTACKS)}")
    kind, loss = ATTACKS[name]
    if kind == "apgd":
        return APGD(model, config.k, config.norm, loss, config.iterations, config.restarts,
                    seed=config.seed)  # fmt: skip
    return Square(model, config.k, config.norm, loss, config.queries, seed=config.seed)


def _attack_batch(
    attack: APGD | Square,
    config: EvaluateConfig,
    indices: list[int],
    images: torch.Tensor,
    labels: torch.Tensor,
) -> list[dict[str, Any]]:
    """The records of one batch: every ε of the grid, each starting from the previous ε's
    best point."""
    ids = torch.tensor(indices)  # norms in float64: the budget holds exactly there
    per_eps: list[dict[str, list[Any]]] = []
    start, previous = None, None
    for eps in config.eps:
        clock = time.perf_counter()
        result = attack(images, labels, eps, indices=ids, start=start)
        seconds = (time.perf_counter() - clock) / max(len(indices), 1)
        found = result.hits
        best = found if previous is None else torch.minimum(found, previous)
        per_eps.append({
            "hits": best.tolist(), "found": found.tolist(), "queries": result.queries.tolist(),
            "l2": l2_norm(images.double(), result.adv_images.double()).tolist(),
            "linf": linf_norm(images.double(), result.adv_images.double()).tolist(),
            "seconds": [seconds] * len(indices),
        })  # fmt: skip
        start, previous = result.adv_images, best
        clean_hits = result.clean_hits
    n_relevant = labels.bool().sum(dim=1).tolist()
    return [
        {"index": index, "n_relevant": n_relevant[i], "clean_hits": int(clean_hits[i]),
         "eps": list(config.eps)}
        | {key: [values[key][i] for values in per_eps] for key in per_eps[0]}
        for i, index in enumerate(indices)
    ]  # fmt: skip


def _check_record(record: Any) -> str:
    """What is wrong with an evaluation record read back (``""``: nothing)."""
    problem = check_indexed(record)
    if problem:
        return problem
    eps = record.get("eps")
    if not (isinstance(eps, list) and eps and all(_number(e) for e in eps)):
        return "'eps' is not a list of numbers"
    for key in ("hits", "found", "queries"):
        value = record.get(key)
        if not (isinstance(value, list) and len(value) == len(eps)
                and all(_count(v) for v in value)):  # fmt: skip
            return f"{key!r} is not a list of {len(eps)} counts, one per eps"
    for key in ("n_relevant", "clean_hits"):
        if not _count(record.get(key)):
            return f"{key!r} is not a count (an integer >= 0)"
    return ""


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _done(path: Path, eps: Sequence[float]) -> set[int]:
    """The images a records file already holds (for this grid: else an error)."""
    done = set()
    for rec in read_records(path, repair=True, check=_check_record):
        if [float(e) for e in rec["eps"]] != list(eps):
            raise InputError(f"{str(path)!r} holds records of another --eps grid")
        done.add(int(rec["index"]))
    return done


def evaluate(
    config: EvaluateConfig,
    model: nn.Module,
    dataset: LabelledDataset,
    out: Path,
    device: str = "cpu",
    log: Callable[[str], None] | None = None,
) -> list[RobustRow]:
    """Run (or resume) an evaluation in ``out`` and return its rows.

    Raises:
        InputError: ``out`` holds another configuration, or a record of another grid.
    """
    check_out_dir(out, config.config_json())
    n = min(config.samples, len(dataset))
    for name in config.attacks:
        attack = build_attack(name, model, config)
        path = out / "records" / f"{name}.jsonl"
        done = _done(path, config.eps)
        todo = [i for i in range(n) if i not in done]
        if log is not None:
            log(f"{name}: {n - len(todo)} of {n} images done, {len(todo)} to attack")
        for lo in range(0, len(todo), config.batch_size):
            batch = todo[lo : lo + config.batch_size]
            items = [dataset[i] for i in batch]
            images = torch.stack([x for x, _ in items]).to(device)
            labels = torch.stack([torch.as_tensor(y) for _, y in items]).to(device)
            append_records(path, _attack_batch(attack, config, batch, images, labels))
            if log is not None:
                log(f"{name}: {lo + len(batch)} of {len(todo)} images")
    return robust_rows(out, config)


def _records(out: Path, name: str, n: int) -> dict[int, dict[str, Any]]:
    path = out / "records" / f"{name}.jsonl"
    recs = {int(r["index"]): r for r in read_records(path, check=_check_record)}
    return {i: r for i, r in recs.items() if i < n}


def _row(
    norm: str,
    eps: float,
    attack: str,
    k: int,
    hits: list[int],
    relevant: list[int],
    queries: float,
    seconds: float,
    set_by: str = "",
) -> RobustRow:
    n = len(hits)
    return RobustRow(
        norm, eps, attack, n, sum(hits) / (k * n) if n else float("nan"),
        sum(hits) / sum(relevant) if n else float("nan"),
        sum(h == 0 for h in hits) / n if n else float("nan"), queries, seconds, set_by,
    )  # fmt: skip


def robust_rows(out: Path, config: EvaluateConfig) -> list[RobustRow]:
    """The rows of the folder's records (the images every attack has): ``clean`` at ε = 0,
    then per ε each attack of :data:`ATTACKS`' order and the ensemble."""
    n = config.samples
    names = [a for a in ATTACKS if a in config.attacks]
    recs = {name: _records(out, name, n) for name in names}
    common = sorted(set.intersection(*(set(r) for r in recs.values()))) if recs else []
    if not common:
        return []
    first = recs[names[0]]
    relevant = [first[i]["n_relevant"] for i in common]
    clean = [first[i]["clean_hits"] for i in common]
    rows = [_row(config.norm, 0.0, "clean", config.k, clean, relevant, 1.0, 0.0)]
    for j, eps in enumerate(config.eps):
        found = []
        for name in names:
            hits = [recs[name][i]["hits"][j] for i in common]
            found.append(torch.tensor(hits))
            queries = sum(recs[name][i]["queries"][j] for i in common) / len(common)
            seconds = sum(recs[name][i]["seconds"][j] for i in common)
            rows.append(_row(config.norm, eps, name, config.k, hits, relevant, queries, seconds))
        worst, by = worst_case(found)
        lowered = worst < torch.tensor(clean)
        counts = [int(((by == a) & lowered).sum()) for a in range(len(names))]
        set_by = "; ".join(f"{name} {c}" for name, c in zip(names, counts, strict=True) if c)
        rows.append(
            _row(
                config.norm,
                eps,
                ENSEMBLE,
                config.k,
                worst.tolist(),
                relevant,
                sum(r.queries for r in rows[-len(names) :]),
                sum(r.seconds for r in rows[-len(names) :]),
                set_by or "none",
            )
        )
    return rows


def ensemble_log(out: Path, config: EvaluateConfig) -> list[dict[str, Any]]:
    """Per image and ε: the ensemble's ``ê`` and the attack that set it (``-`` when no
    attack lowered the clean value): AutoAttack's log."""
    names = [a for a in ATTACKS if a in config.attacks]
    recs = {name: _records(out, name, config.samples) for name in names}
    common = sorted(set.intersection(*(set(r) for r in recs.values()))) if recs else []
    log = []
    for j, eps in enumerate(config.eps):
        found = [torch.tensor([recs[a][i]["hits"][j] for i in common]) for a in names]
        if not common:
            break
        worst, by = worst_case(found)
        for p, i in enumerate(common):
            clean = recs[names[0]][i]["clean_hits"]
            who = names[int(by[p])] if int(worst[p]) < clean else "-"
            log.append({"index": i, "eps": eps, "clean_hits": clean, "hits": int(worst[p]),
                        "set_by": who})  # fmt: skip
    return log
