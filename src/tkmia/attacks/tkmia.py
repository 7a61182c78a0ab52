"""TkMIA: the measure-imperceptible top-k attack (Sun et al., ACM MM 2023)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.functional import smooth_l1_loss

from tkmia.attacks.base import Attack, Normalize
from tkmia.attacks.loss import LossAttack, SGDState
from tkmia.attacks.state import SampleState
from tkmia.attacks.stealth import permuted_target
from tkmia.losses import tkmia_grad, tkmia_loss

__all__ = ["TkMIA"]


@dataclass
class StealthState(SGDState):
    """:class:`SGDState` plus the stealth target ``(n, c)``: the clean scores permuted so
    that the specified labels leave the top-k (:func:`~tkmia.attacks.stealth.permuted_target`)."""

    target: torch.Tensor


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

    With ``success="stealth"`` (or ``"preserve+stealth"``; SPEC §7.6) the objective is
    instead ``Σ_i huber(f_i − f*_i)`` (smooth L1, β = 1), where ``f*`` is the clean scores
    permuted so that the specified labels leave the top-k and relevant labels take their
    places: every label-free statistic of ``f*`` equals the clean image's
    (docs/beyond-the-paper.md says why). Give the rule its scale first::

        atk = TkMIA(model, k=3, success="stealth")
        atk.set_stealth_reference(label_free_iqr(clean_scores_of_eligible_images, 3))
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

    def init_state(self, base: SampleState, clean_scores: torch.Tensor) -> SampleState:
        state = super().init_state(base, clean_scores)
        if not self.stealth:
            return state
        target = permuted_target(clean_scores, base.labels, base.specified, base.max_left, self.k)
        return StealthState.extend(state, target=target)

    def expected_need(
        self, clean_scores: torch.Tensor, labels: torch.Tensor, specified: torch.Tensor
    ) -> torch.Tensor:
        if self.stealth:  # the target needs the state: the clean margin of S instead
            return Attack.expected_need(self, clean_scores, labels, specified)
        return super().expected_need(clean_scores, labels, specified)

    def objective(self, scores: torch.Tensor, state: SampleState) -> torch.Tensor:
        if isinstance(state, StealthState):
            target = state.target.to(scores.dtype)
            return smooth_l1_loss(scores, target, reduction="none", beta=1.0).sum(dim=1)
        return tkmia_loss(scores, state.labels, state.specified, self.k)

    def objective_grad(self, scores: torch.Tensor, state: SampleState) -> torch.Tensor:
        if isinstance(state, StealthState):
            return (scores - state.target.to(scores.dtype)).clamp(-1.0, 1.0)
        return tkmia_grad(scores, state.labels, state.specified, self.k)
