"""Per-image measures as pure functions on tensors: the top-k ranking measures (TkAcc,
P@k, AP@k, NDCG@k), ΔN, the training-time mAP, and the size and visibility of a
perturbation (L2, L∞, PSNR, SSIM). The label-free statistics of the scores are in
:mod:`tkmia.score_stats`.

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
    "l2_norm",
    "linf_norm",
    "mean_average_precision",
    "ndcg_at_k",
    "precision_at_k",
    "psnr",
    "removed_count",
    "ssim",
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
    """Indices of the k largest scores, best first.

    Args:
        scores: ``(B, c)``.
        k: ``1 <= k <= c``.

    Returns:
        ``(B, k)`` long.
    """
    return scores.topk(k, dim=1).indices


def topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The top-k prediction ``T_k`` as a mask.

    Args:
        scores: ``(B, c)``.
        k: ``1 <= k <= c``.

    Returns:
        ``(B, c)`` bool, ``k`` entries set per row (ties: :func:`torch.topk`'s choice).
    """
    mask = torch.zeros_like(scores, dtype=torch.bool)
    return mask.scatter_(1, topk_indices(scores, k), True)


def _ranked_relevance(scores: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """``rel_j`` for j = 1..k: float ``(B, k)``, 1 where the j-th ranked label is relevant."""
    return labels.to(scores.dtype).gather(1, topk_indices(scores, k))


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """TkAcc: ``T_k ⊆ Y`` when ``k <= |Y|``, else ``Y ⊆ T_k``; 1.0 or 0.0 per sample.

    Args:
        scores: ``(B, c)`` real scores (only their order matters).
        labels: ``(B, c)`` 0/1, the relevant labels ``Y``.
        k: ``1 <= k <= c``.

    Returns:
        ``(B,)`` in ``scores``' dtype, 1.0 or 0.0.

    Raises:
        InputError: bad shapes, ``k`` out of range, labels other than 0/1.
    """
    _check(scores, labels, k, need_relevant=False)
    hits = _ranked_relevance(scores, labels, k).sum(dim=1)
    n_rel = labels.to(scores.dtype).sum(dim=1)
    # k <= |Y|: all k ranked labels relevant; k > |Y|: all |Y| relevant labels ranked.
    return (hits == torch.minimum(n_rel, torch.full_like(n_rel, k))).to(scores.dtype)


def precision_at_k(scores: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """P@k = ``|T_k ∩ Y| / k``.

    Args:
        scores: ``(B, c)`` real scores (only their order matters).
        labels: ``(B, c)`` 0/1, the relevant labels ``Y``.
        k: ``1 <= k <= c``.

    Returns:
        ``(B,)`` in ``scores``' dtype, in [0, 1].

    Raises:
        InputError: bad shapes, ``k`` out of range, labels other than 0/1.
    """
    _check(scores, labels, k, need_relevant=False)
    return _ranked_relevance(scores, labels, k).sum(dim=1) / k


def ap_at_k(scores: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """AP@k = ``(1 / min(|Y|, k)) Σ_{j<=k} P@j · rel_j``; mAP@k is its mean over samples.

    Args:
        scores: ``(B, c)`` real scores (only their order matters).
        labels: ``(B, c)`` 0/1, the relevant labels ``Y``.
        k: ``1 <= k <= c``.

    Returns:
        ``(B,)`` in ``scores``' dtype, in [0, 1].

    Raises:
        InputError: bad shapes, ``k`` out of range, labels other than 0/1, or a sample
            without a relevant label.
    """
    _check(scores, labels, k, need_relevant=True)
    rel = _ranked_relevance(scores, labels, k)
    ranks = torch.arange(1, k + 1, dtype=scores.dtype, device=scores.device)
    precision_at_j = rel.cumsum(dim=1) / ranks
    n_rel = labels.to(scores.dtype).sum(dim=1).clamp(max=k)
    return (precision_at_j * rel).sum(dim=1) / n_rel


def ndcg_at_k(scores: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """NDCG@k with binary gains: ``DCG@k / IDCG@k``, discounts ``1 / log2(j + 1)``.

    Args:
        scores: ``(B, c)`` real scores (only their order matters).
        labels: ``(B, c)`` 0/1, the relevant labels ``Y``.
        k: ``1 <= k <= c``.

    Returns:
        ``(B,)`` in ``scores``' dtype, in [0, 1].

    Raises:
        InputError: bad shapes, ``k`` out of range, labels other than 0/1, or a sample
            without a relevant label.
    """
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

    Args:
        clean_scores: ``(B, c)`` scores of the clean images.
        adv_scores: ``(B, c)`` scores of the perturbed images.
        specified: ``(B, c)`` 0/1, the labels ``S`` to hide.
        k: ``1 <= k <= c``.

    Returns:
        ``(B,)`` long; negative when the attack brought specified labels in.

    Raises:
        InputError: bad shapes, ``k`` out of range or ``specified`` other than 0/1.
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

    Args:
        scores: ``(N, c)`` scores of ``N`` samples.
        labels: ``(N, c)`` 0/1.

    Returns:
        ``(c,)`` float64.

    Raises:
        InputError: ``scores`` and ``labels`` are not both ``(N, c)``.
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


def mean_average_precision(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over classes (with at least one positive) of :func:`class_average_precision`.

    Args:
        scores: ``(N, c)`` scores of ``N`` samples.
        labels: ``(N, c)`` 0/1.

    Returns:
        A 0-dim float64 tensor (``float(...)`` for a number), like every measure here.

    Raises:
        InputError: ``scores`` and ``labels`` are not both ``(N, c)``.
    """
    ap = class_average_precision(scores, labels)
    return ap[~ap.isnan()].mean()


# ------------------------------------------------------------ perturbation size and quality
def _check_pair(clean: torch.Tensor, adv: torch.Tensor) -> None:
    if clean.shape != adv.shape or clean.dim() != 4:
        raise InputError(
            f"expected two image batches of the same shape (B, C, H, W), got "
            f"{tuple(clean.shape)} and {tuple(adv.shape)}"
        )


def l2_norm(clean: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
    """``‖x' − x‖₂`` over all pixels of each image.

    Args:
        clean: ``(B, C, H, W)`` images, pixels in [0, 1].
        adv: the perturbed images, the same shape.

    Returns:
        ``(B,)`` in the images' dtype.

    Raises:
        InputError: the two are not image batches of the same shape.
    """
    _check_pair(clean, adv)
    norms: torch.Tensor = (adv - clean).flatten(1).norm(dim=1)
    return norms


def linf_norm(clean: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
    """``‖x' − x‖∞``: the largest change of any pixel of each image.

    Args:
        clean: ``(B, C, H, W)`` images, pixels in [0, 1].
        adv: the perturbed images, the same shape.

    Returns:
        ``(B,)`` in the images' dtype.

    Raises:
        InputError: the two are not image batches of the same shape.
    """
    _check_pair(clean, adv)
    return (adv - clean).flatten(1).abs().amax(dim=1)


def psnr(clean: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB for pixels in [0, 1], per sample ``(B,)``.

    Identical images (MSE 0) get ``inf``'s stand-in of 200 dB (MSE clamped at 1e-20).

    Args:
        clean: ``(B, C, H, W)`` images, pixels in [0, 1].
        adv: the perturbed images, the same shape.

    Returns:
        ``(B,)`` float32, in dB.

    Raises:
        InputError: the two are not image batches of the same shape.
    """
    _check_pair(clean, adv)
    mse = (adv - clean).double().pow(2).flatten(1).mean(dim=1)
    return (10 * torch.log10(1.0 / mse.clamp(min=1e-20))).float()


#: SSIM constants of Wang et al. (2004) for pixels in [0, 1]: a Gaussian window of
#: side 11 and standard deviation 1.5, K1 = 0.01, K2 = 0.03.
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03


def _gaussian_taps(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(clean: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) per sample ``(B,)``, pixels in [0, 1].

    The standard Gaussian-window SSIM: local means, variances and covariance weighted by
    an 11 × 11 Gaussian (σ = 1.5), ``C1 = (0.01)^2``, ``C2 = (0.03)^2``, the SSIM map
    computed per channel at every position where the window fits inside the image, then
    averaged over positions and channels. This equals scikit-image's
    ``structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1, channel_axis=0)``. Images smaller than
    11 pixels use the largest odd window that fits. Computed in float64 with the
    Gaussian applied as two 1-D passes (it is separable).

    Args:
        clean: ``(B, C, H, W)`` images, pixels in [0, 1].
        adv: the perturbed images, the same shape.

    Returns:
        ``(B,)`` float32, at most 1.

    Raises:
        InputError: the two are not image batches of the same shape.
    """
    _check_pair(clean, adv)
    b, c, h, w = clean.shape
    size = min(SSIM_WINDOW, h, w)
    size -= 1 - size % 2  # odd
    x, y = clean.double(), adv.double()
    taps = _gaussian_taps(size, SSIM_SIGMA).to(x.device)
    down = taps.view(1, 1, size, 1).expand(c, 1, size, 1).contiguous()
    across = taps.view(1, 1, 1, size).expand(c, 1, 1, size).contiguous()

    def blur(t: torch.Tensor) -> torch.Tensor:
        conv = torch.nn.functional.conv2d
        return conv(conv(t, down, groups=c), across, groups=c)

    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cxy = blur(x * y) - mx * my
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    smap = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return smap.flatten(1).mean(dim=1).float()
