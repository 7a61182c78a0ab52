"""Universal TkMIA: one perturbation ``δ`` that hides a label group from every image
(SPEC §7.4), and its untargeted baseline (the TkML-AP-U objective, as TkML-AP-Uv).

``x' = clip(x + δ, 0, 1)`` with ``‖δ‖₂ <= eps`` (pixels on the [0, 1] scale, the norm over
all ``C·H·W`` entries). :meth:`Universal.fit` minimises the mean objective over
minibatches of the fitting images with projected normalised gradient descent,

    ``δ ← Π_eps(δ − lr · eps · g / ‖g‖₂)``,  ``g = ∇_δ mean_batch loss(f(clip(x + δ)))``,

projecting onto the eps-ball after every step. ``δ`` is the whole state of the fit (no
momentum), so a fit resumed from the ``δ`` saved after an epoch continues exactly as the
uninterrupted one; the minibatches of epoch ``e`` are a permutation drawn from NumPy's
generator of ``(seed, e)``, which makes the fit deterministic for a seed.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from tkmia.attacks.base import Normalize, _eval_mode
from tkmia.attacks.checks import check_int, check_number
from tkmia.attacks.inputs import check_batch, check_like_first, required_removals
from tkmia.attacks.result import AttackResult
from tkmia.errors import InputError, MissingFileError
from tkmia.files import atomic_path, write_text_atomic
from tkmia.losses import tkmia_loss, tkmlap_loss
from tkmia.metrics import (
    ap_at_k,
    ndcg_at_k,
    precision_at_k,
    removed_count,
    topk_accuracy,
)
from tkmia.normalize import Normalized
from tkmia.outputs import as_logits

__all__ = [
    "OBJECTIVES", "Universal", "UniversalResult", "check_delta", "load_delta", "project_l2",
]  # fmt: skip

#: objective name → per-sample loss ``(scores (n, c), labels, specified, k) -> (n,)``: TkMIA
#: (hide ``S``, promote ``R``), TkML-AP-U (push all of ``Y`` out: the untargeted baseline)
OBJECTIVES: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]] = {
    "tkmia": tkmia_loss,
    "tkmlapu": lambda scores, labels, specified, k: tkmlap_loss(scores, labels, k),
}
#: sidecar keys that must match for a saved δ to be resumed
_FIT_KEYS = ("k", "eps", "objective", "lr", "epochs", "batch_size", "seed", "shape", "n_fit")

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
_MEASURES = {
    "tkacc": topk_accuracy,
    "p_at_k": precision_at_k,
    "map_at_k": ap_at_k,
    "ndcg_at_k": ndcg_at_k,
}


def project_l2(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """``delta`` projected onto the L2 ball of radius ``eps`` (scaled down when outside)."""
    norm = float(delta.norm())
    return delta * (eps / norm) if norm > eps else delta


def _delta_fix(path: Path) -> str:
    return (
        f"delete {str(path)!r} and its .json sidecar (and the fit's records) and rerun the "
        "same command to fit δ again"
    )


def load_delta(path: Path) -> tuple[torch.Tensor, dict[str, Any]]:
    """A saved δ ``(C, H, W)`` and its metadata (the JSON sidecar, with the epoch of the
    safetensors file itself, which is written first and so is never behind). Only the
    files' form is checked here; :func:`check_delta` checks δ against a fit.

    Raises:
        MissingFileError: ``path`` or its ``.json`` sidecar does not exist.
        InputError: not a safetensors file with a ``delta`` tensor and an integer
            ``epoch``, or a sidecar that is not a JSON object (the fix named).
    """
    sidecar = path.with_suffix(".json")
    for p in (path, sidecar):
        if not p.is_file():
            raise MissingFileError(f"universal perturbation file {str(p)!r} not found")
    try:
        with safe_open(str(path), framework="pt") as fh:
            if "delta" not in fh.keys():  # noqa: SIM118 (safe_open has no __contains__)
                raise InputError(f"δ file {str(path)!r} holds no 'delta' tensor")
            delta, epoch_text = fh.get_tensor("delta"), (fh.metadata() or {}).get("epoch")
    except InputError as err:
        raise InputError(f"{err}; {_delta_fix(path)}") from None
    except Exception as err:  # safetensors' own error types, or an unreadable file
        raise InputError(
            f"δ file {str(path)!r} is not a valid safetensors file ({type(err).__name__}); "
            f"{_delta_fix(path)}"
        ) from None
    if not (isinstance(epoch_text, str) and epoch_text.isdigit()):
        raise InputError(
            f"δ file {str(path)!r}: its epoch {epoch_text!r} is not an integer; {_delta_fix(path)}"
        )
    try:
        meta = json.loads(sidecar.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        meta = None
    if not isinstance(meta, dict):
        raise InputError(f"δ sidecar {str(sidecar)!r} is not a JSON object; {_delta_fix(path)}")
    return delta, meta | {"epoch": int(epoch_text)}


#: how far a saved δ's norm may exceed eps (float32 rounding of the projection)
NORM_TOLERANCE = 1e-4


def check_delta(
    path: Path, delta: torch.Tensor, meta: Mapping[str, Any], shape: tuple[int, ...],
    eps: float, epochs: int,
) -> None:  # fmt: skip
    """Check a δ read back before anything is computed from it: a floating tensor of the
    images' ``shape``, finite, ``‖δ‖₂ <= eps · (1 + NORM_TOLERANCE)``, saved after epoch
    ``0..epochs``, with a finite ``fit_seconds`` >= 0.

    Raises:
        InputError: what is wrong, naming the file and the fix (delete and refit).
    """
    problem = ""
    epoch, seconds = meta.get("epoch"), meta.get("fit_seconds")
    if not delta.is_floating_point():
        problem = f"its tensor is of type {delta.dtype}, not floating point"
    elif tuple(delta.shape) != tuple(shape):
        problem = f"its shape {tuple(delta.shape)} is not the images' {tuple(shape)}"
    elif not bool(torch.isfinite(delta).all()):
        problem = "it holds NaN or infinite values"
    elif float(delta.double().norm()) > eps * (1 + NORM_TOLERANCE):
        problem = f"its L2 norm {float(delta.double().norm()):.6g} exceeds eps = {eps:g}"
    elif not isinstance(epoch, int) or not 0 <= epoch <= epochs:
        problem = f"its epoch {epoch!r} is not an integer in 0..{epochs} (--epochs)"
    elif (
        not isinstance(seconds, (int, float)) or isinstance(seconds, bool)
        or not math.isfinite(seconds) or seconds < 0
    ):  # fmt: skip
        problem = f"its sidecar's fit_seconds {seconds!r} is not a number >= 0"
    if problem:
        raise InputError(f"δ file {str(path)!r}: {problem}; {_delta_fix(path)}")


@dataclass
class UniversalResult(AttackResult):
    """:class:`AttackResult` of :meth:`Universal.evaluate`, with the relevant labels.

    Attributes:
        labels: ``(B, c)`` bool, the relevant labels Y.
        k: the top-k the measures are taken at.
    """

    labels: torch.Tensor | None = None
    k: int | None = None

    @property
    def measures(self) -> dict[str, torch.Tensor]:
        """Per image ``(B,)``: ``<measure>_clean`` and ``<measure>_adv`` for TkAcc, P@k,
        AP@k and NDCG@k (SPEC §2, ``k`` the evaluation's), and ``delta_n`` (ΔN)."""
        assert self.labels is not None and self.k is not None
        out = {"delta_n": removed_count(self.clean_scores, self.adv_scores, self.specified, self.k)}
        for name, fn in _MEASURES.items():
            out[f"{name}_clean"] = fn(self.clean_scores, self.labels, self.k)
            out[f"{name}_adv"] = fn(self.adv_scores, self.labels, self.k)
        return out


class Universal:
    """One image-agnostic perturbation against a top-k multi-label model (SPEC §7.4).

    Args:
        model: images ``(B, C, H, W)`` → scores ``(B, c)``; run in eval mode (its own mode is
            given back afterwards).
        k: the top-k size, ``1 <= k < c``.
        objective: ``"tkmia"`` (hide ``S``, let ``R = Y \\ S`` fill the top-k) or
            ``"tkmlapu"`` (push every relevant label out: the universal untargeted baseline).
        eps: the L2 radius of δ (pixels on the [0, 1] scale), ``> 0``.
        lr: the step length as a fraction of ``eps`` (a step moves δ by ``lr · eps`` in L2).
        epochs: passes over the fitting images.
        batch_size: images per minibatch (and per forward pass when evaluating).
        seed: draws the minibatch order of every epoch.
        normalize: optional ``(mean, std)`` per channel of the model's input.

    Raises:
        InputError: a value out of range or an unknown objective.
    """

    def __init__(
        self,
        model: nn.Module,
        k: int,
        objective: str = "tkmia",
        eps: float = 4.0,
        lr: float = 0.1,
        epochs: int = 10,
        batch_size: int = 64,
        seed: int = 0,
        normalize: Normalize | None = None,
    ) -> None:
        if objective not in OBJECTIVES:
            raise InputError(f"objective must be one of {list(OBJECTIVES)}, got {objective!r}")
        self.k, self.objective = check_int("k", k, 1), objective
        self.eps, self.lr = check_number("eps", eps), check_number("lr", lr)
        self.epochs = check_int("epochs", epochs, 1)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.seed = check_int("seed", seed, 0)
        model = as_logits(model)
        self.model = model if normalize is None else Normalized(model, *normalize)
        #: wall seconds of the last :meth:`fit` (this process's part when it resumed)
        self.fit_seconds = 0.0

    # ------------------------------------------------------------------ inputs
    def _gather(self, data: torch.Tensor | Iterable[Batch], *rest: Any) -> Batch:
        """One ``(images, labels, specified)`` triple from a tensor triple or an iterable of
        batches, validated (same image shape and classes throughout)."""
        batches = [(data, *rest)] if isinstance(data, torch.Tensor) else list(data)
        if not batches:
            raise InputError("no images given (an empty iterable of batches)")
        name = "TkMIA" if self.objective == "tkmia" else None
        for i, item in enumerate(batches):
            if not isinstance(item, (tuple, list)) or len(item) != 3:
                raise InputError("every batch must be a triple (images, labels, specified)")
            check_batch(item[0], item[1], item[2], self.k, name)
            if i:
                check_like_first(item[0], item[1], batches[0][0], batches[0][1].shape[1])
        images = torch.cat([b[0].detach() for b in batches])
        if images.shape[0] == 0:
            raise InputError("no images given: a group with no eligible image cannot be fitted")
        labels = torch.cat([b[1].to(images.device).bool() for b in batches])
        specified = torch.cat([b[2].to(images.device).bool() for b in batches])
        return images, labels, specified

    def _check_delta(self, delta: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(delta, torch.Tensor) or tuple(delta.shape) != tuple(images.shape[1:]):
            raise InputError(
                f"delta must have the images' shape (C, H, W) = {tuple(images.shape[1:])}, "
                f"got {tuple(delta.shape) if isinstance(delta, torch.Tensor) else type(delta)}"
            )
        return delta.to(images.device, images.dtype)

    # --------------------------------------------------------------------- fit
    def loss(self, images: torch.Tensor, labels: torch.Tensor, specified: torch.Tensor,
             delta: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """The per-image training objective at ``clip(images + delta)``: ``(B,)``."""
        scores = self.model((images + delta).clamp(0, 1))
        return OBJECTIVES[self.objective](scores, labels.bool(), specified.bool(), self.k)

    def _step(self, delta: torch.Tensor, batch: Batch) -> torch.Tensor:
        d = delta.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(self.loss(*batch, d).mean(), d)
        step = grad / grad.norm().clamp(min=1e-12)
        return project_l2(delta - (self.lr * self.eps) * step, self.eps)

    def fit(
        self,
        data: torch.Tensor | Iterable[Batch],
        labels: torch.Tensor | None = None,
        specified: torch.Tensor | None = None,
        *,
        checkpoint: Path | None = None,
        meta: Mapping[str, Any] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> torch.Tensor:
        """Fit δ on the images (all kept in memory; a few thousand are plenty).

        Args:
            data: images ``(N, C, H, W)`` in [0, 1] (then ``labels`` and ``specified``
                ``(N, c)`` 0/1 are needed too), or an iterable of ``(images, labels,
                specified)`` batches. ``specified`` is S per image (non-empty, ⊆ Y; for
                TkMIA some relevant label must lie outside it).
            checkpoint: a ``.safetensors`` path: δ and the epoch counter are saved there
                (with a ``.json`` sidecar) after every epoch, and a fit that finds it resumes
                from it (its configuration must match).
            meta: more sidecar entries (``model``, ``dataset``, ``group``, ...).
            progress: called with the epoch number after each epoch.

        Returns:
            δ ``(C, H, W)`` with ``‖δ‖₂ <= eps``.

        Raises:
            InputError: bad images, labels or specified sets; no image; a checkpoint
                written with another configuration.
        """
        images, labels_, specified_ = self._gather(data, labels, specified)
        fit_meta = {
            "k": self.k, "eps": self.eps, "objective": self.objective, "lr": self.lr,
            "epochs": self.epochs, "batch_size": self.batch_size, "seed": self.seed,
            "shape": list(images.shape[1:]), "n_fit": images.shape[0],
        }  # fmt: skip
        delta, start, spent = torch.zeros_like(images[0]), 0, 0.0
        if checkpoint is not None and checkpoint.is_file():
            delta, start, spent = self._resume(checkpoint, fit_meta, images)
        began = time.perf_counter()
        n = images.shape[0]
        with _eval_mode(self.model):
            for epoch in range(start, self.epochs):
                order = torch.from_numpy(np.random.default_rng([self.seed, epoch]).permutation(n))
                for i in range(0, n, self.batch_size):
                    rows = order[i : i + self.batch_size].to(images.device)
                    delta = self._step(delta, (images[rows], labels_[rows], specified_[rows]))
                if checkpoint is not None:
                    seconds = spent + time.perf_counter() - began
                    info = dict(meta or {}) | fit_meta | {"fit_seconds": seconds}
                    _save(checkpoint, delta, epoch + 1, info)
                if progress is not None:
                    progress(epoch + 1)
        self.fit_seconds = time.perf_counter() - began
        return delta.detach()

    def _resume(
        self, path: Path, fit_meta: dict[str, Any], images: torch.Tensor
    ) -> tuple[torch.Tensor, int, float]:
        delta, saved = load_delta(path)
        differ = [key for key in _FIT_KEYS if saved.get(key) != fit_meta[key]]
        if differ:
            raise InputError(
                f"{str(path)!r} was fitted with other settings ({', '.join(differ)}: "
                f"{[saved.get(key) for key in differ]} vs {[fit_meta[key] for key in differ]}); "
                "remove it or choose another output folder"
            )
        check_delta(path, delta, saved, tuple(images.shape[1:]), self.eps, self.epochs)
        return self._check_delta(delta, images), saved["epoch"], float(saved["fit_seconds"])

    # ---------------------------------------------------------------- evaluate
    @torch.no_grad()
    def evaluate(
        self,
        delta: torch.Tensor,
        images: torch.Tensor,
        labels: torch.Tensor,
        specified: torch.Tensor,
    ) -> UniversalResult:
        """Apply δ to every image and judge it with the S1 rule (SPEC §5).

        Args:
            delta: ``(C, H, W)``, the images' shape.
            images: ``(B, C, H, W)`` in [0, 1]; labels, specified: ``(B, c)`` 0/1; every image
                needs a specified label in its clean top-k (S1 eligibility).

        Returns:
            A :class:`UniversalResult`: ``adv_images = clip(images + δ, 0, 1)``, ``success``
            (every specified label in the clean top-k has left it: ``ΔN >= required``), the
            clean and adversarial scores, ``specified``, ``required``, ``iterations``
            (the epochs of the fit, the same for every image), ``labels`` and the
            per-image ``measures`` before and after.

        Raises:
            InputError: bad inputs, a δ of another shape, or an ineligible image.
        """
        images, labels_, specified_ = self._gather(images, labels, specified)
        delta = self._check_delta(delta, images)
        adv = (images + delta).clamp(0, 1)
        with _eval_mode(self.model):
            clean, adv_scores = (
                torch.cat([self.model(x[i : i + self.batch_size])
                           for i in range(0, x.shape[0], self.batch_size)])
                for x in (images, adv)
            )  # fmt: skip
        required, _ = required_removals(clean, specified_, self.k, None)
        success = removed_count(clean, adv_scores, specified_, self.k) >= required
        b = images.shape[0]
        return UniversalResult(
            adv_images=adv,
            success=success,
            iterations=torch.full((b,), self.epochs, dtype=torch.long, device=images.device),
            clean_scores=clean,
            adv_scores=adv_scores,
            specified=specified_,
            required=required,
            labels=labels_,
            k=self.k,
        )


def _save(path: Path, delta: torch.Tensor, epoch: int, meta: Mapping[str, Any]) -> None:
    """δ to ``path`` (safetensors, the epoch in its metadata), then the JSON sidecar; both
    atomically, the tensor first, so the sidecar's epoch is never ahead of it."""
    with atomic_path(path) as tmp:
        save_file({"delta": delta.detach().cpu().contiguous()}, str(tmp), {"epoch": str(epoch)})
    info = {key: (None if isinstance(v, float) and math.isnan(v) else v) for key, v in meta.items()}
    write_text_atomic(path.with_suffix(".json"), json.dumps(info | {"epoch": epoch}, indent=1))
