"""Run the paper's protocol: select eligible images, attack them, record, summarise.

Batching: the selected list of each setting is cut into fixed *chunks* (positions
``[0, m)``, ``[m, 2m)``, ... for ``--chunk-size m``, by default four batches), the unit of
records. A (setting, method)'s chunks stream through one working set of ``--batch-size``
images (:meth:`~tkmia.attacks.base.Attack.stream`): a sample that finishes leaves the
working set at once and the next image in line takes its slot, from the next chunk once
the current one has none left to start (continuous batching across the dataset), so the
batch stays full until the setting runs dry; each chunk's records are written when its
last image finishes.

Resuming: records are appended chunk by chunk (see :mod:`tkmia.experiments.records`); a
rerun of the same configuration attacks only the chunks that have no records yet, so a
record is never duplicated and an interrupted run ends with the table of an uninterrupted
one. A chunk that an interrupted write left incomplete is dropped and attacked again as a
whole; samples are independent, so its records are those of the uninterrupted run up to
the last-bit rounding of batch-size-dependent CPU kernels.

Sharding: with ``torchrun`` each rank attacks every ``WORLD_SIZE``-th chunk (see
:mod:`tkmia.experiments.distributed`).
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from tkmia.errors import BadImageError, InputError
from tkmia.experiments.distributed import DistInfo
from tkmia.experiments.records import (
    append_records,
    drop_records,
    make_records,
    quantize_uint8,
    read_all_records,
    record_files,
    summarise,
)
from tkmia.experiments.settings import MethodConfig, Setting
from tkmia.files import atomic_path, write_text_atomic
from tkmia.metrics import removed_count
from tkmia.protocol import select_global, select_random

SUMMARY_COLUMNS = [
    "dataset", "model", "scheme", "k", "group", "n", "threshold", "method", "lr", "lam",
    "max_iter", "attacked", "skipped", "success_rate", "success_uint8", "d_tkacc",
    "d_p_at_k", "d_map_at_k", "d_ndcg_at_k", "delta_n", "mean_specified", "aper", "linf",
    "psnr", "ssim", "mean_iterations", "seconds",
]  # fmt: skip
#: columns that measure time, not results: they differ between identical runs.
TIMING_COLUMNS = ("seconds",)

Normalize = tuple[Sequence[float], Sequence[float]]


def _score(model: nn.Module, images: torch.Tensor, normalize: Normalize | None) -> torch.Tensor:
    if normalize is not None:
        mean = torch.as_tensor(normalize[0], dtype=images.dtype, device=images.device)
        std = torch.as_tensor(normalize[1], dtype=images.dtype, device=images.device)
        images = (images - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    return model(images)


class CleanScores:
    """Scores the evaluation split in dataset order, on demand, and keeps them.

    ``upto(n)`` makes sure the first ``n`` images are scored; ``scores`` and ``labels``
    then hold ``(n_scored, c)`` tensors on the CPU. With ``skip_bad=True`` an image that
    cannot be read (:class:`~tkmia.errors.BadImageError`) is marked in ``bad`` (its
    scores are zeros and it is never eligible); otherwise the error stops the run.
    """

    def __init__(
        self,
        model: nn.Module,
        dataset: Dataset,
        batch_size: int,
        device: str,
        normalize: Normalize | None = None,
        skip_bad: bool = False,
    ) -> None:
        self.model, self.dataset, self.batch_size, self.device = model, dataset, batch_size, device
        self.normalize, self.skip_bad = normalize, skip_bad
        self.scores = torch.empty(0)
        self.labels = torch.empty(0)
        self.bad = torch.zeros(0, dtype=torch.bool)

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def n_scored(self) -> int:
        return self.scores.shape[0]

    def _item(self, i: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        try:
            return self.dataset[i]
        except BadImageError as err:
            if self.skip_bad:
                return None
            raise BadImageError(
                f"{err} (or pass --skip-bad-images to skip unreadable images; they are "
                "counted as skipped)"
            ) from None

    @torch.no_grad()
    def upto(self, n: int) -> None:
        n = min(n, len(self.dataset))
        chunks, labels, bads = [self.scores], [self.labels], [self.bad]
        for start in range(self.n_scored, n, self.batch_size):
            stop = min(start + self.batch_size, n)
            items = [self._item(i) for i in range(start, stop)]
            good = [it for it in items if it is not None]
            bad = torch.tensor([it is None for it in items], dtype=torch.bool)
            if good:
                images = torch.stack([im for im, _ in good]).to(self.device)
                good_scores = _score(self.model, images, self.normalize).float().cpu()
                c = good_scores.shape[1]
                good_labels = torch.stack([lab for _, lab in good]).float()
            else:
                c = self.labels.shape[1] if self.labels.numel() else len(self.dataset.classes)
                good_scores = good_labels = torch.zeros(0, c)
            scores = torch.zeros(len(items), c)
            labs = torch.zeros(len(items), c)
            scores[~bad], labs[~bad] = good_scores, good_labels
            chunks.append(scores)
            labels.append(labs)
            bads.append(bad)
        if len(chunks) > 1:
            self.scores = torch.cat([c for c in chunks if c.numel()])
            self.labels = torch.cat([lb for lb in labels if lb.numel()])
            self.bad = torch.cat(bads)


def select(
    cache: CleanScores, setting: Setting, samples: int, seed: int
) -> tuple[list[int], torch.Tensor, int]:
    """The first ``samples`` eligible images: ``(indices, specified (len, c), skipped)``.

    ``skipped`` counts the ineligible images met before the last selected one (all
    ineligible images of the split when fewer than ``samples`` are eligible); unreadable
    images skipped with ``skip_bad`` are among them.
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
            spec, ok = select_random(labels, scores, setting.n, setting.k, seed, range(start, stop))
        ok = ok & ~cache.bad[start:stop]
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


