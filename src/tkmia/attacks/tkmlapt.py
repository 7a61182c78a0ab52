"""TkML-AP-T: the targeted top-k multi-label attack of Hu et al. (ICCV 2021), SPEC §7.3."""

from __future__ import annotations

import math

import torch
from torch import nn

from tkmia.attacks.base import Normalize
from tkmia.attacks.checks import check_number
from tkmia.attacks.loss import LossAttack
from tkmia.attacks.state import SampleState
from tkmia.errors import InputError
from tkmia.losses import tkmlapt_grad, tkmlapt_loss

__all__ = ["TkMLAPT"]


class TkMLAPT(LossAttack):
    """Bring every target label into the top-k: minimises SPEC §7.3's
    ``Σ_j [t_j (f_[k] − f_j)]_+ + (τ/2) Σ_j (1 − t_j f_j)²`` (``t_j = +1`` on the targets,
    ``−1`` elsewhere: targets below the k-th score are pulled up, non-targets above it
    pushed down; ``tie = τ``, default 0, is the official code's optional tie term).

    Called as ``atk(images, labels, targets)``: ``targets`` ``(B, c)`` 0/1 holds, per
    sample, ``1 <= |T| <= k`` labels outside the relevant set Y (``tkmia.protocol.
    select_targets`` draws them as SPEC §7.3). A sample succeeds when ``T ⊆ T_k(x')`` (with
    ``threshold=t``: when at least ``t`` targets are in the top-k); ``success="preserve"``
    also asks that the top-k keeps as many relevant labels as before. The
    :class:`~tkmia.attacks.AttackResult` is the untargeted attacks' one, with
    ``specified`` the targets and ``required`` the targets that must enter; ΔN of its
    records is then minus the number of targets that entered. The other arguments are
    :class:`LossAttack`'s; the defaults of ``lr``, ``lam`` and ``max_iter`` were chosen on
    the built-in benchmark's validation split (``docs/beyond-the-paper.md``).

    Example::

        atk = TkMLAPT(model, k=3)
        result = atk(images, labels, targets)
    """

    targeted = True

    def __init__(
        self,
        model: nn.Module,
        k: int,
        lr: float = 5e-4,
        lam: float = 1e-3,
        max_iter: int = 300,
        penalty: str = "w",
        normalize: Normalize | None = None,
        success: str = "paper",
        quantize: int | None = None,
        tie: float = 0.0,
    ) -> None:
        super().__init__(model, k, lr, lam, max_iter, penalty, normalize, success, quantize)
        self.tie = check_number("tie", tie, allow_zero=True)
        if not math.isfinite(self.tie):
            raise InputError(f"tie must be a finite number >= 0, got {tie!r}")

    def objective(self, scores: torch.Tensor, state: SampleState) -> torch.Tensor:
        return tkmlapt_loss(scores, state.specified, self.k, self.tie)

    def objective_grad(self, scores: torch.Tensor, state: SampleState) -> torch.Tensor:
        return tkmlapt_grad(scores, state.specified, self.k, self.tie)
