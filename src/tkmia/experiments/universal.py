"""The universal perturbation protocol (SPEC §7.4): fit one δ per (k, S1 group, objective,
eps) on the eligible images of the fitting split, evaluate it on the eligible images of
the evaluation split, record every evaluated image.

Results folder: ``config.json`` (the handshake of :func:`check_out_dir`),
``deltas/<setting>/<objective>-eps<ε>.safetensors`` (+ ``.json`` sidecar: the fitted δ,
saved after every epoch, from which an interrupted fit resumes),
``records/<setting>/<objective>-eps<ε>.jsonl`` (one record per evaluated image, as
:func:`~tkmia.experiments.records.make_records` makes them), ``examples/...`` (the first
images for the figure) and ``summary.csv`` (one :class:`UniversalRow` per fit).
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from tkmia.attacks.universal import Universal, check_delta, load_delta
from tkmia.data.common import LabelledDataset
from tkmia.errors import InputError
from tkmia.experiments.plan import SettingPlan, plan_setting
from tkmia.experiments.records import append_records, make_records, read_records, summarise
from tkmia.experiments.results_dir import check_out_dir
from tkmia.experiments.scoring import CleanScores, check_gradients
from tkmia.experiments.settings import Setting
from tkmia.files import atomic_path, check_inside, folder_lock, write_text_atomic
from tkmia.protocol import eligibility_rule

__all__ = ["UniversalConfig", "UniversalRow", "fit_key", "run_universal", "write_rows"]


@dataclass
class UniversalConfig:
    """Everything that determines a universal run's results (``config.json``).

    Attributes:
        dataset, model: names (for the tables).
        settings: S1 settings (k, group); each gets one δ per objective and eps.
        objectives: ``"tkmia"`` and/or ``"tkmlapu"``.
        eps: the L2 radii.
        lr, epochs, batch_size, seed: :class:`~tkmia.attacks.universal.Universal`'s.
        fit_split, eval_split: the split δ is fitted on and the one it is reported on.
        fit_samples: at most this many eligible fitting images (the first ones).
        samples: at most this many eligible evaluation images (the first ones).
        examples: evaluation images saved for the figure.
        extra: more ``config.json`` entries (``classes``).
    """

    dataset: str
    model: str
    settings: list[Setting]
    objectives: list[str]
    eps: list[float]
    lr: float = 0.1
    epochs: int = 10
    batch_size: int = 64
    seed: int = 0
    fit_split: str = "train"
    eval_split: str = "test"
    fit_samples: int = 2000
    samples: int = 1000
    examples: int = 3
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """The ``config.json`` object (``"command": "universal"`` tells it from a
        `tkmia run` folder)."""
        data = asdict(self)
        data["settings"] = [{"k": s.k, "group": s.group, "labels": list(s.group_indices or ())}
                            for s in self.settings]  # fmt: skip
        return {"command": "universal"} | data | data.pop("extra")


@dataclass(frozen=True)
class UniversalRow:
    """One line of a universal run's ``summary.csv``: a fitted δ and what it does on the
    evaluated images (drops are clean minus adversarial, averaged over them; ``aper`` is
    the mean L2 of ``clip(x + δ) − x`` over the fooled ones)."""

    dataset: str
    model: str
    k: int
    group: str
    objective: str
    eps: float
    n_fit: int
    attacked: int
    skipped: int
    universal_success: float
    d_tkacc: float
    d_p_at_k: float
    d_map_at_k: float
    d_ndcg_at_k: float
    delta_n: float
    aper: float
    fit_seconds: float

    @property
    def setting_key(self) -> str:
        """The setting's folder name under ``records/``, ``deltas/`` and ``examples/``."""
        return Setting("global", self.k, group=self.group).key


COLUMNS = [f.name for f in fields(UniversalRow)]


def fit_key(objective: str, eps: float) -> str:
    """The file name stem of one fit: ``tkmia-eps4``, ``tkmlapu-eps0.5``."""
    return f"{objective}-eps{eps:g}"


def _images(dataset: LabelledDataset, indices: Sequence[int], device: str) -> torch.Tensor:
    return torch.stack([dataset[i][0] for i in indices]).to(device)


def _plan(cache: CleanScores, setting: Setting, samples: int, split: str) -> SettingPlan:
    plan = plan_setting(cache, setting, samples, seed=0)
    if not plan.indices:
        raise InputError(
            f"group {setting.group!r}, k={setting.k}: no eligible image in the {split} split "
            f"({plan.skipped} looked at; eligible: {eligibility_rule('global', setting.k)})"
        )
    return plan


@dataclass
class _Split:
    """The eligible images of one split for one setting, on the device."""

    plan: SettingPlan
    images: torch.Tensor
    labels: torch.Tensor


def _split(cache: CleanScores, setting: Setting, samples: int, name: str, device: str) -> _Split:
    plan = _plan(cache, setting, samples, name)
    labels = cache.labels[plan.indices].to(device)
    return _Split(plan, _images(cache.dataset, plan.indices, device), labels)


def _save_examples(path: Path, split: _Split, result: Any, delta: torch.Tensor, n: int) -> None:
    """The first ``n`` evaluated images, their results and δ, for the figure (the keys of
    the per-image figures' examples, plus ``delta``)."""
    tensors = {
        "indices": torch.tensor(split.plan.indices[:n]),
        "clean": split.images[:n],
        "adv": result.adv_images[:n],
        "labels": split.labels[:n],
        "specified": result.specified[:n],
        "clean_scores": result.clean_scores[:n],
        "adv_scores": result.adv_scores[:n],
        "success": result.success[:n],
        "delta": delta,
    }
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))


