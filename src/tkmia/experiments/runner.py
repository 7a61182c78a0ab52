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

import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from tkmia.attacks import Attack, AttackResult
from tkmia.attacks.base import Normalize
from tkmia.data.common import LabelledDataset
from tkmia.errors import InputError
from tkmia.experiments.chunk_reader import Chunk, ChunkReader
from tkmia.experiments.distributed import DistInfo
from tkmia.experiments.plan import SettingPlan, chunks, plan_setting
from tkmia.experiments.records import (
    append_records,
    make_records,
    quantize_uint8,
    read_all_records,
)
from tkmia.experiments.results_dir import prepare_out_dir, report_bad_images, write_setting
from tkmia.experiments.scoring import CleanScores, check_gradients
from tkmia.experiments.settings import MethodConfig, Setting
from tkmia.experiments.stealth_reference import setting_references
from tkmia.experiments.summary import SummaryRow, collect_rows, write_summary
from tkmia.files import atomic_path, check_inside, folder_lock
from tkmia.normalize import Normalized


@dataclass
class RunConfig:
    """Everything that determines a run's results (written to ``config.json``).

    Attributes:
        dataset, model: names (for the tables).
        settings, methods: what to attack, with what.
        samples: images per setting.
        seed: S2's seed.
        batch_size: the attack's working set.
        examples: images per (setting, method) saved for the figures.
        extra: more ``config.json`` entries (e.g. ``classes``, ``split``).
        chunk_size: images per chunk (None: four batches).
        method_samples: for some configurations (by key), fewer images per setting: the
            first ones of its selection (the built-in benchmark's SPEC §7 variants).
    """

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
    method_samples: dict[str, int] = field(default_factory=dict)

    @property
    def chunk(self) -> int:
        """Images per chunk, the unit of records and resuming (default: 4 batches)."""
        return self.chunk_size or 4 * self.batch_size

    def as_json(self) -> dict[str, Any]:
        """The ``config.json`` object (a rerun resumes only with an equal one)."""
        return (
            {
                "dataset": self.dataset,
                "model": self.model,
                "settings": [s.key for s in self.settings],
                "methods": [m.key for m in self.methods],
                "samples": self.samples,
                "seed": self.seed,
                "chunk_size": self.chunk,
            }
            | ({"method_samples": self.method_samples} if self.method_samples else {})
            | self.extra
        )


@torch.no_grad()
def quantised_success(attack: Attack, result: AttackResult, labels: torch.Tensor) -> torch.Tensor:
    """Success ``(B,)`` bool re-measured after the adversarial images are saved as 8-bit
    PNGs and read back (``round(x · 255) / 255``): the attack's model is scored on the
    quantised images and the attack's own rule applied (``ΔN >= required`` against the
    clean top-k, SPEC §5; with ``success="preserve"`` also §7.1; for a targeted attack
    §7.3's)."""
    quantised = quantize_uint8(result.adv_images.detach())
    return attack.rescore(quantised, result, labels)


def _save_examples(path: Path, chunk: Chunk, result: AttackResult, n: int) -> None:
    """The first ``n`` images of a chunk and their results, for the figures."""
    tensors = {
        "indices": torch.tensor(chunk.indices[:n]),
        "clean": chunk.images[:n].cpu().contiguous(),
        "adv": result.adv_images[:n].detach().cpu().contiguous(),
        "labels": chunk.labels[:n].cpu().contiguous(),
        "specified": result.specified[:n].cpu().contiguous(),
        "clean_scores": result.clean_scores[:n].cpu().contiguous(),
        "adv_scores": result.adv_scores[:n].cpu().contiguous(),
        "success": result.success[:n].cpu(),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))


@dataclass
class _Run:
    """What every (setting, method) of one run shares."""

    config: RunConfig
    model: nn.Module
    dataset: LabelledDataset
    out: Path
    device: str
    dist: DistInfo
    progress: bool
    #: ``success="stealth"``'s IQR per setting key (settings a stealth method attacks)
    stealth_iqr: dict[str, torch.Tensor] = field(default_factory=dict)

    def my_chunks(self, plan: SettingPlan, method: MethodConfig) -> tuple[list[list[int]], int]:
        """This rank's chunks of a (setting, method) that still need attacking (as
        positions into ``plan.indices``, those with records left out) and how many
        images its share holds in all."""
        setting_dir = self.out / "records" / plan.setting.key
        done = {r["index"] for r in read_all_records(setting_dir, method.key)}
        n = min(len(plan.indices), self.config.method_samples.get(method.key, len(plan.indices)))
        mine = [
            [p for p in chunk if plan.indices[p] not in done]
            for b, chunk in enumerate(chunks(n, self.config.chunk))
            if self.dist.owns(b)
        ]
        total = sum(len(chunk) for chunk in mine)
        return [chunk for chunk in mine if chunk], total

    def attack(self, plan: SettingPlan, method: MethodConfig) -> None:
        """Attack this rank's unfinished chunks of a (setting, method), streaming them
        through one working set, and write each chunk's records as it finishes."""
        setting = plan.setting
        mine, total = self.my_chunks(plan, method)
        todo = sum(len(chunk) for chunk in mine)
        bar = tqdm(
            total=total,
            initial=total - todo,
            desc=f"{setting.key} {method.method}",
            disable=not self.progress or not self.dist.is_main,
            leave=False,
        )
        if mine:
            attack = method.build(self.model, setting.k)
            if attack.stealth:
                attack.set_stealth_reference(self.stealth_iqr[setting.key])
            reader = ChunkReader(self.dataset, plan.indices, plan.specified, mine, self.device)
            results = attack.stream(
                reader, setting.effective_threshold, batch_size=self.config.batch_size
            )
            start = time.perf_counter()
            for result in results:
                elapsed = time.perf_counter() - start
                chunk, reading = reader.finished()
                self.record(setting, method, chunk, result, elapsed - reading, attack)
                bar.update(len(chunk.positions))
                start = time.perf_counter()
        bar.close()

    def record(
        self,
        setting: Setting,
        method: MethodConfig,
        chunk: Chunk,
        result: AttackResult,
        seconds: float,
        attack: Attack,
    ) -> None:
        """Append a finished chunk's records (and save the examples of the first chunk).

        ``seconds``: the attack's time on the chunk, less the time spent reading images;
        ``attack``: the attack that made ``result``.
        """
        ok8 = quantised_success(attack, result, chunk.labels)
        if chunk.positions[0] == 0 and self.config.examples > 0:
            path = self.out / "examples" / setting.key / f"{method.key}.safetensors"
            _save_examples(
                check_inside(self.out, path),
                chunk,
                result,
                min(self.config.examples, len(chunk.indices)),
            )
        records = make_records(
            chunk.indices, chunk.images, chunk.labels, result, setting.k, seconds, ok8
        )
        path = self.out / "records" / setting.key / self.dist.records_name(method.key)
        append_records(check_inside(self.out, path), records)


