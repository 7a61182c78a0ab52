"""Ranking measures (TkAcc, P@k, AP@k, NDCG@k) against scikit-learn, plain-Python loops
and hand-made cases."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, ndcg_score

from tkmia.errors import InputError
from tkmia.metrics import (
    ap_at_k,
    class_average_precision,
    mean_average_precision,
    ndcg_at_k,
    precision_at_k,
    removed_count,
    topk_accuracy,
    topk_indices,
    topk_mask,
)

# --------------------------------------------------------------------------------------
# Plain-Python references, written straight from the definitions in metrics.py.
# --------------------------------------------------------------------------------------


def _ranking(scores: list[float]) -> list[int]:
    """Class indices sorted by score, best first (scores are distinct)."""
    return sorted(range(len(scores)), key=lambda i: -scores[i])


def _top_k(scores: list[float], k: int) -> set[int]:
    return set(_ranking(scores)[:k])


def _relevant(labels: list[float]) -> set[int]:
    return {i for i, y in enumerate(labels) if y == 1}


def _tkacc_loop(scores: list[float], labels: list[float], k: int) -> float:
    t_k, y = _top_k(scores, k), _relevant(labels)
    if k <= len(y):
        return 1.0 if t_k <= y else 0.0
    return 1.0 if y <= t_k else 0.0


def _precision_loop(scores: list[float], labels: list[float], k: int) -> float:
    return len(_top_k(scores, k) & _relevant(labels)) / k


def _ap_loop(scores: list[float], labels: list[float], k: int) -> float:
    y = _relevant(labels)
    ranked = _ranking(scores)
    total = 0.0
    for j in range(1, k + 1):
        rel_j = 1.0 if ranked[j - 1] in y else 0.0
        p_at_j = len(set(ranked[:j]) & y) / j
        total += p_at_j * rel_j
    return total / min(len(y), k)


def _ndcg_loop(scores: list[float], labels: list[float], k: int) -> float:
    y = _relevant(labels)
    ranked = _ranking(scores)
    dcg = sum((1.0 if ranked[j - 1] in y else 0.0) / math.log2(j + 1) for j in range(1, k + 1))
    idcg = sum(1.0 / math.log2(j + 1) for j in range(1, min(len(y), k) + 1))
    return dcg / idcg


def _removed_loop(clean: list[float], adv: list[float], specified: list[float], k: int) -> int:
    s = _relevant(specified)
    return len(s & _top_k(clean, k)) - len(s & _top_k(adv, k))


def _class_ap_loop(column_scores: list[float], column_labels: list[float]) -> float:
    """Non-interpolated AP of one class over the samples: mean precision at each positive."""
    order = _ranking(column_scores)
    hits, total = 0, 0.0
    for rank, i in enumerate(order, start=1):
        if column_labels[i] == 1:
            hits += 1
            total += hits / rank
    return total / hits


# --------------------------------------------------------------------------------------
# Random cases with distinct scores and every regime |Y| < k, |Y| = k, |Y| > k.
# --------------------------------------------------------------------------------------


def _label_sizes(c: int) -> list[int]:
    sizes = {1, 2, c // 2, c - 2, c - 1, c}
    return sorted(n for n in sizes if 1 <= n <= c)


def _random_case(c: int, seed: int, reps: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of float64 scores without ties and labels with each size of ``_label_sizes``."""
    g = torch.Generator().manual_seed(seed)
    sizes = _label_sizes(c) * reps
    b = len(sizes)
    scores = torch.randn(b, c, generator=g, dtype=torch.float64)
    labels = torch.zeros(b, c, dtype=torch.float64)
    for i, n_rel in enumerate(sizes):
        labels[i, torch.randperm(c, generator=g)[:n_rel]] = 1
    for row in scores:
        assert len(set(row.tolist())) == c  # no ties
    return scores, labels


def _ks(c: int) -> list[int]:
    if c <= 20:
        return list(range(1, c + 1))
    return [1, 2, 3, 5, 8, 10, 20, 40, 60, 79, 80, 81]


CASES = [(c, k) for c in (5, 20, 81) for k in _ks(c)]

MEASURES = {
    "tkacc": (topk_accuracy, _tkacc_loop),
    "precision": (precision_at_k, _precision_loop),
    "ap": (ap_at_k, _ap_loop),
    "ndcg": (ndcg_at_k, _ndcg_loop),
}