def _read_back(path: Path, ev: _Split, eps: float, epochs: int) -> dict[str, Any]:
    """The sidecar of a finished fit's δ, once δ is checked (:func:`check_delta`, and
    saved after the last epoch): its records were made from it.

    Raises:
        InputError: δ or its sidecar is damaged or was changed.
    """
    delta, saved = load_delta(path)
    check_delta(path, delta, saved, tuple(ev.images.shape[1:]), eps, epochs)
    if saved["epoch"] != epochs:
        raise InputError(
            f"δ file {str(path)!r} was saved after epoch {saved['epoch']} of {epochs}, but "
            "its fit's records are complete: delete it, its .json sidecar and the fit's "
            "records and rerun the same command to fit δ again"
        )
    return saved


def _fit_and_evaluate(
    config: UniversalConfig,
    model: nn.Module,
    setting: Setting,
    data: tuple[_Split, _Split],
    objective: str,
    eps: float,
    out: Path,
) -> UniversalRow:
    """One δ: fitted (or resumed, or read back when done) and evaluated; its row."""
    fit, ev = data
    key = fit_key(objective, eps)
    delta_path = check_inside(out, out / "deltas" / setting.key / f"{key}.safetensors")
    check_inside(out, delta_path.with_suffix(".json"))
    records_path = check_inside(out, out / "records" / setting.key / f"{key}.jsonl")
    n_eval = len(ev.plan.indices)
    records = read_records(records_path)
    done = [r["index"] for r in records] == ev.plan.indices and delta_path.is_file()
    if not done:
        atk = Universal(model, setting.k, objective, eps, config.lr, config.epochs,
                        config.batch_size, config.seed)  # fmt: skip
        meta = {"model": config.model, "dataset": config.dataset, "group": setting.group,
                "fit_split": config.fit_split}  # fmt: skip
        specified = fit.plan.specified.to(fit.images.device)
        delta = atk.fit(fit.images, fit.labels, specified, checkpoint=delta_path, meta=meta)
        began = time.perf_counter()
        result = atk.evaluate(delta, ev.images, ev.labels, ev.plan.specified)
        seconds = time.perf_counter() - began
        records = make_records(ev.plan.indices, ev.images, ev.labels, result, setting.k, seconds)
        records_path.unlink(missing_ok=True)
        append_records(records_path, records)
        if config.examples > 0:
            path = out / "examples" / setting.key / f"{key}.safetensors"
            _save_examples(path, ev, result, delta, min(config.examples, n_eval))
    saved = _read_back(delta_path, ev, eps, config.epochs)
    m = summarise(records)
    return UniversalRow(
        config.dataset, config.model, setting.k, str(setting.group), objective, eps,
        len(fit.plan.indices), n_eval, ev.plan.skipped, m["success_rate"], m["d_tkacc"],
        m["d_p_at_k"], m["d_map_at_k"], m["d_ndcg_at_k"], m["delta_n"], m["aper"],
        float(saved["fit_seconds"]),
    )  # fmt: skip


def run_universal(
    config: UniversalConfig,
    model: nn.Module,
    fit_set: LabelledDataset,
    eval_set: LabelledDataset,
    out: Path,
    device: str = "cpu",
    log: Callable[[str], None] | None = None,
) -> list[UniversalRow]:
    """Fit and evaluate every (setting, objective, eps); write records and ``summary.csv``.

    A rerun of the same configuration resumes: finished fits are read back, an
    interrupted one continues from its last saved epoch.

    Args:
        config: what to run.
        model: images in [0, 1] → scores (normalisation inside).
        fit_set, eval_set: the fitting and evaluation splits.
        out: the results folder.
        device: where to fit.
        log: called with one line per finished fit.

    Returns:
        The rows, setting by setting, objectives and radii in the config's order.

    Raises:
        InputError: ``out`` holds another configuration; a setting has no eligible image
            in one of the splits.
    """
    with folder_lock(out, "tkmia universal"):
        return _run_universal(config, model, fit_set, eval_set, out, device, log)


def _run_universal(
    config: UniversalConfig,
    model: nn.Module,
    fit_set: LabelledDataset,
    eval_set: LabelledDataset,
    out: Path,
    device: str,
    log: Callable[[str], None] | None,
) -> list[UniversalRow]:
    """:func:`run_universal` once ``out`` is locked."""
    check_out_dir(out, config.as_json())
    fit_cache = CleanScores(model, fit_set, 256, device)
    eval_cache = CleanScores(model, eval_set, 256, device)
    rows = []
    for setting in config.settings:
        data = (
            _split(fit_cache, setting, config.fit_samples, config.fit_split, device),
            _split(eval_cache, setting, config.samples, config.eval_split, device),
        )
        check_gradients(model, fit_set, [data[0].plan], device)
        for objective in config.objectives:
            for eps in config.eps:
                row = _fit_and_evaluate(config, model, setting, data, objective, eps, out)
                rows.append(row)
                if log is not None:
                    log(
                        f"  k={row.k} {row.group} {objective} eps={eps:g}: success "
                        f"{row.universal_success:.3f} on {row.attacked} "
                        f"(fit on {row.n_fit}, {row.fit_seconds:.0f} s)"
                    )
    write_rows(out / "summary.csv", rows)
    return rows


def write_rows(path: Path, rows: Sequence[UniversalRow]) -> None:
    """``summary.csv``: :data:`COLUMNS`, floats to 6 significant digits (``nan`` for NaN)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        values = [getattr(row, c) for c in COLUMNS]
        writer.writerow(
            "nan" if isinstance(v, float) and math.isnan(v) else
            (f"{v:.6g}" if isinstance(v, float) else v) for v in values
        )  # fmt: skip
    write_text_atomic(path, buf.getvalue())
