"""Monitor-imperceptible success (``success="stealth"``, SPEC §7.6): the rule's test of the
label-free statistics, and TkMIA's stealth target.

The audit's label-free statistics (k-th sigmoid score, top-k sigmoid mass, margin
``f_[k] − f_[k+1]``, count above 0.5) and the learned monitor's features (the sorted
sigmoid scores) are all functions of the *sorted* score vector: they do not change when
the scores are permuted among the labels. So the stealthiest outcome of a top-k attack is
a permutation of the clean scores that moves the specified labels out of the top-k:
:func:`permuted_target` builds it, and TkMIA's stealth objective regresses the scores on it.
"""

from __future__ import annotations

import torch

from tkmia.errors import InputError
from tkmia.score_stats import LABEL_FREE_NAMES, label_free_stats

__all__ = ["STEALTH_RHO", "check_reference", "permuted_target", "rule_parts", "within_band"]

#: the default tolerance ρ of ``success="stealth"``, in units of the clean IQR of each
#: statistic (docs/beyond-the-paper.md says why 0.1 and not SPEC's starting 0.25)
STEALTH_RHO = 0.1


def rule_parts(success: str) -> tuple[bool, bool]:
    """``(preserve, stealth)``: which conditions a success rule adds to SPEC §5's."""
    parts = success.split("+")
    return "preserve" in parts, "stealth" in parts


def check_reference(iqr: object, rho: object) -> tuple[torch.Tensor, float]:
    """``(iqr as a (4,) float64 CPU tensor, rho)`` after checking both.

    Raises:
        InputError: ``iqr`` is not 4 finite numbers >= 0 (one per statistic of
            :data:`~tkmia.score_stats.LABEL_FREE_NAMES`), or ``rho`` not a number >= 0.
    """
    try:
        values = torch.as_tensor(iqr, dtype=torch.float64).detach().cpu().flatten()
    except (TypeError, ValueError, RuntimeError):
        values = torch.empty(0)
    n = len(LABEL_FREE_NAMES)
    if values.numel() != n or not bool(torch.isfinite(values).all()) or bool((values < 0).any()):
        raise InputError(
            f"stealth_iqr must be {n} finite numbers >= 0, the interquartile range of "
            f"{list(LABEL_FREE_NAMES)} over the clean eligible images "
            "(tkmia.score_stats.label_free_iqr(clean_scores, k)), got {iqr!r}"
        )
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not rho >= 0:
        raise InputError(f"rho must be a number >= 0, got {rho!r}")
    return values, float(rho)


def within_band(
    scores: torch.Tensor, clean_stats: torch.Tensor, iqr: torch.Tensor, rho: float, k: int
) -> torch.Tensor:
    """``(n,)`` bool: every label-free statistic of ``scores`` ``(n, c)`` within
    ``rho · iqr`` of the clean image's own (``clean_stats`` ``(n, 4)``, ``iqr`` ``(4,)``)."""
    stats = label_free_stats(scores, k).to(clean_stats.dtype)
    band = rho * iqr.to(device=stats.device, dtype=stats.dtype)
    return ((stats - clean_stats).abs() <= band).all(dim=1)


def permuted_target(
    clean_scores: torch.Tensor,
    labels: torch.Tensor,
    specified: torch.Tensor,
    max_left: torch.Tensor,
    k: int,
) -> torch.Tensor:
    """The clean scores ``(n, c)`` permuted among the labels so that the specified labels
    that must leave the top-k sit just below it, and the labels that replace them just
    inside it; every other label keeps its rank (up to the shift this makes).

    Per image: ``q = |S ∩ T_k(x)| − max_left`` specified labels leave (the lowest-ranked of
    ``S ∩ T_k(x)``: the cheapest to move); ``q`` labels outside ``T_k(x) ∪ S`` enter, the
    highest-scoring relevant ones first (TkMIA's goal G2), then the highest-scoring others.
    The new order is: the clean top-k without the leaving labels, the entering labels, the
    leaving labels, then the rest, each part in clean order; the sorted clean scores are
    assigned along it. The sorted target equals the sorted clean scores exactly.

    Args:
        clean_scores: ``(n, c)`` logits of the clean images.
        labels, specified: ``(n, c)`` bool, ``Y`` and ``S``.
        max_left: ``(n,)`` long, how many labels of ``S`` may stay in the top-k.
        k: the top-k size.

    Returns:
        ``(n, c)`` in ``clean_scores``' dtype.
    """
    values, order = clean_scores.sort(dim=1, descending=True, stable=True)
    target = torch.empty_like(clean_scores)
    for i in range(clean_scores.shape[0]):  # once per sample, when it starts
        ranked = order[i].tolist()
        top, rest = ranked[:k], ranked[k:]
        spec, rel = specified[i].tolist(), labels[i].tolist()
        in_top = [j for j in top if spec[j]]
        q = max(len(in_top) - int(max_left[i]), 0)
        leave = in_top[len(in_top) - q :] if q else []
        pool = [j for j in rest if not spec[j]]
        enter = ([j for j in pool if rel[j]] + [j for j in pool if not rel[j]])[:q]
        new = [j for j in top if j not in leave] + enter + leave
        new += [j for j in rest if j not in enter]
        target[i, torch.tensor(new, device=target.device)] = values[i]
    return target
