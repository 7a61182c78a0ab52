"""TkMIA: the measure-imperceptible top-k attack (Sun et al., ACM MM 2023)."""

from __future__ import annotations

import torch
from torch import nn

from tkmia.attacks.base import Normalize
from tkmia.attacks.loss import LossAttack
from tkmia.attacks.state import SampleState
from tkmia.losses import tkmia_grad, tkmia_loss

__all__ = ["TkMIA"]


class TkMIA(LossAttack):
    """Hide the specified labels S from the top-k while the other relevant labels R fill it.

    Minimises ``ATk_{c−k}(max_S f − f) + ATk_k(f − min_R f)`` (SPEC §4) plus the
    perturbation penalty, with SGD in tanh space (see :class:`LossAttack` for the
    arguments). Every sample needs a relevant label outside S. The defaults of ``lr``,
    ``lam`` and ``max_iter`` are the ones tuned on the built-in benchmark's validation split
    (docs/benchmark.md, "How the defaults were chosen"); tune them for another model.

    Example::

        atk = TkMIA(model, k=3)
        result = atk(images, labels, specified)   # threshold=None: S1's success rule
    """

    needs_remaining = True

    def __init__(
        self,
        model: nn.Module,
        k: int,
        lr: float = 1e-4,
        lam: float = 1e-3,
        max_iter: int = 300,
        penalty: str = "w",
        normalize: Normalize | None = None,
        success: str = "paper",
        quantize: int | None = None,
    ) -> None:
        super().__init__(model, k, lr, lam, max_iter, penalty, normalize, success, quantize)

    def objective(self, scores: torch.Tensor, state: SampleState) -> torch.Tensor:
        return tkmia_loss(scores, state.labels, state.specified, self.k)

    def objective_grad(self, scores: torch.Tensor, state: SampleState) -> torch.Tensor:
        return tkmia_grad(scores, state.labels, state.specified, self.k)
