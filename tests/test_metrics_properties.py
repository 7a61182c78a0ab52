"""Property tests (hypothesis) of the ranking measures (TkAcc, P@k, AP@k, NDCG@k) and of ΔN."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tkmia.metrics import (
    ap_at_k,
    ndcg_at_k,
    precision_at_k,
    removed_count,
    topk_accuracy,
)

SETTINGS = settings(max_examples=60, deadline=None)

MEASURES = [topk_accuracy, precision_at_k, ap_at_k, ndcg_at_k]


@st.composite
def ranking_case(draw, *, max_c: int = 12, permutation_scores: bool = False):
    """float64 scores ``(B, c)`` without ties in a row, 0/1 labels with |Y| >= 1, and k."""
    c = draw(st.integers(2, max_c))
    b = draw(st.integers(1, 4))
    rows, labels = [], []
    for _ in range(b):
        if permutation_scores:
            perm = draw(st.permutations(range(c)))
            rows.append([0.37 * (p - c / 2) for p in perm])
        else:
            rows.append(
                draw(
                    hnp.arrays(
                        np.float64,
                        (c,),
                        elements=st.floats(-50, 50, allow_nan=False, allow_subnormal=False),
                        unique=True,
                    )
                ).tolist()
            )
        y = draw(st.lists(st.booleans(), min_size=c, max_size=c).filter(any))
        labels.append([1.0 if v else 0.0 for v in y])
    k = draw(st.integers(1, c))
    return (
        torch.tensor(rows, dtype=torch.float64),
        torch.tensor(labels, dtype=torch.float64),
        k,
    )


def _n_hits(scores: torch.Tensor, labels: torch.Tensor, k: int) -> np.ndarray:
    """|T_k ∩ Y| per row, via numpy's argsort (independent of torch.topk)."""
    order = np.argsort(-scores.numpy(), axis=1, kind="stable")[:, :k]
    return np.take_along_axis(labels.numpy(), order, axis=1).sum(axis=1)


# --------------------------------------------------------------------------------------
# Ranges and relations between the measures
# --------------------------------------------------------------------------------------


@SETTINGS
@given(ranking_case())
def test_values_in_unit_interval(case) -> None:
    scores, labels, k = case
    for fn in MEASURES:
        v = fn(scores, labels, k)
        assert v.shape == (scores.shape[0],)
        assert not v.isnan().any()
        assert ((v >= 0) & (v <= 1 + 1e-12)).all(), fn.__name__
    acc = topk_accuracy(scores, labels, k)
    assert set(acc.tolist()) <= {0.0, 1.0}


@SETTINGS
@given(ranking_case())
def test_precision_times_k_counts_relevant_in_top_k(case) -> None:
    scores, labels, k = case
    got = (precision_at_k(scores, labels, k) * k).numpy()
    np.testing.assert_allclose(got, _n_hits(scores, labels, k), atol=1e-12)


@SETTINGS
@given(ranking_case())
def test_tkacc_is_one_exactly_when_min_of_y_and_k_hits(case) -> None:
    # k <= |Y|: T_k ⊆ Y  <=>  k hits;  k > |Y|: Y ⊆ T_k  <=>  |Y| hits.
    scores, labels, k = case
    hits = _n_hits(scores, labels, k)
    m = np.minimum(labels.numpy().sum(axis=1), k)
    want = (hits == m).astype(np.float64)
    np.testing.assert_array_equal(topk_accuracy(scores, labels, k).numpy(), want)


@SETTINGS
@given(ranking_case())
def test_ap_bounded_by_normalised_hits_and_perfect_iff_ndcg_perfect(case) -> None:
    scores, labels, k = case
    hits = _n_hits(scores, labels, k)
    m = np.minimum(labels.numpy().sum(axis=1), k)
    ap = ap_at_k(scores, labels, k).numpy()
    ndcg = ndcg_at_k(scores, labels, k).numpy()
    acc = topk_accuracy(scores, labels, k).numpy()
    # each P@j <= 1, so AP@k <= hits / min(|Y|, k)
    assert (ap <= hits / m + 1e-12).all()
    # no hit in the top k <=> AP@k = 0 <=> NDCG@k = 0
    np.testing.assert_array_equal(hits == 0, ap == 0)
    np.testing.assert_array_equal(hits == 0, ndcg == 0)
    # AP@k = 1 <=> NDCG@k = 1 <=> the first min(|Y|, k) ranks are all relevant
    order = np.argsort(-scores.numpy(), axis=1)
    ranked = np.take_along_axis(labels.numpy(), order, axis=1)
    perfect = np.array([ranked[i, : int(m[i])].all() for i in range(len(m))])
    np.testing.assert_array_equal(np.isclose(ap, 1.0, rtol=0, atol=1e-12), perfect)
    np.testing.assert_array_equal(np.isclose(ndcg, 1.0, rtol=0, atol=1e-12), perfect)
    # ... and then TkAcc = 1 (not conversely)
    assert (acc[perfect] == 1).all()


