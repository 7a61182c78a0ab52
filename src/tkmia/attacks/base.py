"""The attack engine shared by every attack (SPEC §4.1).

The engine owns everything but the objective: input validation, the model's input
normalisation, the tanh change of variables, per-sample success checks and early exit,
and the bookkeeping of results. An attack subclass supplies only its update rule
(:class:`Attack`) or, for loss-based attacks, only its objective (:class:`LossAttack`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from tkmia.errors import InputError
from tkmia.metrics import topk_mask

__all__ = ["Attack", "AttackResult", "LossAttack"]

#: pixels are clamped to [EPS, 1 - EPS] before atanh, so that w = 0 gives back x within EPS.
EPS = 1e-6


@dataclass
class AttackResult:
    """What an attack returns for a batch of B images with c labels.

    Attributes:
        adv_images: ``(B, C, H, W)`` in [0, 1]: the first iterate that met the success
            rule, or the last evaluated iterate for samples that never did.
        success: ``(B,)`` bool.
        iterations: ``(B,)`` long: optimisation steps taken before the returned iterate.
        clean_scores: ``(B, c)`` model scores of the clean images.
        adv_scores: ``(B, c)`` model scores of ``adv_images``.
        specified: ``(B, c)`` bool, the labels the attack had to hide.
        required: ``(B,)`` long, the ΔN each sample needed for success.
    """

    adv_images: torch.Tensor
    success: torch.Tensor
    iterations: torch.Tensor
    clean_scores: torch.Tensor
    adv_scores: torch.Tensor
    specified: torch.Tensor
    required: torch.Tensor


class _NormalizedModel(nn.Module):
    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean.to(x)) / self.std.to(x))


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InputError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def _check_positive(name: str, value: object, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (value >= 0 if allow_zero else value > 0) and value == value
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise InputError(f"{name} must be a number {bound}, got {value!r}")
    return float(value)


def _to_pixels(z: torch.Tensor) -> torch.Tensor:
    """Inverse of the change of variables: tanh space to pixels in [0, 1]."""
    return (torch.tanh(z) + 1) / 2


class Attack:
    """Base class: a batched, per-sample early-exit attack on a top-k multi-label model.

    Args:
        model: maps images ``(B, C, H, W)`` to scores ``(B, c)``; put in eval mode.
        k: the top-k the attacked system reports, ``1 <= k < c``.
        max_iter: at most this many update steps per sample.
        normalize: optional ``(mean, std)`` per channel, applied inside the attack so that
            callers always pass (and get back) pixels in [0, 1].

    Calling the attack: ``atk(images, labels, specified, threshold=None)``:
        images: ``(B, C, H, W)`` float in [0, 1].
        labels: ``(B, c)`` 0/1 ground truth (the relevant set Y).
        specified: ``(B, c)`` 0/1, a non-empty subset S of the relevant labels to hide.
        threshold: ``None`` for S1's rule (every specified label in the clean top-k must
            leave it, ``ΔN >= |S ∩ T_k(x)|``), or an int ``t`` (``ΔN >= t``).

    Subclasses implement :meth:`_update` (and may extend :meth:`_prepare`/:meth:`_finished`).
    Samples are independent: a sample's result never depends on its batch mates, and a
    sample that succeeds leaves the batch.
    """

    #: TkMIA needs a relevant label outside S to promote; baselines do not.
    needs_remaining: bool = False

    def __init__(
        self,
        model: nn.Module,
        k: int,
        max_iter: int,
        normalize: tuple[Sequence[float], Sequence[float]] | None = None,
    ) -> None:
        self.k = _check_int("k", k, 1)
        self.max_iter = _check_int("max_iter", max_iter, 1)
        model.eval()
        if normalize is not None:
            if len(normalize) != 2:
                raise InputError("normalize must be a pair (mean, std) of per-channel sequences")
            if any(float(s) <= 0 for s in normalize[1]):
                raise InputError(f"normalize std must be positive, got {list(normalize[1])}")
            model = _NormalizedModel(model, *normalize).eval()
        self.model = model

    # ----------------------------------------------------------------- hooks
    def _prepare(self, clean_scores: torch.Tensor, ctx: dict[str, torch.Tensor]) -> None:
        """Add per-sample tensors (first dimension B) to ``ctx`` before the loop."""

    def _finished(self, scores: torch.Tensor, ctx: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(n,)`` bool: samples the attack gives up on (besides success and max_iter)."""
        return torch.zeros(scores.shape[0], dtype=torch.bool, device=scores.device)

    def _update(
        self,
        z: torch.Tensor,
        x_adv: torch.Tensor,
        scores: torch.Tensor,
        ctx: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """One step for the ``n`` active samples; returns the new ``v`` ``(n, C, H, W)``.

        ``z = z0 + v`` is the tanh-space point (a graph leaf is ``ctx["v"]``), ``x_adv``
        its pixels and ``scores = model(x_adv)``, all still attached to the graph.
        ``ctx`` holds the active samples' rows of every per-sample tensor; an attack keeps
        its state there (updated in place or replaced), and the engine drops the rows of
        samples that finish.
        """
        raise NotImplementedError

    # ---------------------------------------------------------------- engine
    @torch.no_grad()
    def _validate(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        specified: torch.Tensor,
    ) -> None:
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
            raise InputError(f"images must be a tensor of shape (B, C, H, W), got {shape}")
        if not images.is_floating_point():
            raise InputError(f"images must be floating point in [0, 1], got dtype {images.dtype}")
        if not bool(torch.isfinite(images).all()):
            raise InputError("images contain NaN or infinite values")
        if images.numel() and (images.min() < 0 or images.max() > 1):
            raise InputError(
                f"images must lie in [0, 1], got values in [{float(images.min()):.4g}, "
                f"{float(images.max()):.4g}]; pass un-normalised pixels and give the model's "
                "mean/std as normalize=(mean, std)"
            )
        b = images.shape[0]
        for name, mask in (("labels", labels), ("specified", specified)):
            if not isinstance(mask, torch.Tensor) or mask.dim() != 2 or mask.shape[0] != b:
                shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask)
                raise InputError(f"{name} must have shape (B, c) with B = {b}, got {shape}")
            if not bool(((mask == 0) | (mask == 1)).all()):
                raise InputError(f"{name} must contain only 0 and 1")
        if labels.shape != specified.shape:
            raise InputError(
                f"labels and specified must have the same shape, got {tuple(labels.shape)} "
                f"and {tuple(specified.shape)}"
            )
        c = labels.shape[1]
        if not self.k < c:
            raise InputError(f"k must satisfy 1 <= k < c = {c}, got k = {self.k}")
        lab, spec = labels.bool(), specified.bool()
        if bool((spec & ~lab).any()):
            bad = torch.nonzero((spec & ~lab).any(dim=1)).flatten().tolist()
            raise InputError(f"specified must be a subset of labels; not so for samples {bad[:10]}")
        if bool((spec.sum(dim=1) == 0).any()):
            bad = torch.nonzero(spec.sum(dim=1) == 0).flatten().tolist()
            raise InputError(f"specified must be non-empty for every sample; empty for {bad[:10]}")
        if self.needs_remaining and bool(((lab & ~spec).sum(dim=1) == 0).any()):
            bad = torch.nonzero((lab & ~spec).sum(dim=1) == 0).flatten().tolist()
            raise InputError(
                f"{type(self).__name__} needs at least one relevant label outside specified "
                f"to take their place; samples {bad[:10]} have none"
            )

    def _required(
        self, clean_scores: torch.Tensor, specified: torch.Tensor, threshold: int | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample ``(ΔN needed, |S ∩ T_k(x)|)``, both ``(B,)`` long."""
        in_top = (topk_mask(clean_scores, self.k) & specified).sum(dim=1)
        if threshold is None:
            required = in_top
        else:
            _check_int("threshold", threshold, 1)
            required = torch.full_like(in_top, threshold)
        short = required > in_top
        if bool((in_top == 0).any()) or bool(short.any()):
            bad = torch.nonzero(short | (in_top == 0)).flatten().tolist()
            raise InputError(
                f"samples {bad[:10]} have fewer specified labels in their clean top-{self.k} "
                "than the success rule needs to remove (ΔN can be at most |S ∩ T_k(x)|); "
                "select specified labels from the clean top-k or lower the threshold"
            )
        return required, in_top

    def __call__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        specified: torch.Tensor,
        threshold: int | None = None,
    ) -> AttackResult:
        self._validate(images, labels, specified)
        device = images.device
        labels = labels.to(device).bool()
        specified = specified.to(device).bool()
        with torch.no_grad():
            clean_scores = self.model(images)
        if clean_scores.dim() != 2 or clean_scores.shape != labels.shape:
            raise InputError(
                f"the model must return scores of shape (B, c) = {tuple(labels.shape)}, "
                f"got {tuple(clean_scores.shape)}"
            )
        clean_scores = clean_scores.detach()
        required, in_top = self._required(clean_scores, specified, threshold)
        b = images.shape[0]
        x0 = images.detach()
        ctx: dict[str, torch.Tensor] = {
            "x0": x0,
            "z0": torch.atanh(2 * x0.clamp(EPS, 1 - EPS) - 1),
            "v": torch.zeros_like(x0),
            "labels": labels,
            "specified": specified,
            "max_left": in_top - required,
        }
        self._prepare(clean_scores, ctx)
        adv_images = x0.clone()
        adv_scores = clean_scores.clone()
        success = torch.zeros(b, dtype=torch.bool, device=device)
        iterations = torch.zeros(b, dtype=torch.long, device=device)
        active = torch.arange(b, device=device)
        sub = dict(ctx)
        for it in range(self.max_iter + 1):
            v = sub["v"].detach().requires_grad_(True)
            sub["v"] = v
            with torch.enable_grad():
                z = sub["z0"] + v
                x_adv = _to_pixels(z)
                scores = self.model(x_adv)
            left = (topk_mask(scores.detach(), self.k) & sub["specified"]).sum(dim=1)
            ok = left <= sub["max_left"]
            done = ok | self._finished(scores.detach(), sub)
            if it == self.max_iter:
                done = torch.ones_like(done)
            any_done = bool(done.any())
            if any_done:
                rows = active[done]
                adv_images[rows] = x_adv.detach()[done]
                adv_scores[rows] = scores.detach()[done]
                success[rows] = ok[done]
                iterations[rows] = it
                if bool(done.all()):
                    break
            with torch.enable_grad():
                sub["v"] = self._update(z, x_adv, scores, sub).detach()
            if any_done:
                keep = ~done
                active = active[keep]
                sub = {name: t[keep] for name, t in sub.items()}
        return AttackResult(
            adv_images=adv_images,
            success=success,
            iterations=iterations,
            clean_scores=clean_scores,
            adv_scores=adv_scores,
            specified=specified,
            required=required,
        )


class LossAttack(Attack):
    """An attack that minimises a per-sample objective with SGD in tanh space.

    ``w`` (the engine's ``v``) starts at 0; every step adds the perturbation penalty —
    ``penalty="w"``: ``(λ/2)‖w‖²`` (weight decay λ on w, as the reference code);
    ``penalty="pixel"``: ``(λ/2)‖x' − x‖²`` — and takes an SGD step with momentum 0.9
    (PyTorch's SGD semantics, no dampening) and learning rate ``lr``.
    """

    momentum = 0.9

    def __init__(
        self,
        model: nn.Module,
        k: int,
        lr: float,
        lam: float,
        max_iter: int,
        penalty: str = "w",
        normalize: tuple[Sequence[float], Sequence[float]] | None = None,
    ) -> None:
        super().__init__(model, k, max_iter, normalize)
        self.lr = _check_positive("lr", lr)
        self.lam = _check_positive("lam", lam, allow_zero=True)
        if penalty not in ("w", "pixel"):
            raise InputError(f"penalty must be 'w' or 'pixel', got {penalty!r}")
        self.penalty = penalty

    def objective(self, scores: torch.Tensor, ctx: dict[str, torch.Tensor]) -> torch.Tensor:
        """The per-sample loss ``(n,)`` to minimise, from scores ``(n, c)``."""
        raise NotImplementedError

    def _prepare(self, clean_scores: torch.Tensor, ctx: dict[str, torch.Tensor]) -> None:
        ctx["momentum_buffer"] = torch.zeros_like(ctx["x0"])

    def _update(self, z, x_adv, scores, ctx):
        w = ctx["v"]
        loss = self.objective(scores, ctx).sum()
        if self.penalty == "pixel" and self.lam > 0:
            loss = loss + 0.5 * self.lam * (x_adv - ctx["x0"]).pow(2).sum()
        (grad,) = torch.autograd.grad(loss, w)
        if self.penalty == "w":
            grad = grad + self.lam * w.detach()
        buf = ctx["momentum_buffer"].mul_(self.momentum).add_(grad)
        return self._constrain(w.detach() - self.lr * buf, ctx)

    def _constrain(self, w: torch.Tensor, ctx: dict[str, torch.Tensor]) -> torch.Tensor:
        """Hook for a projection after the step (ML-CW-U's L2 budget); identity here."""
        return w
