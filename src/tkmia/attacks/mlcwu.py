"""ML-CW-U: the Carlini–Wagner attack extended to multi-label, untargeted."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from tkmia.attacks.base import EPS, LossAttack, _check_positive, _to_pixels
from tkmia.attacks.targets import check_targets, target_mask
from tkmia.losses import mlcw_grad, mlcw_loss


class MLCWU(LossAttack):
    """Rank every relevant label below every irrelevant one: ``[max_Y f − min_{∉Y} f]_+``.

    It ignores the top-k order. As in the paper's protocol it attacks all relevant labels;
    ``baseline_targets="specified"`` attacks only S. ``eps`` (off by default) bounds the
    perturbation: after every step ``x' − x`` is projected onto the L2 ball of radius
    ``eps`` (pixels in [0, 1], all channels), which keeps ``x'`` inside the box.
    """

    def __init__(
        self,
        model: nn.Module,
        k: int,
        lr: float,
        lam: float,
        max_iter: int,
        eps: float | None = None,
        penalty: str = "w",
        normalize: tuple[Sequence[float], Sequence[float]] | None = None,
        baseline_targets: str = "relevant",
    ) -> None:
        super().__init__(model, k, lr, lam, max_iter, penalty, normalize)
        self.eps = None if eps is None else _check_positive("eps", eps)
        self.baseline_targets = check_targets(baseline_targets)

    def objective(self, scores: torch.Tensor, ctx: dict[str, torch.Tensor]) -> torch.Tensor:
        return mlcw_loss(scores, target_mask(self.baseline_targets, ctx))

    def objective_grad(self, scores: torch.Tensor, ctx: dict[str, torch.Tensor]) -> torch.Tensor:
        return mlcw_grad(scores, target_mask(self.baseline_targets, ctx))

    def _constrain(self, w: torch.Tensor, ctx: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.eps is None:
            return w
        x0 = ctx["x0"]
        delta = _to_pixels(ctx["z0"] + w) - x0
        norm = delta.flatten(1).norm(dim=1).clamp(min=1e-12)
        scale = (self.eps / norm).clamp(max=1.0).view(-1, *([1] * (delta.dim() - 1)))
        x_new = (x0 + delta * scale).clamp(EPS, 1 - EPS)
        return torch.atanh(2 * x_new - 1) - ctx["z0"]
