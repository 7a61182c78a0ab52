"""kFool: the DeepFool-style top-k multi-label attack of Tursynbek et al. (2022)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from tkmia.attacks.base import Attack, _check_positive
from tkmia.attacks.targets import check_targets, target_mask
from tkmia.metrics import topk_indices


class KFool(Attack):
    """A linearised step that pushes the best relevant label ``m`` out of the top-k.

    ``m = argmax_{j∈Y} f_j(x)`` on the clean image (fixed for the run). Each iteration,
    for every label ``p`` of the current top-(k+1) other than ``m``, with
    ``g_p = ∇(f_p − f_m)`` and ``d_p = f_p − f_m``: ``w += g_p/‖g_p‖``,
    ``s += d_p/‖g_p‖``; then ``r += |s|·w/‖w‖`` and
    ``x' = (tanh(atanh(2x − 1) + (1 + overshoot)·r) + 1) / 2`` (SPEC §4.2).

    Decisions the spec leaves open, made as in DeepFool:
      * gradients are taken with respect to the tanh-space variable in which ``r`` lives,
        so the linearisation and the step use the same coordinates (on a model that is
        linear in that variable, one step crosses the boundary exactly);
      * ``overshoot`` (default 0.02) scales the accumulated step, so that the linearised
        boundary is crossed rather than merely reached.

    **Stalled samples stop early** (``stop_when_stalled=True``, the default): kFool's only
    state is ``r``, so a sample whose step is exactly zero (every ``g_p`` is 0, which
    happens once all its pixels are saturated at 0 or 1, where the map's derivative is 0)
    can never move again; the next evaluation (the same image) ends it. Its image,
    scores and success are exactly those of running on to ``max_iter``; only its
    iteration count is smaller (the steps it did take). On the built-in benchmark every
    image kFool fails on ends saturated, about half-way to ``max_iter`` = 300. Pass
    ``False`` to run such samples to ``max_iter`` anyway.

    The batch's per-label gradients come from one backward pass per top-(k+1) slot
    (k+1 passes per iteration; k on the CPU when ``m`` is in every sample's top-(k+1), as
    its own slot contributes nothing), never from a loop over images. An attack on a
    sample stops on success, when no target label is left in the top-k, or at
    ``max_iter``.
    As in the paper's protocol it attacks all relevant labels (Y);
    ``baseline_targets="specified"`` uses S instead.
    """

    def __init__(
        self,
        model: nn.Module,
        k: int,
        max_iter: int,
        overshoot: float = 0.02,
        normalize: tuple[Sequence[float], Sequence[float]] | None = None,
        baseline_targets: str = "relevant",
        stop_when_stalled: bool = True,
    ) -> None:
        super().__init__(model, k, max_iter, normalize)
        self.overshoot = _check_positive("overshoot", overshoot, allow_zero=True)
        self.baseline_targets = check_targets(baseline_targets)
        self.stop_when_stalled = bool(stop_when_stalled)

    def _prepare(self, clean_scores: torch.Tensor, ctx: dict[str, torch.Tensor]) -> None:
        targets = target_mask(self.baseline_targets, ctx)
        best = clean_scores.masked_fill(~targets, float("-inf")).argmax(dim=1)
        ctx["anchor"] = best.unsqueeze(1)
        ctx["r"] = torch.zeros_like(ctx["x0"])
        ctx["stalled"] = torch.zeros(best.shape[0], dtype=torch.bool, device=best.device)

    def _finished(self, scores: torch.Tensor, ctx: dict[str, torch.Tensor]) -> torch.Tensor:
        targets = target_mask(self.baseline_targets, ctx)
        top = targets.gather(1, topk_indices(scores, self.k))
        return ~top.any(dim=1) | ctx["stalled"]

    def _update(self, x_adv, scores, ctx):
        v = ctx["v"]
        n = scores.shape[0]
        view = (n,) + (1,) * (v.dim() - 1)
        anchor = ctx["anchor"]
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
        w = None
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
        flat = w.flatten(1)
        if self.stop_when_stalled:
            ctx["stalled"] = ~flat.any(dim=1)  # w = 0: r, hence x', stays as it is
        w_norm = flat.norm(dim=1).clamp(min=1e-12)
        ctx["r"] = ctx["r"].addcmul(w, (s.abs() / w_norm).view(view))
        return (1 + self.overshoot) * ctx["r"]
