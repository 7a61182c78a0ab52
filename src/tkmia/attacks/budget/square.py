"""Black-box ε-bounded attack from the scores alone: Square Attack (Andriushchenko et al.,
ECCV 2020), L∞ and L2, on the top-k losses of SPEC §7.7.

Random search: each iteration proposes a change of the current perturbation inside a
random square window of side ``s`` (shrinking on the paper's schedule of the fraction
``p`` of pixels changed), queries the model once and keeps the proposal when it lowers the
loss. L∞: the window is set to ``±ε`` per channel (vertical stripes of ``±ε`` to start).
L2: the perturbation's mass inside the window and inside a second random window is moved
into the first one, onto a new pseudo-Gaussian pattern with a random sign per channel plus
its old direction there, together with the budget left over (so that ``‖δ‖₂`` stays at ε);
the second window is cleared. Every model call runs under ``torch.no_grad``: no gradient
is ever asked for. Queries are counted per image (the clean image's included) and never
exceed the budget.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tkmia.attacks.base import _eval_mode
from tkmia.attacks.budget.common import (
    LOSSES,
    NORMS,
    Ball,
    BudgetResult,
    hits,
    least_hits,
    prepare_model,
    read_budget_call,
    top_k_loss,
    uniform,
)
from tkmia.attacks.checks import check_int, check_number
from tkmia.errors import InputError

__all__ = ["Square", "square_fraction"]

#: AutoAttack's initial fraction of pixels changed per query
P_INIT = 0.8
#: (iteration on a 10 000-query scale, halvings of p after it)
_SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_fraction(p_init: float, it: int, budget: int) -> float:
    """The fraction of pixels changed at iteration ``it`` of a ``budget``-query run: ``p_init``
    halved after each of 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 iterations of a
    10 000-query run, scaled to ``budget`` (the paper's piecewise constant schedule)."""
    scaled = int(it / budget * 10000)
    return float(p_init / 2 ** sum(scaled > t for t in _SCHEDULE))


def _pattern(s: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """An ``(s, s)`` pseudo-Gaussian pattern of unit norm: two halves of opposite sign, each
    a sum of nested squares centred on it, heavier towards the centre."""

    def half(h: int, w: int) -> torch.Tensor:
        i = torch.arange(h, device=device).view(-1, 1).to(dtype)
        j = torch.arange(w, device=device).view(1, -1).to(dtype)
        ring = torch.minimum(torch.minimum(i, h - 1 - i), torch.minimum(j, w - 1 - j))
        n = max(h, w) / 2 + 1
        rings = int(ring.max()) + 1
        values = torch.tensor([1 / (n - r) ** 2 for r in range(rings)], dtype=dtype, device=device)
        return torch.cumsum(values, 0)[ring.long()]

    top = half(s // 2 or 1, s)
    out = torch.cat([top, -half(s - (s // 2 or 1), s)]) if s > 1 else top
    unit: torch.Tensor = out / out.norm().clamp(min=1e-12)
    return unit


class Square:
    """Square Attack with a query budget (SPEC §7.7).

    Args:
        model: images → scores ``(B, c)``; called only under ``torch.no_grad``.
        k: the top-k.
        norm: ``"linf"`` or ``"l2"``.
        loss: ``"margin"`` (default) or ``"tkmlapu"``, computed from the scores.
        queries: the most forward passes per image, the clean one included (>= 2).
        p_init: the initial fraction of pixels a query changes, in (0, 1].
        normalize: optional ``(mean, std)``, applied inside.
        seed: the seed of the random search.

    Called as :class:`~tkmia.attacks.budget.APGD`; the result's ``queries`` are the forward
    passes made on each image.
    """

    def __init__(
        self,
        model: nn.Module,
        k: int,
        norm: str = "linf",
        loss: str = "margin",
        queries: int = 5000,
        p_init: float = P_INIT,
        normalize: tuple[object, object] | None = None,
        seed: int = 0,
    ) -> None:
        if norm not in NORMS:
            raise InputError(f"norm must be one of {NORMS}, got {norm!r}")
        if loss not in LOSSES:
            raise InputError(f"loss must be one of {LOSSES}, got {loss!r}")
        self.k, self.norm, self.loss = check_int("k", k, 1), norm, loss
        self.queries = check_int("queries", queries, 2)
        self.p_init = check_number("p_init", p_init)
        if self.p_init > 1:
            raise InputError(f"p_init must be at most 1, got {p_init!r}")
        self.seed = check_int("seed", seed, 0)
        self.model = prepare_model(model, normalize)

    @torch.no_grad()
    def __call__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        eps: float,
        indices: torch.Tensor | None = None,
        start: torch.Tensor | None = None,
    ) -> BudgetResult:
        eps, labels, keys = read_budget_call(
            images, labels, self.k, self.norm, eps, start, self.seed, indices
        )
        x0 = images.detach()
        with _eval_mode(self.model):
            clean = self.model(x0)
            h0 = hits(clean, labels, self.k)
            out = BudgetResult(
                x0.clone(), clean.clone(), clean, h0.clone(), h0, torch.ones_like(h0)
            )
            rows = torch.nonzero(h0 > least_hits(labels, self.k)).flatten()
            if rows.numel() and eps > 0:
                self._search(x0, labels, keys, Ball(x0, self.norm, eps), start, rows, out)
        return out

    def _score(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        scores = self.model(x)
        return scores, top_k_loss(self.loss, scores, labels, self.k), hits(scores, labels, self.k)

    def _search(
        self,
        x0: torch.Tensor,
        labels: torch.Tensor,
        keys: torch.Tensor,
        ball: Ball,
        start: torch.Tensor | None,
        rows: torch.Tensor,
        out: BudgetResult,
    ) -> None:
        """The random search for the images ``rows``; writes into ``out``."""
        ball, labels, keys = ball.rows(rows), labels[rows], keys[rows]
        x0 = x0[rows]
        if start is not None:
            x = ball.project(start[rows].to(x0.dtype))
        else:
            x = ball.project(x0 + self._init(x0, keys, ball.eps))
        scores, loss, h = self._score(x, labels)
        out.queries[rows] += 1
        self._keep(out, rows, x, scores, h)
        floor = least_hits(labels, self.k)
        for it in range(1, self.queries - 1):
            live = out.hits[rows] > floor
            if not bool(live.all()):
                if not bool(live.any()):
                    return
                idx = torch.nonzero(live).flatten()
                rows, x0, labels, keys, floor = (
                    rows[idx],
                    x0[idx],
                    labels[idx],
                    keys[idx],
                    floor[idx],
                )
                x, loss, ball = x[idx], loss[idx], ball.rows(idx)
            x_new = ball.project(self._propose(x, x0, keys, ball.eps, it))
            scores, new_loss, h = self._score(x_new, labels)
            out.queries[rows] += 1
            self._keep(out, rows, x_new, scores, h)
            better = new_loss < loss
            x = torch.where(better.view(-1, 1, 1, 1), x_new, x)
            loss = torch.where(better, new_loss, loss)

    @staticmethod
    def _keep(
        out: BudgetResult,
        rows: torch.Tensor,
        x: torch.Tensor,
        scores: torch.Tensor,
        h: torch.Tensor,
    ) -> None:
        """The witness: the first point with the fewest relevant labels in the top-k."""
        better = h < out.hits[rows]
        if bool(better.any()):
            r = rows[better]
            out.hits[r], out.adv_images[r], out.adv_scores[r] = h[better], x[better], scores[better]

    def _init(self, x0: torch.Tensor, keys: torch.Tensor, eps: float) -> torch.Tensor:
        """The first perturbation ``(n, C, H, W)``: vertical stripes of ±ε (L∞), or tiles of
        the pseudo-Gaussian pattern with random signs scaled to ``‖δ‖₂ = ε`` (L2)."""
        n, c, h, w = x0.shape
        if self.norm == "linf":
            signs = uniform(keys, 0, c * w, x0.device).view(n, c, 1, w) < 0.5
            return torch.where(signs, -eps, eps).to(x0.dtype).expand(n, c, h, w)
        side = max(min(h, w) // 5, 1)
        tiles = (math.ceil(h / side), math.ceil(w / side))
        pat = _pattern(side, x0.device, x0.dtype).repeat(*tiles)[:h, :w]
        signs = uniform(keys, 0, c * tiles[0] * tiles[1], x0.device) < 0.5
        signs = torch.where(signs, -1.0, 1.0).to(x0.dtype).view(n, c, *tiles)
        signs = signs.repeat_interleave(side, 2).repeat_interleave(side, 3)[..., :h, :w]
        delta = pat * signs
        scaled: torch.Tensor = eps * delta / delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        return scaled

    def _window(self, keys: torch.Tensor, stream: int, s: int, h: int, w: int) -> torch.Tensor:
        """``(n, 1, H, W)`` bool: a random ``s × s`` window per image."""
        u = uniform(keys, stream, 2, keys.device)
        top = (u[:, 0] * (h - s + 1)).long().clamp(max=h - s).view(-1, 1)
        left = (u[:, 1] * (w - s + 1)).long().clamp(max=w - s).view(-1, 1)
        i, j = torch.arange(h, device=keys.device), torch.arange(w, device=keys.device)
        rows = (i >= top) & (i < top + s)
        cols = (j >= left) & (j < left + s)
        return (rows.unsqueeze(2) & cols.unsqueeze(1)).unsqueeze(1)

    def _propose(
        self, x: torch.Tensor, x0: torch.Tensor, keys: torch.Tensor, eps: float, it: int
    ) -> torch.Tensor:
        """The proposal of iteration ``it`` for the current points ``x`` ``(n, C, H, W)``."""
        n, c, h, w = x.shape
        p = square_fraction(self.p_init, it, self.queries)
        s = min(max(round(math.sqrt(p * h * w)), 1 if self.norm == "linf" else 2), h - 1, w - 1)
        s = max(s, 1)
        delta = x - x0
        first = self._window(keys, 8 * it + 1, s, h, w)
        signs = uniform(keys, 8 * it + 2, c, x.device).view(n, c, 1, 1) < 0.5
        if self.norm == "linf":
            new = torch.where(signs, -eps, eps).to(x.dtype)
            same = ((x0 + new).clamp(0, 1) - x).abs().masked_fill(~first, 0).flatten(1).amax(1)
            new = torch.where((same < 1e-7).view(-1, 1, 1, 1), -new, new)  # a change, always
            return torch.where(first, x0 + new, x)
        second = self._window(keys, 8 * it + 3, s, h, w)
        both = first | second

        def norm_c(t: torch.Tensor) -> torch.Tensor:
            norms: torch.Tensor = t.flatten(2).norm(dim=2).view(n, c, 1, 1)
            return norms

        left = (eps**2 - delta.flatten(1).pow(2).sum(1)).clamp(min=0).view(-1, 1, 1, 1) / c
        radius = (norm_c(delta * both).pow(2) + left).sqrt()
        old = delta * first
        pattern = self._placed(keys, it, s, first, x)
        fresh = pattern * torch.where(signs, -1.0, 1.0).to(x.dtype) + old / norm_c(old).clamp(
            min=1e-10
        )
        fresh = fresh * first
        fresh = fresh * radius / norm_c(fresh).clamp(min=1e-12)
        return x0 + delta * ~both + fresh

    def _placed(
        self, keys: torch.Tensor, it: int, s: int, window: torch.Tensor, x: torch.Tensor
    ) -> torch.Tensor:
        """``(n, 1, H, W)``: the ``s × s`` pattern (transposed for a random half of the
        images) placed in each image's window."""
        n, _, h, w = x.shape
        pat = _pattern(s, x.device, x.dtype)
        flip = (uniform(keys, 8 * it + 4, 1, x.device) < 0.5).view(n, 1, 1)
        i = window[:, 0].any(dim=2).long().argmax(dim=1).view(-1, 1)  # window's top row
        j = window[:, 0].any(dim=1).long().argmax(dim=1).view(-1, 1)  # and left column
        ri = (torch.arange(h, device=x.device) - i).clamp(0, s - 1)
        rj = (torch.arange(w, device=x.device) - j).clamp(0, s - 1)
        a = pat[ri.unsqueeze(2), rj.unsqueeze(1)]
        bt = pat.t()[ri.unsqueeze(2), rj.unsqueeze(1)]
        return torch.where(flip, bt, a).unsqueeze(1) * window
