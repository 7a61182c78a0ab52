"""Top-k ranking measures of SPEC §2, as pure functions on tensors.

Every per-sample measure takes ``scores`` ``(B, c)`` (any real scores: logits or
probabilities; only their order matters), ``labels`` ``(B, c)`` with entries in {0, 1} and
an integer ``k`` with ``1 <= k <= c``, and returns a float tensor ``(B,)``. A dataset
figure is the mean over samples.

Ties in the scores are broken by ``torch.topk`` (in practice: the lower index first on
the CPU); measures on tied scores are therefore defined but arbitrary, as in every
top-k evaluation.
"""

from __future__ import annotations

import torch

from tkmia.errors import InputError

__all__ = [
    "ap_at_k",
    "class_average_precision",
    "mean_average_precision",
    "ndcg_at_k",
    "precision_at_k",
    "removed_count",
    "topk_accuracy",
    "topk_indices",
    "topk_mask",
]


def _check(scores: torch.Tensor, labels: torch.Tensor, k: int, *, need_relevant: bool) -> None:
    if scores.dim() != 2:
        raise InputError(f"scores must have shape (B, c), got {tuple(scores.shape)}")
    if labels.shape != scores.shape:
        raise InputError(
            f"labels must have the shape of scores {tuple(scores.shape)}, got {tuple(labels.shape)}"
        )
    c = scores.shape[1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= c:
        raise InputError(f"k must be an integer with 1 <= k <= c = {c}, got {k!r}")
    if not bool(((labels == 0) | (labels == 1)).all()):
        raise InputError("labels must contain only 0 and 1")
    if need_relevant and bool((labels.sum(dim=1) == 0).any()):
        bad = torch.nonzero(labels.sum(dim=1) == 0).flatten().tolist()
        raise InputError(
            f"samples {bad[:10]} have no relevant label; AP@k and NDCG@k are undefined for them "
            "(drop such samples first)"
        )


def topk_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices ``(B, k)`` of the k largest scores, best first."""
    return scores.topk(k, dim=1).indices


def topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask ``(B, c)`` of the top-k prediction ``T_k``."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    return mask.scatter_(1, topk_indices(scores, k), True)


def _ranked_relevance(scores: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """``rel_j`` for j = 1..k: float ``(B, k)``, 1 where the j-th ranked label is relevant."""
    return labels.to(scores.dtype).gather(1, topk_indices(scores, k))


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """TkAcc: ``T_k ⊆ Y`` when ``k <= |Y|``, else ``Y ⊆ T_k``; 1.0 or 0.0 per sample."""
    _check(scores, labels, k, need_relevant=False)
    hits = _ranked_relevance(scores, labels, k).sum(dim=1)
    n_rel = labels.to(scores.dtype).sum(dim=1)
    # k <= |Y|: all k ranked labels relevant; k > |Y|: all |Y| relevant labels ranked.
    return (hits == torch.minimum(n_rel, torch.full_like(n_rel, k))).to(scores.dtype)


def precision_at_k(scores: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """P@k = ``|T_k ∩ Y| / k``."""
    _check(scores, labels, k, need_relevant=False)
    return _ranked_relevance(scores, labels, k).sum(dim=1) / k


def ap_at_k(scores: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """AP@k = ``(1 / min(|Y|, k)) Σ_{j<=k} P@j · rel_j``; mAP@k is its mean over samples."""
    _check(scores, labels, k, need_relevant=True)
    rel = _ranked_relevance(scores, labels, k)
    ranks = torch.arange(1, k + 1, dtype=scores.dtype, device=scores.device)
    precision_at_j = rel.cumsum(dim=1) / ranks
    n_rel = labels.to(scores.dtype).sum(dim=1).clamp(max=k)
    return (precision_at_j * rel).sum(dim=1) / n_rel


def ndcg_at_k(scores: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """NDCG@k with binary gains: ``DCG@k / IDCG@k``, discounts ``1 / log2(j + 1)``."""
    _check(scores, labels, k, need_relevant=True)
    rel = _ranked_relevance(scores, labels, k)
    discount = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=scores.dtype, device=scores.device))
    dcg = (rel * discount).sum(dim=1)
    n_ideal = labels.to(torch.long).sum(dim=1).clamp(max=k)
    idcg = discount.cumsum(dim=0)[n_ideal - 1]
    return dcg / idcg


def removed_count(
    clean_scores: torch.Tensor, adv_scores: torch.Tensor, specified: torch.Tensor, k: int
) -> torch.Tensor:
    """ΔN = ``|S ∩ T_k(x)| − |S ∩ T_k(x')|``: specified labels pushed out of the top-k.

    Returns a long tensor ``(B,)``; negative when the attack brought specified labels in.
    """
    _check(clean_scores, specified, k, need_relevant=False)
    if adv_scores.shape != clean_scores.shape:
        raise InputError(
            f"adv_scores must have the shape of clean_scores {tuple(clean_scores.shape)}, "
            f"got {tuple(adv_scores.shape)}"
        )
    spec = specified.bool()
    before = (topk_mask(clean_scores, k) & spec).sum(dim=1)
    after = (topk_mask(adv_scores, k) & spec).sum(dim=1)
    return before - after


def class_average_precision(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Average precision of each class over the samples (the training-time mAP): ``(c,)``.

    Classes without any positive sample get NaN; :func:`mean_average_precision` skips them.
    Ties are broken by sort order, like scikit-learn's ``average_precision_score`` when
    the scores are distinct.
    """
    if scores.dim() != 2 or labels.shape != scores.shape:
        raise InputError(
            f"scores and labels must both have shape (N, c), got {tuple(scores.shape)} and "
            f"{tuple(labels.shape)}"
        )
    order = scores.argsort(dim=0, descending=True)
    rel = labels.to(torch.float64).gather(0, order)
    hits = rel.cumsum(dim=0)
    ranks = torch.arange(1, scores.shape[0] + 1, dtype=torch.float64, device=scores.device)
    n_pos = rel.sum(dim=0)
    ap = ((hits / ranks[:, None]) * rel).sum(dim=0) / n_pos
    return torch.where(n_pos > 0, ap, torch.full_like(ap, float("nan")))


def mean_average_precision(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over classes (with at least one positive) of :func:`class_average_precision`."""
    ap = class_average_precision(scores, labels)
    return float(ap[~ap.isnan()].mean())