def _hold(stack: ExitStack, out: Path, dist: DistInfo) -> None:
    """Rank 0 locks ``out`` for the run (:func:`~tkmia.files.folder_lock`; the other ranks
    of a torchrun run write files of their own); every rank raises rank 0's refusal."""
    error = None
    if dist.is_main:
        try:
            stack.enter_context(folder_lock(out, "tkmia run"))
        except InputError as err:
            error = str(err)
    error = dist.share(error)
    if error is not None:
        raise InputError(error)


def _run_locked(job: _Run, skip_bad_images: bool) -> list[SummaryRow]:
    """:func:`run`'s work once the folder is held: select, describe, attack, summarise."""
    config, out, dist = job.config, job.out, job.dist
    cache = CleanScores(job.model, job.dataset, config.batch_size, job.device, skip_bad_images)
    # deterministic: every rank selects the same images
    plans = [plan_setting(cache, s, config.samples, config.seed) for s in config.settings]
    check_gradients(job.model, job.dataset, plans, job.device)
    if dist.is_main:
        for plan in plans:
            methods = [m for m in config.methods if m.runs_on(plan.setting)]
            write_setting(out, plan, methods, config.chunk)
        report_bad_images(plans, job.dataset)
    writer = out if dist.is_main else None
    job.stealth_iqr = setting_references(cache, plans, config.methods, writer)
    dist.barrier()
    for plan in plans:
        for method in config.methods:
            if method.runs_on(plan.setting):
                job.attack(plan, method)
    dist.barrier()
    # the folder's rows: what earlier runs in it attacked as well as this run
    rows = collect_rows(out)
    if dist.is_main:
        write_summary(out, rows)
    return rows


def run(
    config: RunConfig,
    model: nn.Module,
    dataset: LabelledDataset,
    out: Path,
    *,
    device: str = "cpu",
    progress: bool = True,
    normalize: Normalize | None = None,
    skip_bad_images: bool = False,
    dist: DistInfo | None = None,
) -> list[SummaryRow]:
    """Carry out the protocol for every setting × method.

    Records go to ``out/records/<setting>/<method>.jsonl`` (``.rank<r>.jsonl`` for rank
    ``r`` of a distributed run) as the run goes; a rerun with the same configuration
    resumes where the last one stopped, and one that adds settings or methods (in any
    order) attacks only what is new. ``summary.csv`` is written at the end (by rank 0)
    from the folder's records alone: this run's and those of earlier runs in it.

    Args:
        config: what to run.
        model: the classifier, scores ``(B, c)`` of images ``(B, 3, H, W)``; moved to
            ``device`` and put in eval mode.
        dataset: the evaluation split, ``(image, labels)`` items.
        out: the results folder.
        device: where the model and attacks run.
        progress: show progress bars (rank 0 only).
        normalize: ``(mean, std)`` the model expects (None: pixels in [0, 1]); the model is
            wrapped in :class:`~tkmia.normalize.Normalized` once, for scoring and attacks.
        skip_bad_images: skip and count an unreadable image (``bad_images`` in
            ``setting.json``) instead of stopping the run.
        dist: this process's place in a ``torchrun`` run (default: single process).

    Returns:
        The folder's summary rows, one per (setting, method) it holds: in the order of the
        run that first added each (this run's order in a new folder).

    Raises:
        InputError: ``out`` holds another configuration or cannot be written.
        BadImageError: an image cannot be read and ``skip_bad_images`` is off.
    """
    dist = dist or DistInfo()
    if normalize is not None:
        model = Normalized(model, *normalize)
    model = model.to(device).eval()
    with ExitStack() as held:
        _hold(held, out, dist)
        prepare_out_dir(out, config.as_json(), dist)
        job = _Run(config, model, dataset, out, device, dist, progress)
        rows = _run_locked(job, skip_bad_images)
    return rows
