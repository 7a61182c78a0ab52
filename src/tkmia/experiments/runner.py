"""Run the paper's protocol: select eligible images, attack them, record, summarise."""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from tkmia.errors import InputError
from tkmia.experiments.records import append_records, make_records, read_records, summarise
from tkmia.experiments.settings import MethodConfig, Setting
from tkmia.protocol import select_global, select_random

SUMMARY_COLUMNS = [
    "dataset", "model", "scheme", "k", "group", "n", "threshold", "method", "lr", "lam",
    "max_iter", "attacked", "skipped", "success_rate", "d_tkacc", "d_p_at_k", "d_map_at_k",
    "d_ndcg_at_k", "delta_n", "mean_specified", "aper", "linf", "psnr", "mean_iterations",
    "seconds",
]  # fmt: skip


class CleanScores:
    """Scores the evaluation split in dataset order, on demand, and keeps them.

    ``upto(n)`` makes sure the first ``n`` images are scored; ``scores`` and ``labels``
    then hold ``(n_scored, c)`` tensors on the CPU.
    """

    def __init__(self, model: nn.Module, dataset: Dataset, batch_size: int, device: str) -> None:
        self.model, self.dataset, self.batch_size, self.device = model, dataset, batch_size, device
        self.scores = torch.empty(0)
        self.labels = torch.empty(0)

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def n_scored(self) -> int:
        return self.scores.shape[0]

    @torch.no_grad()
    def upto(self, n: int) -> None:
        n = min(n, len(self.dataset))
        chunks, labels = [self.scores], [self.labels]
        for start in range(self.n_scored, n, self.batch_size):
            items = [self.dataset[i] for i in range(start, min(start + self.batch_size, n))]
            images = torch.stack([im for im, _ in items]).to(self.device)
            chunks.append(self.model(images).float().cpu())
            labels.append(torch.stack([lab for _, lab in items]).float())
        if len(chunks) > 1:
            self.scores = torch.cat([c for c in chunks if c.numel()])
            self.labels = torch.cat([lb for lb in labels if lb.numel()])


def select(
    cache: CleanScores, setting: Setting, samples: int, seed: int
) -> tuple[list[int], torch.Tensor, int]:
    """The first ``samples`` eligible images: ``(indices, specified (len, c), skipped)``.

    ``skipped`` counts the ineligible images met before the last selected one (all
    ineligible images of the split when fewer than ``samples`` are eligible).
    """
    chosen: list[int] = []
    specified_rows: list[torch.Tensor] = []
    start = 0
    step = max(4 * samples, 256)
    while len(chosen) < samples and start < len(cache):
        cache.upto(start + step)
        stop = cache.n_scored
        labels, scores = cache.labels[start:stop], cache.scores[start:stop]
        if setting.scheme == "global":
            spec, ok = select_global(labels, scores, setting.group_indices, setting.k)
        else:
            spec, ok = select_random(
                labels, scores, setting.n, setting.k, seed, range(start, stop)
            )
        for row in torch.nonzero(ok).flatten().tolist():
            if len(chosen) == samples:
                break
            chosen.append(start + row)
            specified_rows.append(spec[row])
        start = stop
    last = chosen[-1] + 1 if len(chosen) == samples else cache.n_scored
    skipped = last - len(chosen)
    c = cache.scores.shape[1]
    specified = torch.stack(specified_rows) if specified_rows else torch.zeros(0, c, dtype=bool)
    return chosen, specified, skipped


@dataclass
class RunConfig:
    """Everything that determines a run's results (written to ``config.json``)."""

    dataset: str
    model: str
    settings: list[Setting]
    methods: list[MethodConfig]
    samples: int
    seed: int
    batch_size: int
    examples: int = 3
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "model": self.model,
            "settings": [s.key for s in self.settings],
            "methods": [m.key for m in self.methods],
            "samples": self.samples,
            "seed": self.seed,
        } | self.extra


def _check_out_dir(out: Path, config: dict[str, Any]) -> None:
    """Create ``out`` or make sure it holds a run of the same configuration (resume)."""
    path = out / "config.json"
    try:
        out.mkdir(parents=True, exist_ok=True)
        if path.is_file():
            old = json.loads(path.read_text())
            if old != config:
                raise InputError(
                    f"{str(out)!r} holds results of a different run configuration; "
                    "pass another --out to start a new run (or the same command to resume)"
                )
            return
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(config, indent=2, sort_keys=True))
        tmp.replace(path)
    except OSError as err:
        raise InputError(f"cannot write results to {str(out)!r}: {err.strerror}") from None


