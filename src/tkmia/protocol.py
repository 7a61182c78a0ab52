"""Selecting what to attack: the global (S1) and random (S2) schemes, the targets of the
targeted attack (SPEC §7.3), and eligibility.

Both functions work on a block of images at once: ``labels`` ``(N, c)`` 0/1 and the
model's ``clean_scores`` ``(N, c)``, and return ``(specified (N, c) bool, eligible (N,)
bool)``. ``specified`` is only meaningful where ``eligible`` is set.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from tkmia.errors import InputError
from tkmia.metrics import topk_mask

__all__ = [
    "check_scheme",
    "eligibility_rule",
    "select_global",
    "select_random",
    "select_targets",
    "success_threshold",
]

SCHEMES = ("global", "random")
#: the targeted attack's scheme (SPEC §7.3): its settings hold the target choice in
#: ``group`` and the number of targets in ``n``
TARGETED = "targeted"
#: how the targets are chosen (SPEC §7.3)
TARGET_CHOICES = ("random", "best", "worst")


def check_scheme(scheme: str, k: int, c: int | None, n: int | None, threshold: int | None) -> None:
    """Validate a setting before any work starts.

    Args:
        scheme: ``"global"`` (S1) or ``"random"`` (S2).
        k: the top-k size, ``1 <= k < c``.
        c: the number of classes, or None while it is not known yet (then ``k < c`` is
            left for a second call).
        n: S2's labels drawn per image, ``1 <= n <= k`` (ignored by S1).
        threshold: S2's success threshold ``t``, ``1 <= t <= n`` or None (for n); S1
            takes none.

    Raises:
        InputError: naming the bad value and the range expected.
    """
    if scheme not in SCHEMES and scheme != TARGETED:
        raise InputError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1 or (c is not None and k >= c):
        bound = "1 <= k" if c is None else f"1 <= k < c = {c}"
        raise InputError(f"k must be an integer with {bound}, got {k!r}")
    if scheme != "global":
        if n is None or isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= k:
            raise InputError(
                f"n (labels drawn per image) must satisfy 1 <= n <= k = {k}, got {n!r}"
            )
        if scheme == TARGETED and threshold is not None:
            raise InputError(
                "the targeted scheme's success rule is fixed (every target in the top-k)"
            )
        if threshold is not None and not 1 <= threshold <= n:
            raise InputError(f"threshold must satisfy 1 <= t <= n = {n}, got {threshold!r}")
    elif threshold is not None:
        raise InputError(
            "the global scheme's success rule is fixed (every specified label in the clean "
            "top-k must leave it); --threshold applies to the random scheme only"
        )


def eligibility_rule(scheme: str, k: int, n: int | None = None) -> str:
    """The eligibility rule of a setting in words (for messages and reports).

    Args:
        scheme: ``"global"`` (S1) or ``"random"`` (S2).
        k: the top-k size.
        n: S2's labels drawn per image.

    Returns:
        The rule, e.g. ``"|Y| >= k + |S| = 2 + |S| and some label of S in the clean top-2"``.
    """
    if scheme == "global":
        return f"|Y| >= k + |S| = {k} + |S| and some label of S = Y ∩ G in the clean top-{k}"
    if scheme == TARGETED:
        return f"at least n = {n} labels outside Y (for 'best': outside Y ∪ T_{k}(x))"
    return f"|Y ∩ T_{k}(x)| >= n = {n} and |Y| >= k + n = {k + (n or 0)}"


def success_threshold(scheme: str, n: int | None, threshold: int | None) -> int | None:
    """The ``threshold`` argument the attacks take.

    Args:
        scheme: ``"global"`` or ``"random"``.
        n: S2's labels drawn per image.
        threshold: S2's ``t``, or None for the default ``n``.

    Returns:
        None for S1 (every specified label in the clean top-k must leave it), else ``t``.
    """
    if scheme in ("global", TARGETED):
        return None
    return n if threshold is None else threshold


def _as_masks(labels: torch.Tensor, clean_scores: torch.Tensor) -> torch.Tensor:
    if labels.shape != clean_scores.shape or labels.dim() != 2:
        raise InputError(
            f"labels and clean_scores must both be (N, c), got {tuple(labels.shape)} and "
            f"{tuple(clean_scores.shape)}"
        )
    return labels.bool()


def select_global(
    labels: torch.Tensor, clean_scores: torch.Tensor, group: Sequence[int], k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """S1: ``S = Y ∩ G`` for a fixed label group ``G`` (class indices).

    Eligible when ``|Y| >= k + |S|`` and at least one label of S is in the clean top-k.

    Args:
        labels: ``(N, c)`` 0/1, the relevant labels ``Y``.
        clean_scores: ``(N, c)`` the model's scores of the clean images.
        group: the class indices of ``G``, at least one.
        k: the top-k size.

    Returns:
        ``(specified (N, c) bool, eligible (N,) bool)``.

    Raises:
        InputError: ``labels`` and ``clean_scores`` are not both ``(N, c)``, or ``group``
            is empty.
    """
    relevant = _as_masks(labels, clean_scores)
    if not group:
        raise InputError("a label group must contain at least one label")
    in_group = torch.zeros(labels.shape[1], dtype=torch.bool, device=labels.device)
    in_group[list(group)] = True
    specified = relevant & in_group
    n_spec = specified.sum(dim=1)
    in_top = (specified & topk_mask(clean_scores, k)).sum(dim=1)
    eligible = (relevant.sum(dim=1) >= k + n_spec) & (in_top >= 1)
    return specified, eligible


def select_random(
    labels: torch.Tensor,
    clean_scores: torch.Tensor,
    n: int,
    k: int,
    seed: int,
    indices: Sequence[int] | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """S2: S is ``n`` labels drawn at random from ``Y ∩ T_k(x)``.

    The draw for an image depends only on ``(seed, its dataset index)`` (a NumPy
    ``SeedSequence`` of the pair), never on batching, sharding or resuming. Eligible when
    ``1 <= n <= k``, ``|Y ∩ T_k(x)| >= n`` and ``|Y| >= k + n``.

    Args:
        labels: ``(N, c)`` 0/1, the relevant labels ``Y``.
        clean_scores: ``(N, c)`` the model's scores of the clean images.
        n: labels drawn per image.
        k: the top-k size.
        seed: the run's seed.
        indices: ``N`` dataset indices, one per image.

    Returns:
        ``(specified (N, c) bool, eligible (N,) bool)``; an eligible row has ``n`` labels
        specified.

    Raises:
        InputError: ``labels`` and ``clean_scores`` are not both ``(N, c)``, or not one
            index per image.
    """
    relevant = _as_masks(labels, clean_scores)
    indices = [int(i) for i in indices]
    if len(indices) != labels.shape[0]:
        raise InputError(
            f"need one dataset index per image, got {len(indices)} for {labels.shape[0]}"
        )
    candidates = relevant & topk_mask(clean_scores, k)
    eligible = (candidates.sum(dim=1) >= n) & (relevant.sum(dim=1) >= k + n) & (1 <= n <= k)
    specified = torch.zeros_like(relevant)
    for row in torch.nonzero(eligible).flatten().tolist():
        pool = torch.nonzero(candidates[row]).flatten().tolist()
        rng = np.random.default_rng([seed, indices[row]])
        for j in rng.choice(len(pool), size=n, replace=False):
            specified[row, pool[int(j)]] = True
    return specified, eligible


def select_targets(
    labels: torch.Tensor,
    clean_scores: torch.Tensor,
    n: int,
    k: int,
    choice: str,
    seed: int,
    indices: Sequence[int] | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The targets ``T`` of the targeted attack (SPEC §7.3): ``n`` labels outside ``Y``.

    ``choice``: ``"random"``: drawn uniformly from the labels outside ``Y``, seeded per
    image as S2 (a NumPy generator of ``(seed, dataset index)``); ``"best"``: the ``n``
    highest-scoring labels outside ``Y ∪ T_k(x)``; ``"worst"``: the ``n`` lowest-scoring
    labels outside ``Y``. Eligible when ``1 <= n <= k`` and at least ``n`` labels lie
    outside ``Y`` (for ``"best"``: outside ``Y ∪ T_k(x)``).

    Args:
        labels: ``(N, c)`` 0/1, the relevant labels ``Y``.
        clean_scores: ``(N, c)`` the model's scores of the clean images.
        n: targets per image.
        k: the top-k size.
        choice: one of :data:`TARGET_CHOICES`.
        seed: the run's seed.
        indices: ``N`` dataset indices, one per image.

    Returns:
        ``(targets (N, c) bool, eligible (N,) bool)``; an eligible row has ``n`` targets.

    Raises:
        InputError: a bad ``choice``, ``labels`` and ``clean_scores`` not both ``(N, c)``,
            or not one index per image.
    """
    if choice not in TARGET_CHOICES:
        raise InputError(f"targets must be one of {TARGET_CHOICES}, got {choice!r}")
    relevant = _as_masks(labels, clean_scores)
    indices = [int(i) for i in indices]
    if len(indices) != labels.shape[0]:
        raise InputError(
            f"need one dataset index per image, got {len(indices)} for {labels.shape[0]}"
        )
    pool = ~relevant
    if choice == "best":
        pool = pool & ~topk_mask(clean_scores, k)
    eligible = (pool.sum(dim=1) >= n) & (1 <= n <= k)
    targets = torch.zeros_like(relevant)
    if choice != "random":
        ranked = clean_scores.masked_fill(
            ~pool, float("-inf") if choice == "best" else float("inf")
        )
        top = ranked.topk(min(n, ranked.shape[1]), dim=1, largest=choice == "best").indices
        targets.scatter_(1, top, True)
        return targets & eligible.unsqueeze(1), eligible
    for row in torch.nonzero(eligible).flatten().tolist():
        members = torch.nonzero(pool[row]).flatten().tolist()
        rng = np.random.default_rng([seed, indices[row]])
        for j in rng.choice(len(members), size=n, replace=False):
            targets[row, members[int(j)]] = True
    return targets, eligible
