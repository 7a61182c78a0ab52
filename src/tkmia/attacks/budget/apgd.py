"""White-box ε-bounded attack: PGD with the APGD schedule (Croce & Hein, ICML 2020).

Per image: a gradient step of size η (sign of the gradient for L∞, the gradient's
direction for L2), projected onto the ε-ball ∩ [0, 1]; momentum 0.75 between the projected
step and the previous iterate; η starts at 2ε and is halved at checkpoints
``w_j = ⌈p_j N⌉`` (``p_0 = 0``, ``p_1 = 0.22``, ``p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03,
0.06)``) when fewer than 75 % of the steps since the last checkpoint lowered the loss, or
when η was not halved at the last checkpoint and the best loss has not improved since; the
search then continues from the best point. The loss is minimised (SPEC §7.7). Random
restarts; an image leaves the batch as soon as no relevant label is left in its top-k (or
as few as its labels allow).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
from tkmia.attacks.checks import check_int
from tkmia.errors import InputError

__all__ = ["APGD", "checkpoints"]

MOMENTUM = 0.75
RHO = 0.75


def checkpoints(iterations: int) -> list[int]:
    """APGD's checkpoints ``w_1 < w_2 < ... <= iterations`` (iteration numbers)."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return sorted({math.ceil(q * iterations) for q in p[1:] if q <= 1} - {0})


@dataclass
class _Best:
    """The witness of every image of the call: (hits, loss) and the point with its scores."""

    hits: torch.Tensor
    loss: torch.Tensor
    x: torch.Tensor
    scores: torch.Tensor

    def offer(
        self,
        rows: torch.Tensor,
        h: torch.Tensor,
        loss: torch.Tensor,
        x: torch.Tensor,
        scores: torch.Tensor,
    ) -> None:
        """Keep, for the images ``rows``, the offered points that are better."""
        old_h, old_l = self.hits[rows], self.loss[rows]
        better = (h < old_h) | ((h == old_h) & (loss < old_l))
        if bool(better.any()):
            r = rows[better]
            self.hits[r], self.loss[r] = h[better], loss[better]
            self.x[r], self.scores[r] = x[better].to(self.x.dtype), scores[better]