def test_cases_cover_all_label_size_regimes() -> None:
    for c, k in CASES:
        sizes = _exact_size_case(c, k, seed=0)[1].sum(dim=1).long().tolist()
        assert k in sizes
        if k > 1:
            assert k - 1 in sizes  # |Y| < k
        if k < c:
            assert k + 1 in sizes  # |Y| > k


def _exact_size_case(c: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three rows with |Y| = k - 1 (if >= 1), k, k + 1 (if <= c)."""
    g = torch.Generator().manual_seed(1000 * c + k + seed)
    sizes = [n for n in (k - 1, k, k + 1) if 1 <= n <= c]
    scores = torch.randn(len(sizes), c, generator=g, dtype=torch.float64)
    labels = torch.zeros(len(sizes), c, dtype=torch.float64)
    for i, n_rel in enumerate(sizes):
        labels[i, torch.randperm(c, generator=g)[:n_rel]] = 1
    return scores, labels


@pytest.mark.parametrize("name", sorted(MEASURES))
@pytest.mark.parametrize(("c", "k"), CASES)
def test_measure_matches_loop(name: str, c: int, k: int) -> None:
    fn, loop = MEASURES[name]
    for scores, labels in (_random_case(c, seed=c), _exact_size_case(c, k, seed=0)):
        got = fn(scores, labels, k)
        assert got.shape == (scores.shape[0],)
        assert got.dtype == torch.float64
        want = [loop(s.tolist(), y.tolist(), k) for s, y in zip(scores, labels, strict=True)]
        torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))


@pytest.mark.parametrize(("c", "k"), CASES)
def test_ndcg_matches_sklearn(c: int, k: int) -> None:
    for scores, labels in (_random_case(c, seed=c + 1), _exact_size_case(c, k, seed=1)):
        got = ndcg_at_k(scores, labels, k)
        want = [
            ndcg_score(y.numpy()[None], s.numpy()[None], k=k)
            for s, y in zip(scores, labels, strict=True)
        ]
        torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))


def test_float32_scores_give_the_same_values() -> None:
    scores, labels = _random_case(20, seed=7)
    for name, (fn, _) in MEASURES.items():
        for k in (1, 3, 10, 19):
            got32 = fn(scores.float(), labels.float(), k)
            assert got32.dtype == torch.float32, name
            torch.testing.assert_close(got32.double(), fn(scores, labels, k), rtol=1e-6, atol=1e-6)


def test_bool_and_int_labels_are_accepted() -> None:
    scores, labels = _random_case(20, seed=8)
    for name, (fn, _) in MEASURES.items():
        want = fn(scores, labels, 4)
        torch.testing.assert_close(fn(scores, labels.bool(), 4), want, msg=name)
        torch.testing.assert_close(fn(scores, labels.long(), 4), want, msg=name)


# --------------------------------------------------------------------------------------
# Hand-made cases, values computed by hand from the definitions.
# --------------------------------------------------------------------------------------

S5 = [0.9, 0.8, 0.1, 0.05, 0.0]  # ranking: 0, 1, 2, 3, 4

HAND = [
    # labels, k, TkAcc, P@k, AP@k, NDCG@k
    # Y = {0, 2}, k = 2 = |Y|: T_2 = {0, 1} not within Y.  AP = (1·1 + 0) / 2.
    # NDCG = 1 / (1 + 1/log2 3).
    ([1, 0, 1, 0, 0], 2, 0.0, 0.5, 0.5, 0.6131471927654584),
    # k = 3 > |Y| = 2: Y within T_3.  AP = (1 + 2/3) / 2.  NDCG = 1.5 / (1 + 1/log2 3).
    ([1, 0, 1, 0, 0], 3, 1.0, 2 / 3, 5 / 6, 0.9197207891481876),
    ([1, 0, 1, 0, 0], 1, 1.0, 1.0, 1.0, 1.0),
    # the only relevant label is ranked last
    ([0, 0, 0, 0, 1], 4, 0.0, 0.0, 0.0, 0.0),
    # k = 5 = c: AP = P@5 · 1 / 1 = 1/5;  NDCG = (1/log2 6) / 1
    ([0, 0, 0, 0, 1], 5, 1.0, 0.2, 0.2, 0.38685280723454163),
    # |Y| = 4 > k = 2, top-2 all relevant
    ([1, 1, 1, 1, 0], 2, 1.0, 1.0, 1.0, 1.0),
    # |Y| = 4 > k = 3, rank 3 irrelevant: AP = (1 + 1 + 0) / 3;
    # NDCG = (1 + 1/log2 3) / (1 + 1/log2 3 + 1/2)
    ([1, 1, 0, 1, 1], 3, 0.0, 2 / 3, 2 / 3, 0.7653606369886217),
    # |Y| = 3 > k = 2, ranks 1, 2 irrelevant: everything 0
    ([0, 0, 1, 1, 1], 2, 0.0, 0.0, 0.0, 0.0),
    # |Y| = 1 < k = 3, relevant at rank 2: Y within T_3; AP = (1/2) / 1;
    # NDCG = (1/log2 3) / 1
    ([0, 1, 0, 0, 0], 3, 1.0, 1 / 3, 0.5, 0.6309297535714575),
    # |Y| = 2 < k = 4, relevant at ranks 2 and 4: AP = (1/2 + 2/4) / 2 = 1/2;
    # NDCG = (1/log2 3 + 1/log2 5) / (1 + 1/log2 3)
    ([0, 1, 0, 1, 0], 4, 1.0, 0.5, 0.5, 0.6509209298071326),
]


@pytest.mark.parametrize(("labels", "k", "tkacc", "prec", "ap", "ndcg"), HAND)
def test_hand_made_cases(
    labels: list[int], k: int, tkacc: float, prec: float, ap: float, ndcg: float
) -> None:
    s = torch.tensor([S5], dtype=torch.float64)
    y = torch.tensor([labels], dtype=torch.float64)
    assert topk_accuracy(s, y, k).item() == tkacc
    assert precision_at_k(s, y, k).item() == pytest.approx(prec, abs=1e-12)
    assert ap_at_k(s, y, k).item() == pytest.approx(ap, abs=1e-12)
    assert ndcg_at_k(s, y, k).item() == pytest.approx(ndcg, abs=1e-12)


def test_hand_made_cases_batched_equal_rowwise() -> None:
    # rows are independent: one batch gives the same as each row alone
    for k in (1, 2, 3, 4):
        rows = [labels for labels, *_ in HAND]
        s = torch.tensor([S5] * len(rows), dtype=torch.float64)
        y = torch.tensor(rows, dtype=torch.float64)
        for fn, _ in MEASURES.values():
            batched = fn(s, y, k)
            single = torch.cat([fn(s[i : i + 1], y[i : i + 1], k) for i in range(len(rows))])
            torch.testing.assert_close(batched, single)


def test_empty_label_set_tkacc_and_precision() -> None:
    # |Y| = 0 < k: Y = ∅ is within T_k, so TkAcc = 1; P@k = 0.
    s = torch.tensor([S5], dtype=torch.float64)
    y = torch.zeros(1, 5, dtype=torch.float64)
    assert topk_accuracy(s, y, 2).item() == 1.0
    assert precision_at_k(s, y, 2).item() == 0.0


@pytest.mark.parametrize("fn", [ap_at_k, ndcg_at_k])
def test_empty_label_set_rejected_for_ap_and_ndcg(fn) -> None:
    s = torch.tensor([S5, S5], dtype=torch.float64)
    y = torch.tensor([[1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"relevant") as info:
        fn(s, y, 2)
    assert "[1]" in str(info.value)  # names the offending sample


def test_topk_indices_and_mask() -> None:
    s = torch.tensor([S5, [0.0, 0.3, 0.2, 0.9, 0.5]], dtype=torch.float64)
    assert topk_indices(s, 3).tolist() == [[0, 1, 2], [3, 4, 1]]
    assert topk_mask(s, 2).tolist() == [
        [True, True, False, False, False],
        [False, False, False, True, True],
    ]


# --------------------------------------------------------------------------------------
# ΔN (removed_count)
# --------------------------------------------------------------------------------------


def test_removed_count_hand_made() -> None:
    clean = torch.tensor([S5, S5, S5, S5], dtype=torch.float64)
    adv = torch.tensor(
        [
            [0.0, 0.8, 0.9, 0.05, 0.1],  # top-2 {2, 1}
            [0.0, 0.8, 0.9, 0.05, 0.1],  # top-2 {2, 1}
            [0.0, 0.1, 0.9, 0.8, 0.05],  # top-2 {2, 3}
            S5,  # unchanged
        ],
        dtype=torch.float64,
    )
    spec = torch.tensor(
        [
            [1, 1, 0, 0, 1],  # clean 2 in top-2, adversarial 1:  ΔN = 1
            [0, 0, 1, 0, 0],  # clean 0, adversarial 1:           ΔN = -1
            [1, 1, 0, 0, 0],  # both pushed out:                  ΔN = 2
            [1, 0, 1, 0, 1],  # no change:                        ΔN = 0
        ],
        dtype=torch.float64,
    )
    got = removed_count(clean, adv, spec, 2)
    assert got.dtype == torch.long
    assert got.tolist() == [1, -1, 2, 0]


def test_removed_count_counts_pushed_out_minus_brought_in() -> None:
    # |S ∩ T_k(x)| − |S ∩ T_k(x')| = |S ∩ T_k(x) \ T_k(x')| − |S ∩ T_k(x') \ T_k(x)|
    clean = torch.tensor([[0.9, 0.8, 0.7, 0.1, 0.0, 0.2]], dtype=torch.float64)  # top-3 {0,1,2}
    adv = torch.tensor([[0.1, 0.8, 0.0, 0.9, 0.7, 0.2]], dtype=torch.float64)  # top-3 {3,1,4}
    spec = torch.tensor([[1, 1, 1, 1, 0, 0]], dtype=torch.float64)
    # removed {0, 2} (2 labels), brought in {3} (1 label): ΔN = 1
    assert removed_count(clean, adv, spec, 3).tolist() == [1]


@pytest.mark.parametrize(
    ("c", "k"), [(5, 1), (5, 2), (5, 4), (20, 3), (20, 10), (81, 10), (81, 40)]
)
def test_removed_count_matches_loop(c: int, k: int) -> None:
    g = torch.Generator().manual_seed(c * 100 + k)
    b = 12
    clean = torch.randn(b, c, generator=g, dtype=torch.float64)
    noise = torch.randn(b, c, generator=g, dtype=torch.float64)
    adv = clean + noise * torch.linspace(0.0, 2.0, b, dtype=torch.float64)[:, None]
    spec = torch.zeros(b, c, dtype=torch.float64)
    for i in range(b):
        n_spec = int(torch.randint(1, c + 1, (1,), generator=g))
        spec[i, torch.randperm(c, generator=g)[:n_spec]] = 1
    got = removed_count(clean, adv, spec, k)
    want = [
        _removed_loop(x.tolist(), xa.tolist(), s.tolist(), k)
        for x, xa, s in zip(clean, adv, spec, strict=True)
    ]
    assert got.tolist() == want
    assert got[0].item() == 0  # first row: adv == clean


# --------------------------------------------------------------------------------------
# class_average_precision / mean_average_precision against scikit-learn
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "c"), [(7, 5), (40, 20), (60, 81)])
def test_class_average_precision_matches_sklearn(n: int, c: int) -> None:
    rng = np.random.default_rng(n + c)
    scores = rng.standard_normal((n, c))
    labels = (rng.random((n, c)) < 0.3).astype(np.float64)
    labels[:, 0] = 0  # a class without positives
    labels[0, 1], labels[1:, 1] = 1, 0  # a class with one positive
    labels[:, 2] = 1  # a class with only positives
    got = class_average_precision(torch.from_numpy(scores), torch.from_numpy(labels))
    assert got.shape == (c,)
    assert math.isnan(got[0].item())
    want = []
    for j in range(c):
        if labels[:, j].sum() == 0:
            want.append(float("nan"))
            continue
        sk = average_precision_score(labels[:, j], scores[:, j])
        assert sk == pytest.approx(_class_ap_loop(scores[:, j].tolist(), labels[:, j].tolist()))
        want.append(sk)
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), equal_nan=True)
    assert got[2].item() == pytest.approx(1.0)

    m_t = mean_average_precision(torch.from_numpy(scores), torch.from_numpy(labels))
    assert isinstance(m_t, torch.Tensor) and m_t.dim() == 0
    m = float(m_t)
    assert m == pytest.approx(float(np.nanmean(want)))
    keep = labels.sum(axis=0) > 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk_macro = average_precision_score(labels[:, keep], scores[:, keep], average="macro")
    assert m == pytest.approx(sk_macro)


def test_class_average_precision_hand_made() -> None:
    # one class, 4 samples ranked 0,1,2,3 with positives at ranks 2 and 3: AP = (1/2 + 2/3) / 2
    scores = torch.tensor([[0.9], [0.8], [0.7], [0.1]], dtype=torch.float64)
    labels = torch.tensor([[0], [1], [1], [0]], dtype=torch.float64)
    assert class_average_precision(scores, labels).item() == pytest.approx(7 / 12)
    assert float(mean_average_precision(scores, labels)) == pytest.approx(7 / 12)


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------

ALL_FNS = [topk_accuracy, precision_at_k, ap_at_k, ndcg_at_k]


@pytest.mark.parametrize("fn", ALL_FNS)
def test_wrong_score_dims_raise(fn) -> None:
    with pytest.raises(ValueError, match=r"scores must have shape \(B, c\)"):
        fn(torch.rand(5), torch.ones(5), 1)
    with pytest.raises(ValueError, match="scores"):
        fn(torch.rand(2, 3, 5), torch.ones(2, 3, 5), 1)


@pytest.mark.parametrize("fn", ALL_FNS)
def test_label_shape_mismatch_raises(fn) -> None:
    with pytest.raises(ValueError, match="labels must have the shape"):
        fn(torch.rand(2, 5), torch.ones(2, 4), 1)
    with pytest.raises(ValueError, match="labels"):
        fn(torch.rand(2, 5), torch.ones(3, 5), 1)


@pytest.mark.parametrize("fn", ALL_FNS)
@pytest.mark.parametrize("k", [0, -1, 6, 100, 2.0, True, "2", None])
def test_bad_k_raises(fn, k) -> None:
    with pytest.raises(ValueError, match="k must be an integer"):
        fn(torch.rand(2, 5), torch.ones(2, 5), k)


@pytest.mark.parametrize("fn", ALL_FNS)
@pytest.mark.parametrize("bad", [2.0, 0.5, -1.0, float("nan")])
def test_non_binary_labels_raise(fn, bad: float) -> None:
    labels = torch.ones(2, 5, dtype=torch.float64)
    labels[1, 3] = bad
    with pytest.raises(ValueError, match="0 and 1"):
        fn(torch.rand(2, 5, dtype=torch.float64), labels, 2)


def test_errors_are_input_errors() -> None:
    with pytest.raises(InputError):
        precision_at_k(torch.rand(2, 5), torch.ones(2, 5), 0)


def test_k_equal_c_is_allowed() -> None:
    s, y = _random_case(5, seed=3)
    torch.testing.assert_close(precision_at_k(s, y, 5), y.sum(dim=1) / 5)
    assert topk_accuracy(s, y, 5).tolist() == [1.0] * s.shape[0]


def test_removed_count_validation() -> None:
    clean, adv = torch.rand(2, 5), torch.rand(2, 5)
    spec = torch.tensor([[1, 0, 0, 0, 0], [0, 1, 1, 0, 0]])
    with pytest.raises(ValueError, match="adv_scores"):
        removed_count(clean, torch.rand(2, 4), spec, 2)
    with pytest.raises(ValueError, match="k must be"):
        removed_count(clean, adv, spec, 6)
    with pytest.raises(ValueError, match="shape"):
        removed_count(clean, adv, spec[:1], 2)
    with pytest.raises(ValueError, match="0 and 1"):
        removed_count(clean, adv, spec * 2, 2)
    # an empty specified set is allowed (ΔN = 0)
    assert removed_count(clean, adv, torch.zeros(2, 5), 2).tolist() == [0, 0]


def test_class_average_precision_validation() -> None:
    with pytest.raises(ValueError, match="shape"):
        class_average_precision(torch.rand(4, 3), torch.ones(4, 2))
    with pytest.raises(ValueError, match="shape"):
        class_average_precision(torch.rand(4), torch.ones(4))
    with pytest.raises(ValueError, match="shape"):
        mean_average_precision(torch.rand(4, 3), torch.ones(3, 3))


def test_perturbation_norms_against_numpy() -> None:
    from tkmia.metrics import l2_norm, linf_norm

    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 2, 4, 5, generator=g, dtype=torch.float64)
    b = torch.rand(3, 2, 4, 5, generator=g, dtype=torch.float64)
    d = (b - a).numpy().reshape(3, -1)
    np.testing.assert_allclose(l2_norm(a, b).numpy(), np.sqrt((d**2).sum(axis=1)), rtol=1e-12)
    np.testing.assert_allclose(linf_norm(a, b).numpy(), np.abs(d).max(axis=1), rtol=0)
    with pytest.raises(InputError, match="same shape"):
        l2_norm(a, b[:2])
