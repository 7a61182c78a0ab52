"""kFool: the DeepFool-style top-k multi-label attack of Tursynbek et al. (2022)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tkmia.attacks.base import Attack, Normalize
from tkmia.attacks.checks import check_number
from tkmia.attacks.state import SampleState
from tkmia.attacks.targets import check_targets, target_mask
from tkmia.metrics import topk_indices

__all__ = ["KFool", "KFoolState"]


@dataclass
class KFoolState(SampleState):
    """:class:`SampleState` plus kFool's own fields.

    Attributes:
        anchor: ``(n, 1)`` long, ``m``: the best target label on the clean image.
        r: ``(n, C, H, W)`` the accumulated step (``v = (1 + overshoot)·r``).
        stalled: ``(n,)`` bool, the last step was exactly zero.
    """

    anchor: torch.Tensor
    r: torch.Tensor
    stalled: torch.Tensor


class KFool(Attack):
    """A linearised step that pushes the best relevant label ``m`` out of the top-k.

    ``m = argmax_{j∈Y} f_j(x)`` on the clean image (fixed for the run). Each iteration,
    for every label ``p`` of the current top-(k+1) other than ``m``, with
    ``g_p = ∇(f_p − f_m)`` and ``d_p = f_p − f_m``: ``w += g_p/‖g_p‖``,
    ``s += d_p/‖g_p‖``; then ``r += |s|·w/‖w‖`` and
    ``x' = (tanh(atanh(2x − 1) + (1 + overshoot)·r) + 1) / 2`` (SPEC §4.2).

    Args:
        model, k, max_iter, normalize: as :class:`~tkmia.attacks.Attack`.
        overshoot: scales the accumulated step (>= 0, default 0.02), so that the linearised
            boundary is crossed rather than merely reached, as in DeepFool.
        baseline_targets: ``"relevant"`` (the paper: all of Y) or ``"specified"`` (S only).
        stop_when_stalled: stop a sample whose step is exactly zero (below).

    Raises:
        InputError: for a bad ``overshoot`` or ``baseline_targets`` (and as :class:`Attack`).

    Gradients are taken with respect to the tanh-space variable in which ``r`` lives, so the
    linearisation and the step use the same coordinates (on a model that is linear in that
    variable, one step crosses the boundary exactly).

    **Stalled samples stop early** (``stop_when_stalled=True``): kFool's only state is
    ``r``, so a sample whose step is exactly zero (every ``g_p`` is 0, which happens once
    all its pixels are saturated at 0 or 1, where the map's derivative is 0) can never move
    again; the next evaluation (the same image) ends it. Its image, scores and success are
    exactly those of running on to ``max_iter``; only its iteration count is smaller.

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
        overshoot: float = 0.02,
        normalize: Normalize | None = None,
        baseline_targets: str = "relevant",
        stop_when_stalled: bool = True,
    ) -> None:
        super().__init__(model, k, max_iter, normalize)
        self.overshoot = check_number("overshoot", overshoot, allow_zero=True)
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
        assert isinstance(state, KFoolState)
        v, anchor = state.v, state.anchor
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
            (g,) = torch.autograd.grad(diff.sum(), v, retain_graph=j < passes - 1)
            other = (p != anchor).squeeze(1).to(v.dtype)
            norm = g.flatten(1).norm(dim=1).clamp(min=1e-12)
            coef = (other / norm).view(view)
            w = g * coef if w is None else w.addcmul_(coef, g)  # w += g_p / ‖g_p‖
            s = s + other * diff.detach().squeeze(1) / norm
        assert w is not None  # passes >= k >= 1
        flat = w.flatten(1)
        if self.stop_when_stalled:
            state.stalled = ~flat.any(dim=1)  # w = 0: r, hence x', stays as it is
        w_norm = flat.norm(dim=1).clamp(min=1e-12)
        state.r = state.r.addcmul(w, (s.abs() / w_norm).view(view))
        return (1 + self.overshoot) * state.r
