"""TkML-AP-U: the untargeted top-k multi-label attack of Hu et al. (ICCV 2021)."""

from __future__ import annotations

import torch
from torch import nn

from tkmia.attacks.base import Normalize
from tkmia.attacks.loss import LossAttack
from tkmia.attacks.state import SampleState
from tkmia.attacks.targets import check_targets, target_mask
from tkmia.losses import tkmlap_grad, tkmlap_loss

__all__ = ["TkMLAPU"]


class TkMLAPU(LossAttack):
    """Push every relevant label out of the top-k: minimises ``ATk_{c−k}(max_Y f − f)``.

    As in the paper's protocol it attacks all relevant labels Y while success is judged on
    the specified labels; ``baseline_targets="specified"`` attacks only S (an ablation).
    The other arguments are :class:`LossAttack`'s; the defaults of ``lr``, ``lam`` and
    ``max_iter`` are the ones tuned on the built-in benchmark's validation split.
    """

    def __init__(
        self,
        model: nn.Module,
        k: int,
        lr: float = 5e-4,
        lam: float = 1e-3,
        max_iter: int = 300,
        penalty: str = "w",
        normalize: Normalize | None = None,
        baseline_targets: str = "relevant",
        success: str = "paper",
        quantize: int | None = None,
    ) -> None:
        super().__init__(model, k, lr, lam, max_iter, penalty, normalize, success, quantize)
        self.baseline_targets = check_targets(baseline_targets)

    def objective(self, scores: torch.Tensor, state: SampleState) -> torch.Tensor:
        return tkmlap_loss(scores, target_mask(self.baseline_targets, state), self.k)

    def objective_grad(self, scores: torch.Tensor, state: SampleState) -> torch.Tensor:
        return tkmlap_grad(scores, target_mask(self.baseline_targets, state), self.k)