@SETTINGS
@given(ranking_case())
def test_perfect_ranking(case) -> None:
    # Put every relevant label above every irrelevant one, keeping the order within groups.
    scores, labels, k = case
    ranked_scores = scores + 1000.0 * labels
    n_rel = labels.sum(dim=1)
    m = torch.clamp(n_rel, max=k)
    torch.testing.assert_close(precision_at_k(ranked_scores, labels, k), m / k)
    ones = torch.ones(scores.shape[0], dtype=torch.float64)
    torch.testing.assert_close(topk_accuracy(ranked_scores, labels, k), ones)
    torch.testing.assert_close(ap_at_k(ranked_scores, labels, k), ones)
    torch.testing.assert_close(ndcg_at_k(ranked_scores, labels, k), ones)


@SETTINGS
@given(ranking_case())
def test_worst_ranking(case) -> None:
    # Every relevant label below every irrelevant one: no hit when |Y| <= c - k.
    scores, labels, k = case
    worst = scores - 1000.0 * labels
    c = scores.shape[1]
    n_rel = labels.sum(dim=1)
    expected_hits = torch.clamp(n_rel - (c - k), min=0)
    torch.testing.assert_close(precision_at_k(worst, labels, k), expected_hits / k)
    no_hit = expected_hits == 0
    assert (ap_at_k(worst, labels, k)[no_hit] == 0).all()
    assert (ndcg_at_k(worst, labels, k)[no_hit] == 0).all()


@SETTINGS
@given(ranking_case())
def test_k_equals_c(case) -> None:
    scores, labels, _ = case
    c = scores.shape[1]
    torch.testing.assert_close(precision_at_k(scores, labels, c), labels.sum(dim=1) / c)
    assert (topk_accuracy(scores, labels, c) == 1).all()  # Y ⊆ T_c = everything


@SETTINGS
@given(ranking_case())
def test_hits_nondecreasing_in_k(case) -> None:
    scores, labels, _ = case
    c = scores.shape[1]
    hits = torch.stack([precision_at_k(scores, labels, k) * k for k in range(1, c + 1)])
    assert (hits.diff(dim=0) >= -1e-9).all()
    assert (hits.diff(dim=0) <= 1 + 1e-9).all()


# --------------------------------------------------------------------------------------
# Invariances and monotonicity
# --------------------------------------------------------------------------------------

TRANSFORMS = {
    "exp": torch.exp,
    "affine": lambda x: 3 * x + 1,
    "cube": lambda x: x**3,
    "sigmoid": torch.sigmoid,
}


@SETTINGS
@given(ranking_case(permutation_scores=True), st.sampled_from(sorted(TRANSFORMS)))
def test_invariant_under_strictly_increasing_transforms(case, name: str) -> None:
    scores, labels, k = case
    t = TRANSFORMS[name](scores)
    for row in t:
        assert len(set(row.tolist())) == row.numel()  # the transform kept them distinct
    for fn in MEASURES:
        torch.testing.assert_close(fn(t, labels, k), fn(scores, labels, k), msg=fn.__name__)


@SETTINGS
@given(ranking_case(permutation_scores=True))
def test_decreasing_transform_reverses_the_ranking(case) -> None:
    # T_k(-s) is the bottom k of s: its hits are |Y| minus the hits of the top c - k.
    scores, labels, k = case
    c = scores.shape[1]
    n_rel = labels.sum(dim=1)
    hits_rev = precision_at_k(-scores, labels, k) * k
    hits_top = (precision_at_k(scores, labels, c - k) * (c - k)) if k < c else 0 * n_rel
    torch.testing.assert_close(hits_rev, n_rel - hits_top)


@SETTINGS
@given(ranking_case(), st.randoms(use_true_random=False))
def test_invariant_under_class_permutation(case, rnd) -> None:
    scores, labels, k = case
    perm = list(range(scores.shape[1]))
    rnd.shuffle(perm)
    for fn in MEASURES:
        torch.testing.assert_close(
            fn(scores[:, perm], labels[:, perm], k), fn(scores, labels, k), msg=fn.__name__
        )