def _save_examples(
    path: Path,
    indices: list[int],
    images: torch.Tensor,
    labels: torch.Tensor,
    result,
) -> None:
    tensors = {
        "indices": torch.tensor(indices),
        "clean": images.cpu().contiguous(),
        "adv": result.adv_images.detach().cpu().contiguous(),
        "labels": labels.cpu().contiguous(),
        "specified": result.specified.cpu().contiguous(),
        "clean_scores": result.clean_scores.cpu().contiguous(),
        "adv_scores": result.adv_scores.cpu().contiguous(),
        "success": result.success.cpu(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(path)


def run(
    config: RunConfig,
    model: nn.Module,
    dataset: Dataset,
    out: Path,
    *,
    device: str = "cpu",
    progress: bool = True,
    normalize: tuple[Sequence[float], Sequence[float]] | None = None,
) -> list[dict[str, Any]]:
    """Carry out the protocol for every setting × method; returns the summary rows.

    Records go to ``out/records/<setting>/<method>.jsonl`` as the run goes; a rerun with
    the same configuration resumes where the last one stopped. ``summary.csv`` is written
    at the end from the records alone.
    """
    _check_out_dir(out, config.as_json())
    model = model.to(device).eval()
    cache = CleanScores(model, dataset, config.batch_size, device)
    for setting in config.settings:
        indices, specified, skipped = select(cache, setting, config.samples, config.seed)
        setting_dir = out / "records" / setting.key
        _write_json(setting_dir / "setting.json", asdict(setting) | {"skipped": skipped})
        for method in config.methods:
            path = setting_dir / f"{method.key}.jsonl"
            _write_json(path.with_suffix(".json"), method.as_dict())
            done = {r["index"] for r in read_records(path, repair=True)}
            todo = [i for i, idx in enumerate(indices) if idx not in done]
            attack = method.build(model, setting.k, normalize) if todo else None
            bar = tqdm(
                total=len(indices),
                initial=len(indices) - len(todo),
                desc=f"{setting.key} {method.method}",
                disable=not progress,
                leave=False,
            )
            example_path = out / "examples" / setting.key / f"{method.key}.safetensors"
            for start in range(0, len(todo), config.batch_size):
                rows_ = todo[start : start + config.batch_size]
                batch_idx = [indices[i] for i in rows_]
                items = [dataset[i] for i in batch_idx]
                images = torch.stack([im for im, _ in items]).to(device)
                labels = torch.stack([lab for _, lab in items]).to(device)
                t0 = time.perf_counter()
                result = attack(
                    images, labels, specified[rows_].to(device), setting.effective_threshold
                )
                seconds = time.perf_counter() - t0
                if rows_[0] == 0 and config.examples > 0:
                    n_ex = min(config.examples, len(rows_))
                    _save_examples(
                        example_path,
                        batch_idx[:n_ex],
                        images[:n_ex],
                        labels[:n_ex],
                        _slice_result(result, n_ex),
                    )
                append_records(
                    path, make_records(batch_idx, images, labels, result, setting.k, seconds)
                )
                bar.update(len(rows_))
            bar.close()
    rows = collect_rows(out, config.settings, config.methods)
    write_summary(out, rows)
    return rows


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(path)


def collect_rows(
    out: Path,
    settings: Sequence[Setting] | None = None,
    methods: Sequence[MethodConfig] | None = None,
) -> list[dict[str, Any]]:
    """Summary rows re-derived from the records under ``out`` (in run order if given)."""
    path = out / "config.json"
    if not path.is_file():
        raise InputError(f"{str(out)!r} is not a tkmia results folder (no config.json)")
    config = json.loads(path.read_text())
    setting_keys = [s.key for s in settings] if settings else config["settings"]
    method_keys = [m.key for m in methods] if methods else config["methods"]
    rows = []
    for skey in setting_keys:
        sdir = out / "records" / skey
        if not (sdir / "setting.json").is_file():
            continue
        sdata = json.loads((sdir / "setting.json").read_text())
        skipped = sdata.pop("skipped")
        if sdata.get("group_indices") is not None:
            sdata["group_indices"] = tuple(sdata["group_indices"])
        setting = Setting(**sdata)
        for mkey in method_keys:
            mpath = sdir / f"{mkey}.json"
            if not mpath.is_file():
                continue
            method = MethodConfig(**json.loads(mpath.read_text()))
            records = read_records(mpath.with_suffix(".jsonl"))
            rows.append(
                _summary_row(config["dataset"], config["model"], setting, method, skipped, records)
            )
    return rows


def _slice_result(result, n: int):
    from tkmia.attacks import AttackResult

    return AttackResult(**{name: getattr(result, name)[:n] for name in result.__dataclass_fields__})


def _summary_row(
    dataset: str,
    model: str,
    setting: Setting,
    method: MethodConfig,
    skipped: int,
    records: list[dict[str, Any]],
) -> dict[str, Any]:
    row = {
        "dataset": dataset,
        "model": model,
        "scheme": setting.scheme,
        "k": setting.k,
        "group": setting.group or "",
        "n": setting.n if setting.n is not None else "",
        "threshold": setting.effective_threshold if setting.scheme == "random" else "all",
        "method": method.method,
        "lr": method.lr if method.lr is not None else "",
        "lam": method.lam if method.lam is not None else "",
        "max_iter": method.max_iter,
        "skipped": skipped,
    }
    return row | summarise(records)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def write_summary(out: Path, rows: list[dict[str, Any]]) -> Path:
    """Write ``summary.csv`` atomically (temporary file, then rename)."""
    path = out / "summary.csv"
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: _fmt(row[key]) for key in SUMMARY_COLUMNS})
    tmp.replace(path)
    return path