def chunks(n: int, chunk_size: int) -> list[range]:
    """The fixed chunks of a selected list of ``n`` images: positions ``[s, s + m)``."""
    return [range(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]


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
    chunk_size: int | None = None

    @property
    def chunk(self) -> int:
        """Images per chunk, the unit of records and resuming (default: 4 batches)."""
        return self.chunk_size or 4 * self.batch_size

    def as_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "model": self.model,
            "settings": [s.key for s in self.settings],
            "methods": [m.key for m in self.methods],
            "samples": self.samples,
            "seed": self.seed,
            "chunk_size": self.chunk,
        } | self.extra


def _check_out_dir(out: Path, config: dict[str, Any], write: bool = True) -> None:
    """Create ``out`` or make sure it holds a run of the same configuration (resume)."""
    path = out / "config.json"
    try:
        if write:
            out.mkdir(parents=True, exist_ok=True)
        if path.is_file():
            old = json.loads(path.read_text())
            if old != config:
                raise InputError(
                    f"{str(out)!r} holds results of a different run configuration; "
                    "pass another --out to start a new run (or the same command to resume)"
                )
            return
        if not write:
            raise InputError(f"{str(path)!r} is missing (rank 0 should have written it)")
        write_text_atomic(path, json.dumps(config, indent=2, sort_keys=True))
    except OSError as err:
        raise InputError(f"cannot write results to {str(out)!r}: {err.strerror}") from None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True))


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
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))


@torch.no_grad()
def quantised_success(
    model: nn.Module, result, k: int, normalize: Normalize | None = None
) -> torch.Tensor:
    """Success ``(B,)`` re-measured after the adversarial images are saved as 8-bit PNGs
    and read back (``round(x · 255) / 255``): the model is scored on the quantised images
    and the attack's own rule applied (``ΔN >= required``, with ΔN against the clean
    top-k)."""
    quantised = quantize_uint8(result.adv_images.detach())
    scores = _score(model, quantised, normalize).to(result.clean_scores.dtype)
    removed = removed_count(result.clean_scores, scores, result.specified, k)
    return removed >= result.required.to(removed.device)


@dataclass
class _Plan:
    setting: Setting
    indices: list[int]
    specified: torch.Tensor
    skipped: int
    bad: list[int]


