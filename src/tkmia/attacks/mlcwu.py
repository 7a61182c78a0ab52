"""ML-CW-U: the Carlini–Wagner attack extended to multi-label, untargeted."""

from __future__ import annotations

import torch
from torch import nn

from tkmia.attacks.base import Normalize
from tkmia.attacks.checks import check_number
from tkmia.attacks.loss import LossAttack
from tkmia.attacks.pixels import EPS, to_pixels, to_tanh_space
from tkmia.attacks.state import SampleState
from tkmia.attacks.targets import check_targets, target_mask
from tkmia.losses import mlcw_grad, mlcw_loss

__all__ = ["MLCWU"]


class MLCWU(LossAttack):
    """Rank every relevant label below every irrelevant one: ``[max_Y f − min_{∉Y} f]_+``.

    It ignores the top-k order. As in the paper's protocol it attacks all relevant labels;
    ``baseline_targets="specified"`` attacks only S. ``eps`` (off by default) bounds the
    perturbation: after every step ``x' − x`` is projected onto the L2 ball of radius
    ``eps`` (pixels in [0, 1], all channels), which keeps ``x'`` inside the box. The other
    arguments are :class:`LossAttack`'s; the defaults of ``lr``, ``lam`` and ``max_iter`` are
    the ones tuned on the built-in benchmark's validation split.
    """

    def __init__(
        self,
        model: nn.Module,
        k: int,
        lr: float = 5e-4,
        lam: float = 1e-3,
        max_iter: int = 300,
        eps: float | None = None,
        penalty: str = "w",
        normalize: Normalize | None = None,
        baseline_targets: str = "relevant",
        success: str = "paper",
        quantize: int | None = None,
    ) -> None:
        super().__init__(model, k, lr, lam, max_iter, penalty, normalize, success, quantize)
        self.eps = None if eps is None else check_number("eps", eps)
        self.baseline_targets = check_targets(baseline_targets)

    def objective(self, scores: torch.Tensor, state: SampleState) -> torch.Tensor:
        return mlcw_loss(scores, target_mask(self.baseline_targets, state))

    def objective_grad(self, scores: torch.Tensor, state: SampleState) -> torch.Tensor:
        return mlcw_grad(scores, target_mask(self.baseline_targets, state))

    def constrain(self, w: torch.Tensor, state: SampleState) -> torch.Tensor:
        if self.eps is None:
            return w
        delta = to_pixels(state.z0 + w) - state.x0
        norm = delta.flatten(1).norm(dim=1).clamp(min=1e-12)
        scale = (self.eps / norm).clamp(max=1.0).view(-1, *([1] * (delta.dim() - 1)))
        x_new = (state.x0 + delta * scale).clamp(EPS, 1 - EPS)
        return to_tanh_space(x_new) - state.z0
