"""Label-free statistics of the scores: what a deployed monitor, which has no labels, can
watch (SPEC §7.5). Each takes logits ``(B, c)`` and returns ``(B,)``, like the measures of
:mod:`tkmia.metrics`.
"""

from __future__ import annotations

import torch

from tkmia.errors import InputError

__all__ = [
    "LABEL_FREE_NAMES",
    "count_above_half",
    "kth_sigmoid",
    "label_free_iqr",
    "label_free_stats",
    "sorted_sigmoid",
    "sorted_width",
    "topk_margin",
    "topk_sigmoid_mass",
]

#: the label-free statistics of SPEC §7.5, in the column order of :func:`label_free_stats`
LABEL_FREE_NAMES = ("kth_score", "topk_mass", "margin", "n_above_half")


def _check_scores(scores: torch.Tensor, k: int, *, below_c: bool) -> None:
    if scores.dim() != 2:
        raise InputError(f"scores must have shape (B, c), got {tuple(scores.shape)}")
    c = scores.shape[1]
    top = c - 1 if below_c else c
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= top:
        bound = "k < c" if below_c else "k <= c"
        raise InputError(f"k must be an integer with 1 <= {bound} = {c}, got {k!r}")


def kth_sigmoid(scores: torch.Tensor, k: int) -> torch.Tensor:
    """``σ(f_[k])``: the sigmoid of the k-th largest score (the top-k's weakest label).

    Args:
        scores: ``(B, c)`` logits.
        k: ``1 <= k <= c``.

    Returns:
        ``(B,)`` in ``scores``' dtype, in (0, 1).

    Raises:
        InputError: ``scores`` not ``(B, c)`` or ``k`` out of range.
    """
    _check_scores(scores, k, below_c=False)
    return torch.sigmoid(scores.topk(k, dim=1).values[:, -1])


def topk_sigmoid_mass(scores: torch.Tensor, k: int) -> torch.Tensor:
    """``Σ_{j<=k} σ(f_[j])``: the sum of the top-k sigmoid scores.

    Args:
        scores: ``(B, c)`` logits.
        k: ``1 <= k <= c``.

    Returns:
        ``(B,)`` in ``scores``' dtype, in (0, k).

    Raises:
        InputError: ``scores`` not ``(B, c)`` or ``k`` out of range.
    """
    _check_scores(scores, k, below_c=False)
    return torch.sigmoid(scores.topk(k, dim=1).values).sum(dim=1)


def topk_margin(scores: torch.Tensor, k: int) -> torch.Tensor:
    """``f_[k] − f_[k+1]``: the gap in logits between the top-k and the rest (>= 0).

    Args:
        scores: ``(B, c)`` logits.
        k: ``1 <= k < c``.

    Returns:
        ``(B,)`` in ``scores``' dtype, non-negative.

    Raises:
        InputError: ``scores`` not ``(B, c)`` or ``k`` out of range.
    """
    _check_scores(scores, k, below_c=True)
    top = scores.topk(k + 1, dim=1).values
    return top[:, k - 1] - top[:, k]


def count_above_half(scores: torch.Tensor) -> torch.Tensor:
    """The number of labels with ``σ(f_i) > 0.5`` (logit above 0), as a float.

    Args:
        scores: ``(B, c)`` logits.

    Returns:
        ``(B,)`` in ``scores``' dtype, integers in ``[0, c]``.

    Raises:
        InputError: ``scores`` not ``(B, c)``.
    """
    _check_scores(scores, 1, below_c=False)
    return (torch.sigmoid(scores) > 0.5).sum(dim=1).to(scores.dtype)


def label_free_stats(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The four statistics of :data:`LABEL_FREE_NAMES` side by side.

    Args:
        scores: ``(B, c)`` logits.
        k: ``1 <= k < c``.

    Returns:
        ``(B, 4)`` in ``scores``' dtype: k-th sigmoid score, top-k sigmoid mass, margin
        ``f_[k] − f_[k+1]``, count above 0.5.

    Raises:
        InputError: ``scores`` not ``(B, c)`` or ``k`` out of range.
    """
    _check_scores(scores, k, below_c=True)
    top = scores.topk(k + 1, dim=1).values
    sig = torch.sigmoid(top[:, :k])
    count = (torch.sigmoid(scores) > 0.5).sum(dim=1).to(scores.dtype)  # count_above_half
    return torch.stack([sig[:, -1], sig.sum(dim=1), top[:, k - 1] - top[:, k], count], dim=1)


def sorted_width(c: int, k: int) -> int:
    """How many sorted scores the learned label-free monitor reads: ``min(c, 2k + 2)``."""
    return min(c, 2 * k + 2)


def sorted_sigmoid(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The largest :func:`sorted_width` sigmoid scores in decreasing order: the features of
    the learned label-free monitor (SPEC §7.6).

    Args:
        scores: ``(B, c)`` logits.
        k: ``1 <= k <= c``.

    Returns:
        ``(B, min(c, 2k + 2))`` in ``scores``' dtype, in (0, 1), non-increasing along a row.

    Raises:
        InputError: ``scores`` not ``(B, c)`` or ``k`` out of range.
    """
    _check_scores(scores, k, below_c=False)
    width = sorted_width(scores.shape[1], k)
    return torch.sigmoid(scores.topk(width, dim=1).values)


def label_free_iqr(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The interquartile range of each statistic of :func:`label_free_stats` over images:
    the scale of ``success="stealth"``'s tolerance (SPEC §7.6).

    Args:
        scores: ``(B, c)`` logits of clean images, ``B >= 1``.
        k: ``1 <= k < c``.

    Returns:
        ``(4,)`` float64, ``q75 − q25`` (linear interpolation, as NumPy's default).

    Raises:
        InputError: ``scores`` not ``(B, c)`` with ``B >= 1``, or ``k`` out of range.
    """
    if scores.dim() == 2 and scores.shape[0] == 0:
        raise InputError("the IQR of the label-free statistics needs at least one image")
    stats = label_free_stats(scores.double(), k)
    q = torch.quantile(stats, stats.new_tensor([0.25, 0.75]), dim=0)
    return q[1] - q[0]
