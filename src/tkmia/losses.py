"""The average top-m operator (ATk) and the attack objectives, as pure tensor functions.

All functions take scores ``f`` of shape ``(B, c)`` (logits of the attacked model) and
0/1 masks of the same shape. The ``*_loss`` functions return a per-sample loss ``(B,)``
that is differentiable in ``f``; minimising it is the attack's goal. The ``*_grad``
functions return the gradient ``(B, c)`` of a loss w.r.t. ``f`` in closed form, what the
attacks use: a handful of ops instead of the loss's graph and its backward pass (docs/performance.md
has the measurements). They equal the gradient autograd
gives for the loss, bit for bit (tested), with its choice at ties of a ``max``/``min``
over a set (the gradient split evenly among the tied entries). At a tie at the k-th
largest score the entries counted in the top-k are :func:`torch.topk`'s on the scores;
autograd's may be others there (both are subgradients).
"""

from __future__ import annotations

import torch

from tkmia.errors import InputError

__all__ = [
    "average_top_k",
    "masked_max",
    "masked_min",
    "mlcw_grad",
    "mlcw_loss",
    "tkmia_grad",
    "tkmia_loss",
    "tkmlap_grad",
    "tkmlap_loss",
    "tkmlapt_grad",
    "tkmlapt_loss",
]


def average_top_k(a: torch.Tensor, m: int, method: str = "sort") -> torch.Tensor:
    """ATk_m(a): the mean of the ``m`` largest entries of each row of ``a`` ``(B, c)``.

    ``method="sort"`` averages the top-m values (for ``m > c/2`` as the row sum minus the
    ``c − m`` smallest entries, which needs a much shorter partial sort); ``method="dual"``
    evaluates the variational form ``min_λ λ + (1/m) Σ_i [a_i − λ]_+`` at its minimiser
    ``λ = a_[m]`` (Lemma 4.1 of the paper). Both have the same value and the same gradient.

    Args:
        a: ``(B, c)`` values.
        m: how many of the largest entries of a row to average, ``1 <= m <= c``.
        method: ``"sort"`` or ``"dual"``.

    Returns:
        ``(B,)``, differentiable in ``a``.

    Raises:
        InputError: ``a`` is not 2-D, ``m`` is out of range, or ``method`` is unknown.
    """
    if a.dim() != 2:
        raise InputError(f"a must have shape (B, c), got {tuple(a.shape)}")
    if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= a.shape[1]:
        raise InputError(f"m must be an integer with 1 <= m <= c = {a.shape[1]}, got {m!r}")
    if method not in ("sort", "dual"):
        raise InputError(f"method must be 'sort' or 'dual', got {method!r}")
    c = a.shape[1]
    if 2 * m > c:
        # the m largest are all but the c − m smallest: select those (ATk_{c−k} with a
        # small k is a near-full sort otherwise, the loss's main cost for large c)
        low = a.topk(c - m + 1, dim=1, largest=False).values  # ascending; last = a_[m]
        top_sum, lam = a.sum(dim=1) - low[:, :-1].sum(dim=1), low[:, -1:]
    else:
        top = a.topk(m, dim=1).values
        top_sum, lam = top.sum(dim=1), top[:, -1:]
    if method == "sort":
        return top_sum / m
    return lam.squeeze(1) + (a - lam).clamp(min=0).sum(dim=1) / m


