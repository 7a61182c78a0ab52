"""Loss-based attacks: minimise a per-sample objective with SGD in tanh space (SPEC §4.1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tkmia.attacks.base import Attack, Normalize
from tkmia.attacks.checks import check_number
from tkmia.attacks.layout import flat_view
from tkmia.attacks.state import SampleState
from tkmia.errors import InputError

__all__ = ["LossAttack", "SGDState", "sgd_step"]

#: torch.optim.SGD's fused kernel (one pass for weight decay, momentum and step), if any
_FUSED_SGD = getattr(torch, "_fused_sgd_", None)
_FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
#: SGD momentum of every loss-based attack, as the reference implementation
MOMENTUM = 0.9
#: the floor of a sample's first step, ``lr`` times the RMS of its first gradient over the
#: tanh-space coordinates: a sample whose first step is smaller has its learning rate
#: raised by ``MIN_STEP / (lr · rms)`` for the whole run, whatever the model's logit scale
#: and image size. Below every built-in sample's at the default ``lr`` (TkMIA 9.5e-6,
#: TkML-AP-U 2.8e-5, ML-CW-U 3.1e-5 at the least, 400 test images, k = 2 and 3), so that
#: the built-in model's runs are unchanged, bit for bit (docs/own-model.md, issue 35).
MIN_STEP = 3e-6
#: the largest factor :data:`MIN_STEP` raises a learning rate by (a flat first gradient)
MAX_BOOST = 1e4


@dataclass
class SGDState(SampleState):
    """:class:`SampleState` plus the SGD momentum buffer ``(n, C, H, W)`` of ``v`` and the
    per-sample learning-rate factor ``(n,)`` (0 until the sample's first step sets it)."""

    momentum: torch.Tensor
    boost: torch.Tensor


def sgd_step(
    w: torch.Tensor, grad: torch.Tensor, buf: torch.Tensor, lr: float, weight_decay: float
) -> torch.Tensor:
    """torch.optim.SGD's step (momentum 0.9, no dampening), in place on ``w`` and ``buf``:
    ``d = g + λw``, ``buf = 0.9·buf + d``, ``w = w − lr·buf``; returns ``w``.

    In one fused pass where PyTorch has one (bit-identical to the three separate passes).
    The fused kernel walks the three tensors' memory in lockstep, so it is given flat views
    of them when all three are dense in the same layout (standard or channels-last; it would
    make standard-layout copies of channels-last tensors, which cost more than they save);
    otherwise the separate passes, which work in any layout, are used.
    """
    if (
        _FUSED_SGD is not None
        and w.dtype in _FUSED_DTYPES
        and grad.dtype == w.dtype
        and w.stride() == grad.stride() == buf.stride()
        and flat_view(w) is not None  # then so are grad and buf: same shape and strides
    ):
        _FUSED_SGD(
            [flat_view(w)], [flat_view(grad)], [flat_view(buf)], weight_decay=weight_decay,
            momentum=MOMENTUM, lr=lr, dampening=0.0, nesterov=False,
            maximize=False, is_first_step=False,
        )  # fmt: skip
        return w
    if weight_decay > 0:
        grad = grad.add(w, alpha=weight_decay)
    buf.mul_(MOMENTUM).add_(grad)
    return w.add_(buf, alpha=-lr)


class _NeedView:
    """What :meth:`LossAttack.expected_need` hands the objective: labels and specified only."""

    def __init__(self, attack: str, labels: torch.Tensor, specified: torch.Tensor) -> None:
        self.labels, self.specified, self._attack = labels, specified, attack

    def __getattr__(self, name: str) -> object:
        raise RuntimeError(
            f"{self._attack}.objective needs state.{name}, which is not there when the "
            "samples are ordered; override expected_need"
        )


class LossAttack(Attack):
    """An attack that minimises a per-sample objective with SGD in tanh space.

    ``w`` (the state's ``v``) starts at 0; every step adds the perturbation penalty and takes
    an SGD step with momentum 0.9 (PyTorch's SGD semantics, no dampening).

    Args:
        model: as :class:`~tkmia.attacks.Attack`.
        k: as :class:`~tkmia.attacks.Attack`.
        max_iter: as :class:`~tkmia.attacks.Attack`.
        normalize: as :class:`~tkmia.attacks.Attack`.
        success: as :class:`~tkmia.attacks.Attack`.
        quantize: as :class:`~tkmia.attacks.Attack`.
        lr: the learning rate (> 0), in tanh-space units per unit of gradient.
        lam: the penalty weight λ (>= 0; 0 turns the penalty off).
        penalty: ``"w"``: ``(λ/2)‖w‖²`` (weight decay λ on w, as the reference code);
            ``"pixel"``: ``(λ/2)‖x' − x‖²`` with pixels in [0, 1].

    Raises:
        InputError: for a bad ``lr``, ``lam`` or ``penalty`` (and as :class:`Attack`).

    A subclass defines :meth:`objective` (and, for speed, :meth:`objective_grad`); it may
    project the step with :meth:`constrain`.

    **The step on any model.** A sample whose first step ``lr · rms`` (``rms``: the RMS of
    its first gradient w.r.t. ``w``) is below :attr:`min_step` (default :data:`MIN_STEP`)
    takes every step with the learning rate ``min_step / rms`` (at most
    ``MAX_BOOST · lr``), whatever the logit scale or image size of the model (a model with
    10× smaller logits, or 4× larger images, has 10× or about 4× smaller gradients per
    coordinate). Every built-in sample's first step at the default ``lr`` is above it, so
    the built-in numbers are unchanged. ``atk.min_step = 0`` gives the plain SGD of
    SPEC §4.1.
    """

    State: type[SGDState] = SGDState

    def __init__(
        self,
        model: nn.Module,
        k: int,
        lr: float,
        lam: float,
        max_iter: int,
        penalty: str = "w",
        normalize: Normalize | None = None,
        success: str = "paper",
        quantize: int | None = None,
    ) -> None:
        super().__init__(model, k, max_iter, normalize, success, quantize)
        self.lr = check_number("lr", lr)
        self.lam = check_number("lam", lam, allow_zero=True)
        if penalty not in ("w", "pixel"):
            raise InputError(f"penalty must be 'w' or 'pixel', got {penalty!r}")
        self.penalty = penalty
        #: the first-step floor (see the class docstring); 0: plain SGD
        self.min_step = MIN_STEP

    # ----------------------------------------------------------------- hooks
    def objective(self, scores: torch.Tensor, state: SampleState) -> torch.Tensor:
        """The per-sample loss ``(n,)`` to minimise, from scores ``(n, c)``."""
        raise NotImplementedError

    def objective_grad(self, scores: torch.Tensor, state: SampleState) -> torch.Tensor | None:
        """The gradient ``(n, c)`` of ``objective(scores, state).sum()`` w.r.t. the (detached)
        ``scores``, in closed form; ``None`` (the default): autograd differentiates
        :meth:`objective`. The built-in attacks give it (``tkmia.losses.*_grad``)."""
        return None

    def constrain(self, w: torch.Tensor, state: SampleState) -> torch.Tensor:
        """A projection of the stepped ``w`` ``(n, C, H, W)`` (ML-CW-U's L2 budget);
        identity here."""
        return w

    # ------------------------------------------------------------- engine
    def init_state(self, base: SampleState, clean_scores: torch.Tensor) -> SampleState:
        boost = torch.zeros(base.x0.shape[0], dtype=base.x0.dtype, device=base.x0.device)
        return self.State.extend(base, momentum=torch.zeros_like(base.x0), boost=boost)

    def expected_need(
        self, clean_scores: torch.Tensor, labels: torch.Tensor, specified: torch.Tensor
    ) -> torch.Tensor:
        """The objective at the clean scores: how far the attack has to go. Only
        ``state.labels`` and ``state.specified`` exist then; an objective that needs more
        overrides this (a :class:`RuntimeError` says so)."""
        view = _NeedView(type(self).__name__, labels, specified)
        return self.objective(clean_scores, view)  # type: ignore[arg-type]

    def step(self, x_adv: torch.Tensor, scores: torch.Tensor, state: SampleState) -> torch.Tensor:
        assert isinstance(state, SGDState)
        w = state.v
        d_scores = self.objective_grad(scores.detach(), state)
        if d_scores is None:
            total = self.objective(scores, state).sum()
        else:
            # <scores, d_scores> has gradient d_scores w.r.t. the scores, exactly; a scalar
            # output also keeps autograd from importing sympy, which passing d_scores as
            # grad_outputs does (seconds on the first call, see benchmarks/cold_start.py)
            total = (scores * d_scores).sum()
        if self.penalty == "pixel" and self.lam > 0:
            total = total + 0.5 * self.lam * (x_adv - state.x0).pow(2).sum()
        (grad,) = torch.autograd.grad(total, w)
        decay = self.lam if self.penalty == "w" else 0.0
        if self.min_step > 0:
            grad = self._boosted(grad, w.detach(), decay, state)
            decay = 0.0
        return self.constrain(sgd_step(w.detach(), grad, state.momentum, self.lr, decay), state)

    def _boosted(
        self, grad: torch.Tensor, w: torch.Tensor, decay: float, state: SGDState
    ) -> torch.Tensor:
        """``(grad + decay·w)·boost`` per sample, ``(n, C, H, W)``: the same SGD step with the
        learning rate ``lr·boost`` (momentum is linear, and a sample's boost is constant).
        A sample's boost is set at its first step: ``max(1, min_step / (lr·rms(grad)))``. Where
        it is 1 the result is ``grad + decay·w`` exactly (the built-in runs, bit for bit)."""
        rms = grad.flatten(1).norm(dim=1) / grad[0].numel() ** 0.5
        first = (self.min_step / (self.lr * rms).clamp(min=1e-30)).clamp(1.0, MAX_BOOST)
        state.boost = torch.where(state.boost > 0, state.boost, first.to(state.boost.dtype))
        if decay > 0:
            grad = grad.add(w, alpha=decay)
        return grad.mul(state.boost.view(-1, *([1] * (grad.dim() - 1))))
