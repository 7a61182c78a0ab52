"""TkMIA: the measure-imperceptible top-k attack (Sun et al., ACM MM 2023)."""

from __future__ import annotations

import torch

from tkmia.attacks.loss import LossAttack
from tkmia.attacks.state import SampleState
from tkmia.losses import tkmia_grad, tkmia_loss

__all__ = ["TkMIA"]


class TkMIA(LossAttack):
    """Hide the specified labels S from the top-k while the other relevant labels R fill it.

    Minimises ``ATk_{c−k}(max_S f − f) + ATk_k(f − min_R f)`` (SPEC §4) plus the
    perturbation penalty, with SGD in tanh space (see :class:`LossAttack` for the
    arguments). Every sample needs a relevant label outside S.

    Example::

        atk = TkMIA(model, k=3, lr=1e-4, lam=1e-3, max_iter=300)
        result = atk(images, labels, specified)   # threshold=None: S1's success rule
    """

    needs_remaining = True

    def objective(self, scores: torch.Tensor, state: SampleState) -> torch.Tensor:
        return tkmia_loss(scores, state.labels, state.specified, self.k)

    def objective_grad(self, scores: torch.Tensor, state: SampleState) -> torch.Tensor:
        return tkmia_grad(scores, state.labels, state.specified, self.k)