def masked_max(f: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Row-wise max of ``f`` ``(B, c)`` over the entries where ``mask`` ``(B, c)`` is set:
    ``(B, 1)`` (``-inf`` for a row with an empty mask)."""
    return f.masked_fill(~mask.bool(), float("-inf")).amax(dim=1, keepdim=True)


def masked_min(f: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Row-wise min of ``f`` ``(B, c)`` over the entries where ``mask`` ``(B, c)`` is set:
    ``(B, 1)`` (``inf`` for a row with an empty mask)."""
    return f.masked_fill(~mask.bool(), float("inf")).amin(dim=1, keepdim=True)


def tkmia_loss(
    scores: torch.Tensor, labels: torch.Tensor, specified: torch.Tensor, k: int
) -> torch.Tensor:
    """TkMIA: ``ATk_{c−k}(max_S f − f) + ATk_k(f − min_R f)`` with ``R = Y \\ S``.

    The first term pushes the best specified label below the bottom ``c − k`` scores (all
    of S leave the top-k); the second pulls the worst remaining relevant label up to the
    top-k scores (the top-k is refilled with relevant labels). Every sample needs a
    non-empty ``S`` and a non-empty ``R``.

    Args:
        scores: ``(B, c)`` logits ``f``.
        labels: ``(B, c)`` 0/1 (or bool), the relevant labels ``Y``.
        specified: ``(B, c)`` 0/1 (or bool), the labels ``S ⊆ Y`` to hide.
        k: the top-k size, ``1 <= k < c``.

    Returns:
        ``(B,)`` per-sample loss, differentiable in ``scores``.
    """
    c = scores.shape[1]
    remaining = labels.bool() & ~specified.bool()
    hide = average_top_k(masked_max(scores, specified) - scores, c - k)
    promote = average_top_k(scores - masked_min(scores, remaining), k)
    return hide + promote


def tkmlap_loss(scores: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    """TkML-AP-U: ``ATk_{c−k}(max_T f − f)``: every target label leaves the top-k.

    ``targets`` is the relevant set ``Y`` in the paper's protocol (``S`` in the ablation).

    Args:
        scores: ``(B, c)`` logits ``f``.
        targets: ``(B, c)`` 0/1 (or bool), the labels ``T`` to push out.
        k: the top-k size, ``1 <= k < c``.

    Returns:
        ``(B,)`` per-sample loss, differentiable in ``scores``.
    """
    c = scores.shape[1]
    return average_top_k(masked_max(scores, targets) - scores, c - k)


def _signs(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``t`` ``(B, c)`` in ``scores``' dtype: ``+1`` on the targets, ``−1`` on every other label."""
    return targets.to(scores.dtype).mul(2).sub_(1)


def tkmlapt_loss(
    scores: torch.Tensor, targets: torch.Tensor, k: int, tie: float = 0.0
) -> torch.Tensor:
    """TkML-AP-T (SPEC §7.3): ``Σ_j [t_j (f_[k] − f_j)]_+ + (τ/2) Σ_j (1 − t_j f_j)²``.

    ``t_j = +1`` on the targets and ``−1`` on every other label, so the first sum is
    ``Σ_{j∈T} [f_[k] − f_j]_+ + Σ_{j∉T} [f_j − f_[k]]_+``: targets below the k-th largest
    score are pulled up and every non-target above it is pushed down (the target terms
    alone stall for ``|T| >= 2``: a target at the k-th place *is* ``f_[k]``). The second
    sum is the official code's optional tie term (``tie = τ``, 0 turns it off).

    Args:
        scores: ``(B, c)`` logits ``f``.
        targets: ``(B, c)`` 0/1 (or bool), the labels ``T`` to bring into the top-k.
        k: the top-k size, ``1 <= k < c``; ``f_[k]`` is the k-th largest score.
        tie: the weight ``τ >= 0`` of the tie term.

    Returns:
        ``(B,)`` per-sample loss, differentiable in ``scores``.
    """
    t = _signs(scores, targets)
    kth = scores.topk(k, dim=1).values[:, -1:]
    loss = (t * (kth - scores)).clamp(min=0).sum(dim=1)
    if tie:
        loss = loss + (tie / 2) * (1 - t * scores).square().sum(dim=1)
    return loss


def mlcw_loss(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """ML-CW-U: ``[max_{j∈T} f_j − min_{i∉T} f_i]_+``: every target below every other label.

    ``targets`` is ``Y`` in the paper's protocol (``S`` in the ablation). A sample whose
    targets cover all labels has loss 0.

    Args:
        scores: ``(B, c)`` logits ``f``.
        targets: ``(B, c)`` 0/1 (or bool), the labels ``T`` to push out.

    Returns:
        ``(B,)`` per-sample loss (>= 0), differentiable in ``scores``.
    """
    gap = masked_max(scores, targets) - masked_min(scores, ~targets.bool())
    return gap.squeeze(1).clamp(min=0)


def _argmax_share(
    f: torch.Tensor, mask: torch.Tensor, largest: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The max (``largest``) or min of ``f`` over ``mask``, ``(B, 1)``, and ``(B, c)``: 1 on
    the entry where it is attained, split evenly among tied entries (as autograd's
    ``amax``/``amin``); a row with an empty mask is all 0 (its extremum is ∓inf)."""
    mask = mask.bool()
    best = masked_max(f, mask) if largest else masked_min(f, mask)
    at = ((f == best) & mask).to(f.dtype)
    return best, at.div_(at.sum(dim=1, keepdim=True).clamp_(min=1))


def _top_mask(f: torch.Tensor, k: int) -> torch.Tensor:
    """``(B, c)`` in ``f``'s dtype: 1 on the top-k scores (:func:`torch.topk`'s), else 0."""
    return torch.zeros_like(f).scatter_(1, f.topk(k, dim=1).indices, 1.0)


def _hide_grad(
    f: torch.Tensor, targets: torch.Tensor, k: int, in_top: torch.Tensor
) -> torch.Tensor:
    """Gradient of ``ATk_{c−k}(max_T f − f)`` (summed over samples) w.r.t. ``f``, given the
    top-k as the mask ``in_top`` (:func:`_top_mask`): ``−1/(c−k)`` on the ``c − k`` other
    scores and their sum, ``+1``, on ``argmax_T f``."""
    g = (in_top - 1).div_(f.shape[1] - k)
    return g.sub_(g.sum(dim=1, keepdim=True) * _argmax_share(f, targets, largest=True)[1])


def tkmia_grad(
    scores: torch.Tensor, labels: torch.Tensor, specified: torch.Tensor, k: int
) -> torch.Tensor:
    """Gradient ``(B, c)`` of ``tkmia_loss(scores, labels, specified, k).sum()`` w.r.t.
    ``scores``: ``+1/k`` on the top-k, ``−1/(c−k)`` elsewhere, ``+1`` on the best
    specified label and ``−1`` on the worst remaining relevant one.

    Takes the arguments of :func:`tkmia_loss`.

    Returns:
        ``(B, c)`` in ``scores``' dtype.
    """
    in_top = _top_mask(scores, k)
    promote = in_top / k
    remaining = labels.bool() & ~specified.bool()
    promote.sub_(promote.sum(dim=1, keepdim=True) * _argmax_share(scores, remaining, False)[1])
    return _hide_grad(scores, specified, k, in_top).add_(promote)


def tkmlap_grad(scores: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    """Gradient ``(B, c)`` of ``tkmlap_loss(scores, targets, k).sum()`` w.r.t. ``scores``.

    Takes the arguments of :func:`tkmlap_loss`.

    Returns:
        ``(B, c)`` in ``scores``' dtype.
    """
    return _hide_grad(scores, targets, k, _top_mask(scores, k))


def tkmlapt_grad(
    scores: torch.Tensor, targets: torch.Tensor, k: int, tie: float = 0.0
) -> torch.Tensor:
    """Gradient ``(B, c)`` of ``tkmlapt_loss(scores, targets, k, tie).sum()`` w.r.t.
    ``scores``: ``−t_j`` on every label whose hinge is active (``t_j (f_[k] − f_j) > 0``:
    a label tied with ``f_[k]`` is not, as autograd's ``clamp`` has it), the sum of those
    ``t_j`` on the label that holds the k-th place (:func:`torch.topk`'s at ties), plus
    ``τ (f_j − t_j)`` from the tie term.

    Takes the arguments of :func:`tkmlapt_loss`.

    Returns:
        ``(B, c)`` in ``scores``' dtype.
    """
    t = _signs(scores, targets)
    kth_index = scores.topk(k, dim=1).indices[:, -1:]
    active = t * (t * (scores.gather(1, kth_index) - scores) > 0)
    grad = active.neg().scatter_add_(1, kth_index, active.sum(dim=1, keepdim=True))
    if tie:
        grad.add_(scores - t, alpha=tie)
    return grad


def mlcw_grad(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Gradient ``(B, c)`` of ``mlcw_loss(scores, targets).sum()`` w.r.t. ``scores``: ``+1``
    on the best target and ``−1`` on the worst non-target where the hinge is active
    (``max_T f > min_{∉T} f``; at a gap of exactly 0 the loss is 0 and so is the gradient,
    as autograd's ``clamp`` has it), else 0.

    Takes the arguments of :func:`mlcw_loss`.

    Returns:
        ``(B, c)`` in ``scores``' dtype.
    """
    targets = targets.bool()
    top, g = _argmax_share(scores, targets, True)
    bottom, g_bottom = _argmax_share(scores, ~targets, False)
    return g.sub_(g_bottom).mul_(top > bottom)
