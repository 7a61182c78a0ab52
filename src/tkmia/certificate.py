"""Certified top-k robustness by randomized smoothing (MultiGuard, SPEC §7.8): pure array
functions, beside the measures.

The smoothed classifier ``g`` predicts the k labels with the largest
``p_i(x) = Pr_η[i ∈ T_{k'}(f(clip(x + η, 0, 1)))]``, ``η ~ N(0, σ² I)``. From ``N`` noisy
copies, per-label counts give one-sided Clopper–Pearson bounds (:func:`label_bounds`);
:func:`certified_intersection` turns them into the certified intersection size ``e(R)``
of MultiGuard's Theorem 1 (Jia et al., NeurIPS 2022) for every radius of a grid, for every
image at once.

The theorem, for one image with relevant set ``Y`` (``d = |Y|``) and one radius ``R``:
let ``a_1 >= a_2 >= ...`` be the lower bounds of the relevant labels and ``b_1 >= b_2 >=
...`` the upper bounds of the others (each list padded with zeros to ``c``). For
``e = 1 .. min(d, k)`` and ``s = k − e + 1``,

* ``LHS(e) = max( Φ(Φ⁻¹(a_e) − R/σ),  max_{u=1..d−e+1} (k'/u) Φ(Φ⁻¹(A_u / k') − R/σ) )``
  with ``A_u = a_e + ... + a_{e+u−1}``;
* ``RHS(e) = min( Φ(Φ⁻¹(b_s) + R/σ),  min_{v=1..s} (k'/v) Φ(Φ⁻¹(B_v / k') + R/σ) )``
  with ``B_v = b_{s−v+1} + ... + b_s``;

and ``e(R)`` is the largest ``e`` with ``LHS(e) > RHS(e)`` (0 — abstain — when none).
``LHS`` falls and ``RHS`` rises with ``R``, so ``e(R)`` never rises with ``R``.

``p_i`` is a probability per label (counts divided by ``N``), so ``Σ_i p_i = k'``: this is
the theorem's normalisation. MultiGuard's reference code divides the counts by their sum
``N·k'`` instead; the two agree at its default ``k' = 1``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy.special import ndtr, ndtri
from scipy.stats import beta

from tkmia.errors import InputError

__all__ = ["certified_intersection", "label_bounds"]

FloatArray = NDArray[np.float64]


def label_bounds(counts: NDArray[np.int64], n: int, alpha: float) -> tuple[FloatArray, FloatArray]:
    """One-sided Clopper–Pearson bounds on every ``p_i``, Bonferroni-corrected over labels.

    Each label gets a lower and an upper bound at level ``α / c``; a certificate uses one
    of the two per label (lower for relevant labels, upper for the others), so all the
    bounds it uses hold together with probability at least ``1 − α``.

    Args:
        counts: ``(B, c)`` integers in ``[0, n]``: how many of the ``n`` noisy copies had
            label ``i`` in the base model's top-k'.
        n: noisy copies per image (>= 1).
        alpha: total failure probability per image, in (0, 1).

    Returns:
        ``(lower, upper)``, each ``(B, c)`` float64 in [0, 1].

    Raises:
        InputError: a shape, a count or ``alpha`` out of range.
    """
    counts = np.asarray(counts)
    if counts.ndim != 2:
        raise InputError(f"counts must have shape (B, c), got {counts.shape}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InputError(f"n (noisy copies) must be a positive integer, got {n!r}")
    if counts.size and (counts.min() < 0 or counts.max() > n):
        raise InputError(f"counts must lie in [0, n={n}]")
    if not 0.0 < alpha < 1.0:
        raise InputError(f"alpha must lie in (0, 1), got {alpha!r}")
    level = alpha / counts.shape[1]
    x = counts.astype(np.float64)
    with np.errstate(invalid="ignore"):  # beta.ppf is nan at a = 0 or b = 0: set below
        lower = np.where(x > 0, beta.ppf(level, x, n - x + 1), 0.0)
        upper = np.where(x < n, beta.ppf(1.0 - level, x + 1, n - x), 1.0)
    return lower.astype(np.float64), upper.astype(np.float64)


def certified_intersection(
    lower: FloatArray,
    upper: FloatArray,
    relevant: NDArray[np.bool_],
    k: int,
    radii: FloatArray,
    sigma: float,
    k_prime: int = 1,
) -> NDArray[np.int64]:
    """MultiGuard's certified intersection size ``e(R)`` for every image and radius.

    Args:
        lower: ``(B, c)`` lower bounds on ``p_i`` (used for relevant labels).
        upper: ``(B, c)`` upper bounds on ``p_i`` (used for the other labels).
        relevant: ``(B, c)`` booleans, the relevant set ``Y`` of each image.
        k: the smoothed classifier's top-k (``1 <= k <= c``).
        radii: ``(R,)`` L2 radii (>= 0), in pixel units of images in [0, 1].
        sigma: the noise's standard deviation (> 0), same units.
        k_prime: the base model's top-k' that the counts were taken at (>= 1).

    Returns:
        ``(B, R)`` int64: ``e(R)``, the number of relevant labels guaranteed to stay in the
        smoothed top-k for every perturbation of L2 norm at most ``R``.

    Raises:
        InputError: shapes or values out of range.
    """
    lower, upper, relevant, radii = _check(lower, upper, relevant, k, radii, sigma, k_prime)
    b, c = lower.shape
    # a: relevant lower bounds, descending; bb: the others' upper bounds, descending (0-padded)
    a = -np.sort(-np.where(relevant, lower, 0.0), axis=1)
    bb = -np.sort(-np.where(relevant, 0.0, upper), axis=1)
    d = relevant.sum(axis=1)  # (B,)
    shift = (radii / sigma)[None, :, None, None]  # (1, R, 1, 1)
    es = np.arange(1, k + 1)  # candidate e, (E,)
    steps = np.arange(1, c + 1)  # u or v, (c,)

    # LHS: start index e-1, run lengths u = 1..d-e+1
    cum_a = np.concatenate([np.zeros((b, 1)), np.cumsum(a, axis=1)], axis=1)  # (B, c+1)
    start = (es - 1)[:, None]  # (E, 1)
    stop = np.minimum(start + steps[None, :], c)  # (E, c)
    run_a = cum_a[:, stop] - cum_a[:, start]  # (B, E, c)
    u_ok = steps[None, None, :] <= (d[:, None, None] - es[None, :, None] + 1)
    grouped = (k_prime / steps) * ndtr(_ppf(run_a / k_prime)[:, None] - shift)  # (B,R,E,c)
    grouped = np.where(u_ok[:, None], grouped, -np.inf).max(axis=3)
    single = ndtr(_ppf(a[:, es - 1])[:, None, :] - shift[..., 0])  # (B, R, E)
    lhs = np.maximum(single, grouped)

    # RHS: s = k-e+1, runs ending at index s-1 of lengths v = 1..s
    s = k - es + 1  # (E,)
    cum_b = np.concatenate([np.zeros((b, 1)), np.cumsum(bb, axis=1)], axis=1)
    end = s[:, None]  # (E, 1)
    begin = np.maximum(end - steps[None, :], 0)  # (E, c)
    run_b = cum_b[:, end] - cum_b[:, begin]  # (B, E, c)
    v_ok = steps[None, :] <= s[:, None]  # (E, c)
    grouped_b = (k_prime / steps) * ndtr(_ppf(run_b / k_prime)[:, None] + shift)
    grouped_b = np.where(v_ok[None, None], grouped_b, np.inf).min(axis=3)
    single_b = ndtr(_ppf(bb[:, s - 1])[:, None, :] + shift[..., 0])  # s <= k <= c
    rhs = np.minimum(single_b, grouped_b)

    ok = (lhs > rhs) & (es[None, None, :] <= d[:, None, None])  # (B, R, E)
    certified: NDArray[np.int64] = np.where(ok, es[None, None, :], 0).max(axis=2).astype(np.int64)
    return certified


def _ppf(p: FloatArray) -> FloatArray:
    """``Φ⁻¹`` of probabilities, clipped into [0, 1] first (sums of bounds may round over)."""
    return ndtri(np.clip(p, 0.0, 1.0))  # type: ignore[no-any-return]


def _check(
    lower: FloatArray,
    upper: FloatArray,
    relevant: NDArray[np.bool_],
    k: int,
    radii: FloatArray,
    sigma: float,
    k_prime: int,
) -> tuple[FloatArray, FloatArray, NDArray[np.bool_], FloatArray]:
    lower = np.asarray(lower, dtype=np.float64)
    upper = np.asarray(upper, dtype=np.float64)
    relevant = np.asarray(relevant, dtype=bool)
    radii = np.asarray(radii, dtype=np.float64).reshape(-1)
    if lower.ndim != 2 or lower.shape != upper.shape or lower.shape != relevant.shape:
        raise InputError(
            "lower, upper and relevant must share one shape (B, c), got "
            f"{lower.shape}, {upper.shape} and {relevant.shape}"
        )
    for name, p in (("lower", lower), ("upper", upper)):
        if p.size and not (np.isfinite(p).all() and p.min() >= 0.0 and p.max() <= 1.0):
            raise InputError(f"{name} bounds must be probabilities in [0, 1]")
    c = lower.shape[1]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= c:
        raise InputError(f"k must be an integer with 1 <= k <= c = {c}, got {k!r}")
    if isinstance(k_prime, bool) or not isinstance(k_prime, (int, np.integer)) or k_prime < 1:
        raise InputError(f"k_prime must be a positive integer, got {k_prime!r}")
    if not (np.isfinite(radii).all() and (radii >= 0).all()):
        raise InputError("radii must be finite and >= 0")
    if not (np.isfinite(sigma) and sigma > 0):
        raise InputError(f"sigma must be a positive number, got {sigma!r}")
    return lower, upper, relevant, radii