def run(
    config: RunConfig,
    model: nn.Module,
    dataset: Dataset,
    out: Path,
    *,
    device: str = "cpu",
    progress: bool = True,
    normalize: Normalize | None = None,
    skip_bad_images: bool = False,
    dist: DistInfo | None = None,
) -> list[dict[str, Any]]:
    """Carry out the protocol for every setting × method; returns the summary rows.

    Records go to ``out/records/<setting>/<method>.jsonl`` (``.rank<r>.jsonl`` for rank
    ``r`` of a distributed run) as the run goes; a rerun with the same configuration
    resumes where the last one stopped. ``summary.csv`` is written at the end (by rank 0)
    from the records alone. With ``skip_bad_images`` an unreadable image is skipped and
    counted (``bad_images`` in ``setting.json``) instead of stopping the run.
    """
    dist = dist or DistInfo()
    error = None
    if dist.is_main:
        try:
            _check_out_dir(out, config.as_json())
        except InputError as err:
            error = str(err)
    error = dist.share(error)
    if error is not None:
        raise InputError(error)
    if not dist.is_main:
        _check_out_dir(out, config.as_json(), write=False)
    model = model.to(device).eval()
    cache = CleanScores(
        model, dataset, config.batch_size, device, normalize=normalize, skip_bad=skip_bad_images
    )
    # 1. selection (deterministic: every rank selects the same images)
    plans = []
    for setting in config.settings:
        indices, specified, skipped = select(cache, setting, config.samples, config.seed)
        scanned = indices[-1] + 1 if len(indices) == config.samples else cache.n_scored
        bad = torch.nonzero(cache.bad[:scanned]).flatten().tolist()
        plans.append(_Plan(setting, indices, specified, skipped, bad))
    # 2. rank 0 writes what describes the run and repairs interrupted batches
    if dist.is_main:
        for plan in plans:
            setting_dir = out / "records" / plan.setting.key
            _write_json(
                setting_dir / "setting.json",
                asdict(plan.setting)
                | {"skipped": plan.skipped, "bad_images": len(plan.bad)}
                | ({"bad_image_indices": plan.bad} if plan.bad else {})
                | {"indices": plan.indices},
            )
            for method in config.methods:
                _write_json(setting_dir / f"{method.key}.json", method.as_dict())
                _drop_incomplete_chunks(setting_dir, method.key, plan.indices, config.chunk)
        _report_bad_images(plans, dataset)
    dist.barrier()
    # 3. every rank attacks its chunks
    for plan in plans:
        setting, indices, specified = plan.setting, plan.indices, plan.specified
        setting_dir = out / "records" / setting.key
        for method in config.methods:
            done = {r["index"] for r in read_all_records(setting_dir, method.key)}
            mine = [
                [p for p in chunk if indices[p] not in done]
                for b, chunk in enumerate(chunks(len(indices), config.chunk))
                if dist.owns(b)
            ]
            mine_total = sum(len(chunk) for chunk in mine)
            mine = [chunk for chunk in mine if chunk]
            path = setting_dir / dist.records_name(method.key)
            attack = method.build(model, setting.k, normalize) if mine else None
            todo = sum(len(chunk) for chunk in mine)
            bar = tqdm(
                total=mine_total,
                initial=mine_total - todo,
                desc=f"{setting.key} {method.method}",
                disable=not progress or not dist.is_main,
                leave=False,
            )
            example_path = out / "examples" / setting.key / f"{method.key}.safetensors"
            reader = _ChunkReader(dataset, indices, specified, mine, device)
            results = (
                attack.stream(reader, setting.effective_threshold, batch_size=config.batch_size)
                if mine
                else ()
            )
            t0 = time.perf_counter()
            for result in results:
                # the attack time since the previous chunk came back, less image reading
                seconds = time.perf_counter() - t0 - reader.seconds
                rows_, batch_idx, images, labels = reader.read.popleft()
                ok8 = quantised_success(model, result, setting.k, normalize)
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
                    path,
                    make_records(batch_idx, images, labels, result, setting.k, seconds, ok8),
                )
                bar.update(len(rows_))
                reader.seconds = 0.0
                t0 = time.perf_counter()
            bar.close()
    # 4. rank 0 summarises every rank's records
    dist.barrier()
    rows = collect_rows(out, config.settings, config.methods)
    if dist.is_main:
        write_summary(out, rows)
    return rows


