"""kFool: the DeepFool-style top-k multi-label attack of Tursynbek et al. (2022)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from tkmia.attacks.base import Attack, Normalize
from tkmia.attacks.checks import check_number
from tkmia.attacks.state import SampleState
from tkmia.attacks.targets import check_targets, target_mask
from tkmia.errors import InputError
from tkmia.metrics import topk_indices

__all__ = ["LINEARIZE", "KFool", "KFoolState"]

#: where kFool takes its gradients: the pixels (the paper's code) or the tanh-space variable
LINEARIZE = ("image", "tanh")


@dataclass
class KFoolState(SampleState):
    """:class:`SampleState` plus kFool's own fields.

    Attributes:
        anchor: ``(n, 1)`` long, ``m``: the best target label on the clean image.
        r: ``(n, C, H, W)`` the accumulated step (``v = (1 + overshoot)·r``).
        stalled: ``(n,)`` bool, the last step moved no pixel, nor will any later one.
    """

    anchor: torch.Tensor
    r: torch.Tensor
    stalled: torch.Tensor


class KFool(Attack):
    """A linearised step that pushes the best relevant label ``m`` out of the top-k.

    ``m = argmax_{j∈Y} f_j(x)`` on the clean image (fixed for the run; ties: the lowest
    index). Each iteration, for every label ``p`` of the current top-(k+1) other than ``m``,
    with ``g_p = ∇(f_p − f_m)`` and ``d_p = f_p − f_m``: ``w += g_p/‖g_p‖``,
    ``s += d_p/‖g_p‖``; then ``r += |s|·w/‖w‖`` and
    ``x' = (tanh(atanh(2x − 1) + (1 + overshoot)·r) + 1) / 2`` (SPEC §4.2).

    Args:
        model: as :class:`~tkmia.attacks.Attack`.
        k: as :class:`~tkmia.attacks.Attack`.
        max_iter: as :class:`~tkmia.attacks.Attack`.
        normalize: as :class:`~tkmia.attacks.Attack`.
        success: as :class:`~tkmia.attacks.Attack`.
        quantize: as :class:`~tkmia.attacks.Attack`.
        linearize: where the gradients ``g_p`` are taken. ``"image"`` (default, the paper's
            reference code ``kfool_global``): with respect to the pixels ``x'`` in [0, 1]
            that the model sees, while the step ``r`` is added in tanh space.
            ``"tanh"``: with respect to the tanh-space variable in which ``r`` lives, so
            the linearisation and the step use the same coordinates (on a model that is
            linear in that variable, one step crosses the boundary exactly).
        overshoot: scales the accumulated step (>= 0, default 0 as the reference), so that
            the linearised boundary is crossed rather than merely reached, as in DeepFool.
        baseline_targets: ``"relevant"`` (the paper: all of Y) or ``"specified"`` (S only).
        stop_when_stalled: stop a sample whose steps can no longer move a pixel (below).

    Raises:
        InputError: for a bad ``linearize``, ``overshoot`` or ``baseline_targets`` (and as
            :class:`Attack`).

    **The reference loop, and where this one differs.** As in ``kfool_global``: the success
    rule is checked on every iterate before the next step (the clean image never succeeds
    on an eligible sample), so ``max_iter`` bounds the number of steps and the final
    iterate is judged too; the run stops when no target is left in the top-k (checked
    with success, on the same iterate); a label whose gradient equals the anchor's
    (``g_p = 0``, in particular ``p = m``) is skipped, adding to neither ``w`` nor ``s``.
    Differences, each for a reason:

    - *Iteration count*: the number of steps taken. The reference prints ``loop_i + 1``,
      which is that on success but ``max_iter + 1`` for a run that used all its steps.
    - *Zero norms*: the reference divides by ``‖g_p‖`` and ``‖w‖`` unguarded. A label
      whose ``‖g_p‖`` is 0 in floating point is skipped here (the reference skips exact
      equality only; they differ when the norm underflows, where it would divide by 0),
      and ``w = 0`` gives a zero step where the reference's ``0/0`` turns the image into
      NaN for the rest of the run.
    - *Ties among scores*: the top-(k+1) slots come from :func:`tkmia.metrics.topk_indices`,
      one order for both the gradient and the label of a slot; the reference takes the
      gradients in ``topk``'s order and the labels in ``argsort``'s, which agree except
      between exactly equal scores.
    - *The pixel map*: ``x' = σ(2z)``, with pixels below 2⁻²⁵ set to 0, and the clean image
      clamped to [1e-6, 1 − 1e-6] before ``atanh``, as every attack here
      (:mod:`tkmia.attacks.pixels`); the reference's box is ``[boxmin, boxmax]``, which
      with the box [0, 1] is the same map up to float32 rounding.
    - *Batching*: samples run together, a finished one leaving the batch; a sample's
      result does not depend on its batch mates (the reference runs one image at a time).

    **Stalled samples stop early** (``stop_when_stalled=True``): kFool's only state is
    ``r`` and its step depends on the image alone, so a sample whose step moves no pixel
    (it is 0 wherever the pixel is not already saturated at 1, for a positive component,
    or at 0, for a negative one) keeps its image, hence the step's direction, for the
    rest of the run: ``r`` grows but ``x'`` never changes. The next evaluation (the same
    image) ends it. Its image, scores and success are exactly those of running on to
    ``max_iter``; only its iteration count is smaller. With ``linearize="tanh"`` this
    happens once all its pixels are saturated (the map's derivative, hence every
    ``g_p``, is 0 there); with ``"image"``, once every pixel the step pushes is saturated
    in that direction (the reference runs on to ``max_iter`` with the same image).

    The batch's per-label gradients come from one backward pass per top-(k+1) slot (k+1
    passes per iteration; k on the CPU when ``m`` is in every sample's top-(k+1), as its own
    slot contributes nothing), never from a loop over images. An attack on a sample stops
    on success, when no target label is left in the top-k, or at ``max_iter``.
    """

    def __init__(
        self,
        model: nn.Module,
        k: int,
        max_iter: int = 300,
        overshoot: float = 0.0,
        normalize: Normalize | None = None,
        baseline_targets: str = "relevant",
        stop_when_stalled: bool = True,
        linearize: str = "image",
        success: str = "paper",
        quantize: int | None = None,
    ) -> None:
        super().__init__(model, k, max_iter, normalize, success, quantize)
        if linearize not in LINEARIZE:
            raise InputError(f"linearize must be one of {LINEARIZE}, got {linearize!r}")
        self.linearize = linearize
        self.overshoot = check_number("overshoot", overshoot, allow_zero=True)
        if not math.isfinite(self.overshoot):
            raise InputError(f"overshoot must be a finite number >= 0, got {overshoot!r}")
        self.baseline_targets = check_targets(baseline_targets)
        self.stop_when_stalled = bool(stop_when_stalled)

    def init_state(self, base: SampleState, clean_scores: torch.Tensor) -> KFoolState:
        targets = target_mask(self.baseline_targets, base)
        best = clean_scores.masked_fill(~targets, float("-inf")).argmax(dim=1)
        stalled = torch.zeros(best.shape[0], dtype=torch.bool, device=best.device)
        return KFoolState.extend(
            base, anchor=best.unsqueeze(1), r=torch.zeros_like(base.x0), stalled=stalled
        )

    def gives_up(self, scores: torch.Tensor, state: SampleState) -> torch.Tensor:
        assert isinstance(state, KFoolState)
        targets = target_mask(self.baseline_targets, state)
        top = targets.gather(1, topk_indices(scores, self.k))
        return ~top.any(dim=1) | state.stalled

    def step(self, x_adv: torch.Tensor, scores: torch.Tensor, state: SampleState) -> torch.Tensor:
        """kFool's step (see the class docstring); returns ``(1 + overshoot)·r``.

        Args:
            x_adv: ``(n, C, H, W)`` the iterate's pixels, attached to ``state.v``.
            scores: ``(n, c)`` ``model(x_adv)``, attached.
            state: a :class:`KFoolState`; ``r`` and ``stalled`` are updated.
        """
        assert isinstance(state, KFoolState)
        v, anchor = state.v, state.anchor
        wrt = x_adv if self.linearize == "image" else v
        n = scores.shape[0]
        view = (n,) + (1,) * (v.dim() - 1)
        f_m = scores.gather(1, anchor)
        slots = topk_indices(scores.detach(), self.k + 1)
        # m's own slot adds nothing (g_m = 0, d_m = 0): move it last in every row (stable,
        # so the other slots keep their order); on the CPU, skip that backward pass when
        # every row has m among its top-(k+1). Elsewhere the check would be a host-device
        # synchronisation per iteration, so all k+1 passes run (the results are the same).
        is_m = slots == anchor
        slots = slots.gather(1, is_m.to(torch.uint8).argsort(dim=1, stable=True))
        passes = self.k + 1
        if v.device.type == "cpu" and bool(is_m.any(dim=1).all()):
            passes = self.k
        w: torch.Tensor | None = None
        s = torch.zeros(n, dtype=v.dtype, device=v.device)
        for j in range(passes):
            p = slots[:, j : j + 1]
            diff = scores.gather(1, p) - f_m
            (g,) = torch.autograd.grad(diff.sum(), wrt, retain_graph=j < passes - 1)
            norm = g.flatten(1).norm(dim=1)
            used = (p != anchor).squeeze(1) & (norm > 0)  # skip m and any g_p = 0
            inv = torch.where(used, norm.masked_fill(~used, 1.0).reciprocal(), 0.0)
            w = g * inv.view(view) if w is None else w.addcmul_(inv.view(view), g)
            s = s + diff.detach().squeeze(1) * inv  # s += d_p / ‖g_p‖
        assert w is not None  # passes >= k >= 1
        w_norm = w.flatten(1).norm(dim=1)
        zero = w_norm == 0  # no label used (or they cancel): a zero step
        scale = torch.where(zero, 0.0, s.abs() / w_norm.masked_fill(zero, 1.0))
        step = w * scale.view(view)
        if self.stop_when_stalled:
            # no pixel moves, now or ever: the step is 0 where the pixel is not saturated
            # in the step's own direction, so x', hence the next step's direction, stays
            x = x_adv.detach()
            moves = (step > 0) & (x < 1) | (step < 0) & (x > 0)
            state.stalled = ~moves.flatten(1).any(dim=1)
        state.r = state.r + step
        return (1 + self.overshoot) * state.r