class APGD:
    """ε-bounded white-box attack on a top-k multi-label model (SPEC §7.7).

    Args:
        model: images ``(B, C, H, W)`` → scores ``(B, c)``; run in eval mode (its own mode
            is given back).
        k: the top-k, ``1 <= k < c``.
        norm: ``"linf"`` or ``"l2"``.
        loss: ``"margin"`` (the smallest-margin loss, the default) or ``"tkmlapu"``.
        iterations: gradient steps per restart (one forward and one backward pass each).
        restarts: runs per image; the first starts at ``start`` (or the clean image), the
            others at a uniform random point of the ball.
        normalize: optional ``(mean, std)`` applied inside, as every attack.
        seed: the seed of the restarts' random points.

    ``atk(images, labels, eps, indices=None, start=None)`` → :class:`BudgetResult`:
    images ``(B, C, H, W)`` in [0, 1], labels ``(B, c)`` 0/1 (every image with a relevant
    label), ``eps >= 0``, ``indices`` ``(B,)`` the images' numbers that key their random
    numbers (default ``0..B−1``), ``start`` ``(B, C, H, W)`` optional first points
    (projected onto the ball). A result never depends on the batch it was computed in.
    """

    def __init__(
        self,
        model: nn.Module,
        k: int,
        norm: str = "linf",
        loss: str = "margin",
        iterations: int = 100,
        restarts: int = 1,
        normalize: tuple[object, object] | None = None,
        seed: int = 0,
    ) -> None:
        if norm not in NORMS:
            raise InputError(f"norm must be one of {NORMS}, got {norm!r}")
        if loss not in LOSSES:
            raise InputError(f"loss must be one of {LOSSES}, got {loss!r}")
        self.k, self.norm, self.loss = check_int("k", k, 1), norm, loss
        self.iterations = check_int("iterations", iterations, 1)
        self.restarts = check_int("restarts", restarts, 1)
        self.seed = check_int("seed", seed, 0)
        self.model = prepare_model(model, normalize)

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
        b, device = images.shape[0], images.device
        x0 = images.detach()
        ball = Ball(x0, self.norm, eps)
        with _eval_mode(self.model), torch.no_grad():
            clean = self.model(x0).detach()
            first = x0 if start is None else ball.project(start.detach().to(x0.dtype))
            h0 = hits(clean, labels, self.k)
            best = _Best(
                h0.clone(), top_k_loss(self.loss, clean, labels, self.k), x0.clone(), clean.clone()
            )
            queries = torch.ones(b, dtype=torch.long, device=device)
            floor = least_hits(labels, self.k)
            for restart in range(self.restarts):
                rows = torch.nonzero(best.hits > floor).flatten()
                if not rows.numel():
                    break
                sub = ball.rows(rows)
                x = first[rows] if restart == 0 else self._random(sub, keys[rows], restart)
                self._run(x, sub, labels[rows], rows, floor[rows], best, queries)
        return BudgetResult(best.x, best.scores, clean, best.hits, h0, queries)

    def _random(self, ball: Ball, keys: torch.Tensor, restart: int) -> torch.Tensor:
        """A uniform random point of the L∞ cube (or on the L2 sphere), projected."""
        x0 = ball.x0
        u = uniform(keys, restart, x0[0].numel(), x0.device).view_as(x0).to(x0.dtype) * 2 - 1
        if self.norm == "l2":
            u = u / u.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, 1, 1, 1)
        return ball.project(x0 + ball.eps * u)

    def _loss_grad(
        self, x: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss (n,), hits (n,), gradient (n, C, H, W), scores (n, c)) at ``x``."""
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            scores = self.model(x)
            loss = top_k_loss(self.loss, scores, labels, self.k)
            (grad,) = torch.autograd.grad(loss.sum(), x)
        s = scores.detach()
        return loss.detach(), hits(s, labels, self.k), grad, s

    def _direction(self, grad: torch.Tensor) -> torch.Tensor:
        if self.norm == "linf":
            return grad.sign()
        unit: torch.Tensor = grad / grad.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, 1, 1, 1)
        return unit

    def _run(
        self,
        x: torch.Tensor,
        ball: Ball,
        labels: torch.Tensor,
        rows: torch.Tensor,
        floor: torch.Tensor,
        best: _Best,
        queries: torch.Tensor,
    ) -> None:
        """One restart of the images ``rows`` from ``x``; updates ``best`` and ``queries``."""
        n = x.shape[0]
        eta = torch.full((n, 1, 1, 1), 2 * ball.eps, dtype=x.dtype, device=x.device)
        x_prev = x.clone()
        best_x, best_loss = x.clone(), torch.full((n,), math.inf, device=x.device)
        prev_loss = torch.full((n,), math.inf, device=x.device)
        lowered = torch.zeros(n, dtype=torch.long, device=x.device)
        halved, last_best = torch.zeros(n, dtype=torch.bool, device=x.device), best_loss.clone()
        marks, since = checkpoints(self.iterations), 0
        for it in range(self.iterations):
            loss, h, grad, scores = self._loss_grad(x, labels)
            queries[rows] += 1
            best.offer(rows, h, loss, x, scores)
            lowered += (loss < prev_loss).long()
            prev_loss = loss
            gain = loss < best_loss
            best_x = torch.where(gain.view(-1, 1, 1, 1), x, best_x)
            best_loss = torch.where(gain, loss, best_loss)
            z = ball.project(x - eta * self._direction(grad))
            step = (
                z
                if it == 0
                else ball.project(x + MOMENTUM * (z - x) + (1 - MOMENTUM) * (x - x_prev))
            )
            x_prev, x = x, step
            since += 1
            if it + 1 in marks:
                stalled = (lowered < RHO * since) | (~halved & (best_loss >= last_best))
                halved, last_best = stalled, best_loss.clone()
                eta = torch.where(stalled.view(-1, 1, 1, 1), eta / 2, eta)
                x = torch.where(stalled.view(-1, 1, 1, 1), best_x, x)
                x_prev = torch.where(stalled.view(-1, 1, 1, 1), x, x_prev)
                lowered.zero_()
                since = 0
            keep = best.hits[rows] > floor
            if not bool(keep.all()):  # early exit: these images are done
                if not bool(keep.any()):
                    return
                idx = torch.nonzero(keep).flatten()
                rows, floor, labels, ball = rows[idx], floor[idx], labels[idx], ball.rows(idx)
                x, x_prev, eta, best_x = x[idx], x_prev[idx], eta[idx], best_x[idx]
                best_loss, prev_loss, lowered = best_loss[idx], prev_loss[idx], lowered[idx]
                halved, last_best = halved[idx], last_best[idx]