@SETTINGS
@given(ranking_case(), st.randoms(use_true_random=False))
def test_rows_are_independent(case, rnd) -> None:
    scores, labels, k = case
    order = list(range(scores.shape[0]))
    rnd.shuffle(order)
    for fn in MEASURES:
        torch.testing.assert_close(
            fn(scores[order], labels[order], k), fn(scores, labels, k)[order], msg=fn.__name__
        )


@SETTINGS
@given(ranking_case(), st.data())
def test_promoting_a_relevant_label_never_hurts(case, data) -> None:
    # Swap the scores of a relevant label and of an irrelevant one ranked above it.
    scores, labels, k = case
    before = {fn.__name__: fn(scores, labels, k) for fn in MEASURES}
    promoted = scores.clone()
    for i in range(scores.shape[0]):
        rel = [j for j in range(scores.shape[1]) if labels[i, j] == 1]
        pairs = [
            (r, q)
            for r in rel
            for q in range(scores.shape[1])
            if labels[i, q] == 0 and scores[i, q] > scores[i, r]
        ]
        if pairs:
            r, q = data.draw(st.sampled_from(pairs))
            promoted[i, r], promoted[i, q] = scores[i, q], scores[i, r]
    for fn in MEASURES:
        after = fn(promoted, labels, k)
        assert (after >= before[fn.__name__] - 1e-12).all(), fn.__name__


# --------------------------------------------------------------------------------------
# ΔN (removed_count): |S ∩ T_k(x)| − |S ∩ T_k(x')|
# --------------------------------------------------------------------------------------


@st.composite
def removed_case(draw):
    scores, spec, k = draw(ranking_case())
    adv_rows = []
    for _ in range(scores.shape[0]):
        adv_rows.append(draw(st.permutations(range(scores.shape[1]))))
    adv = torch.tensor(adv_rows, dtype=torch.float64)
    # sometimes an empty specified set
    if draw(st.booleans()) and draw(st.booleans()):
        spec = torch.zeros_like(spec)
    return scores, adv, spec, k


def _topk_sets(scores: torch.Tensor, k: int) -> list[set[int]]:
    order = np.argsort(-scores.numpy(), axis=1)[:, :k]
    return [set(row.tolist()) for row in order]


@SETTINGS
@given(removed_case())
def test_removed_count_bounds_and_decomposition(case) -> None:
    clean, adv, spec, k = case
    dn = removed_count(clean, adv, spec, k)
    assert dn.dtype == torch.long
    for i, (t_clean, t_adv) in enumerate(
        zip(_topk_sets(clean, k), _topk_sets(adv, k), strict=True)
    ):
        s = {j for j in range(spec.shape[1]) if spec[i, j] == 1}
        pushed_out = len(s & (t_clean - t_adv))
        brought_in = len(s & (t_adv - t_clean))
        v = int(dn[i])
        assert v == pushed_out - brought_in
        # bounds: −|S ∩ T_k(x')| <= ΔN <= |S ∩ T_k(x)| <= min(k, |S|)
        assert -len(s & t_adv) <= v <= len(s & t_clean) <= min(k, len(s))
        # ΔN never exceeds the number of specified labels that left the top-k
        assert v <= pushed_out
        if not s:
            assert v == 0


@SETTINGS
@given(removed_case())
def test_removed_count_identities(case) -> None:
    clean, adv, spec, k = case
    zero = torch.zeros(clean.shape[0], dtype=torch.long)
    assert torch.equal(removed_count(clean, clean, spec, k), zero)
    assert torch.equal(removed_count(adv, adv.exp(), spec, k), zero)
    assert torch.equal(removed_count(adv, clean, spec, k), -removed_count(clean, adv, spec, k))
    # removing everything specified from the top: ΔN = |S ∩ T_k(x)|
    pushed = adv - 1000.0 * spec
    c = clean.shape[1]
    if (spec.sum(dim=1) <= c - k).all():
        want = torch.tensor(
            [
                len(t & {j for j in range(c) if spec[i, j] == 1})
                for i, t in enumerate(_topk_sets(clean, k))
            ],
            dtype=torch.long,
        )
        assert torch.equal(removed_count(clean, pushed, spec, k), want)


@SETTINGS
@given(removed_case(), st.data())
def test_removed_count_is_additive(case, data) -> None:
    # ΔN(x, x'') = ΔN(x, x') + ΔN(x', x'')
    clean, adv, spec, k = case
    c = clean.shape[1]
    third = torch.tensor(
        [data.draw(st.permutations(range(c))) for _ in range(clean.shape[0])],
        dtype=torch.float64,
    )
    torch.testing.assert_close(
        removed_count(clean, third, spec, k),
        removed_count(clean, adv, spec, k) + removed_count(adv, third, spec, k),
    )