class _ChunkReader:
    """The ``(images, labels, specified)`` of each chunk (positions into ``indices``), read
    from the dataset only when the attack's stream asks for it. ``read`` keeps each chunk's
    ``(positions, dataset indices, images, labels)`` until its result comes back (results
    come back in chunk order); ``seconds`` adds up the time spent reading (the runner
    keeps it out of the attack's time)."""

    def __init__(self, dataset, indices, specified, chunks, device) -> None:
        self.dataset, self.indices, self.specified = dataset, indices, specified
        self.chunks, self.device = chunks, device
        self.read: deque[tuple[list[int], list[int], torch.Tensor, torch.Tensor]] = deque()
        self.seconds = 0.0

    def __len__(self) -> int:  # the attack then reads the last chunk with the one before it
        return len(self.chunks)

    def __iter__(self):
        for rows in self.chunks:
            t = time.perf_counter()
            batch_idx = [self.indices[i] for i in rows]
            items = [self.dataset[i] for i in batch_idx]
            images = torch.stack([im for im, _ in items]).to(self.device)
            labels = torch.stack([lab for _, lab in items]).to(self.device)
            self.read.append((rows, batch_idx, images, labels))
            self.seconds += time.perf_counter() - t
            yield images, labels, self.specified[rows].to(self.device)


def _drop_incomplete_chunks(
    setting_dir: Path, method_key: str, indices: list[int], chunk_size: int
) -> None:
    """Cut torn tails and drop the records of chunks that were only partly written."""
    done = {r["index"] for r in read_all_records(setting_dir, method_key, repair=True)}
    drop: set[int] = set()
    for chunk in chunks(len(indices), chunk_size):
        have = [indices[p] for p in chunk if indices[p] in done]
        if 0 < len(have) < len(chunk):
            drop.update(have)
    if drop:
        for path in record_files(setting_dir, method_key):
            drop_records(path, drop)


def _report_bad_images(plans: list[_Plan], dataset: Dataset) -> None:
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


def collect_rows(
    out: Path,
    settings: Sequence[Setting] | None = None,
    methods: Sequence[MethodConfig] | None = None,
) -> list[dict[str, Any]]:
    """Summary rows re-derived from the records under ``out`` (in run order if given).

    The records of all files of a method (a single process's and every rank's) are
    merged, one per image, in image order.
    """
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
        bad_images = sdata.pop("bad_images", 0)
        sdata.pop("bad_image_indices", None)
        selected = sdata.pop("indices", None)
        if sdata.get("group_indices") is not None:
            sdata["group_indices"] = tuple(sdata["group_indices"])
        setting = Setting(**sdata)
        for mkey in method_keys:
            mpath = sdir / f"{mkey}.json"
            if not mpath.is_file():
                continue
            method = MethodConfig.from_dict(json.loads(mpath.read_text()))
            records = read_all_records(sdir, mkey)
            if selected is not None:  # records of images no longer selected do not count
                keep = set(selected)
                records = [r for r in records if r["index"] in keep]
            row = _summary_row(
                config["dataset"], config["model"], setting, method, skipped, records
            )
            rows.append(row | {"bad_images": bad_images})
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
        **{
            name: "" if value is None else value
            for name, value in method.as_dict().items()
            if name != "method"
        },
        "skipped": skipped,
    }
    return row | summarise(records)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def write_summary(out: Path, rows: list[dict[str, Any]], name: str = "summary.csv") -> Path:
    """Write ``summary.csv`` (or ``name``, same columns) atomically."""
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _fmt(row.get(key, math.nan)) for key in SUMMARY_COLUMNS})
    path = out / name
    write_text_atomic(path, buffer.getvalue())
    return path


def read_summary(path: Path) -> list[dict[str, Any]]:
    """Rows of a ``summary.csv`` (values as strings, as written)."""
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))
