"""Selection schemes S1/S2 and eligibility, against direct set computations."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tkmia.errors import InputError
from tkmia.protocol import check_scheme, select_global, select_random, success_threshold


def _topk_set(scores: list[float], k: int) -> set[int]:
    return set(sorted(range(len(scores)), key=lambda i: -scores[i])[:k])


@st.composite
def problems(draw):
    c = draw(st.integers(3, 12))
    b = draw(st.integers(1, 6))
    perm = [draw(st.permutations(range(c))) for _ in range(b)]
    scores = torch.tensor(perm, dtype=torch.float32)
    labels = torch.tensor([[draw(st.integers(0, 1)) for _ in range(c)] for _ in range(b)])
    k = draw(st.integers(1, c - 1))
    return scores, labels, k


@settings(max_examples=150, deadline=None, derandomize=True)
@given(problems(), st.data())
def test_global_selection_matches_sets(problem, data) -> None:
    scores, labels, k = problem
    c = scores.shape[1]
    group = sorted(data.draw(st.sets(st.integers(0, c - 1), min_size=1)))
    spec, ok = select_global(labels, scores, group, k)
    for i in range(scores.shape[0]):
        y = {j for j in range(c) if labels[i, j]}
        s = y & set(group)
        top = _topk_set(scores[i].tolist(), k)
        assert {j for j in range(c) if spec[i, j]} == s
        assert bool(ok[i]) == (len(y) >= k + len(s) and len(s & top) >= 1)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(problems(), st.integers(1, 4), st.integers(0, 2**31))
def test_random_selection_matches_sets(problem, n, seed) -> None:
    scores, labels, k = problem
    c = scores.shape[1]
    idx = list(range(100, 100 + scores.shape[0]))
    spec, ok = select_random(labels, scores, n, k, seed, idx)
    for i in range(scores.shape[0]):
        y = {j for j in range(c) if labels[i, j]}
        top = _topk_set(scores[i].tolist(), k)
        eligible = 1 <= n <= k and len(y & top) >= n and len(y) >= k + n
        assert bool(ok[i]) == eligible
        s = {j for j in range(c) if spec[i, j]}
        if eligible:
            assert len(s) == n and s <= (y & top)
        else:
            assert not s


def test_random_draw_depends_only_on_seed_and_index() -> None:
    torch.manual_seed(0)
    scores = torch.randn(40, 20)
    labels = torch.zeros(40, 20)
    labels.scatter_(1, scores.topk(8, dim=1).indices, 1)
    idx = list(range(1000, 1040))
    spec, ok = select_random(labels, scores, 2, 5, seed=7, indices=idx)
    assert ok.all()
    # one at a time, in another order, in other blocks: the same draws
    for i in reversed(range(40)):
        one, _ = select_random(labels[i : i + 1], scores[i : i + 1], 2, 5, 7, [idx[i]])
        assert torch.equal(one[0], spec[i])
    other, _ = select_random(labels, scores, 2, 5, seed=8, indices=idx)
    assert not torch.equal(other, spec)
    # the draw is spread over the candidates (not always the first two)
    assert len({tuple(torch.nonzero(r).flatten().tolist()) for r in spec}) > 10


def test_known_global_case() -> None:
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
    labels = torch.tensor([[1, 1, 0, 1, 1, 0]])
    # G = {1, 4}: S = {1, 4}; |Y| = 4 >= k + |S| = 2 + 2; label 1 is in the top-2
    spec, ok = select_global(labels, scores, [1, 4], 2)
    assert spec.tolist() == [[False, True, False, False, True, False]] and ok.tolist() == [True]
    # k = 3: |Y| = 4 < 3 + 2: not eligible
    assert select_global(labels, scores, [1, 4], 3)[1].tolist() == [False]
    # G = {4}: S = {4} not in the top-2: not eligible
    assert select_global(labels, scores, [4], 2)[1].tolist() == [False]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("both", 2, 20, None, None), "scheme must be"),
        (("global", 0, 20, None, None), "k must be"),
        (("global", 20, 20, None, None), "k must be"),
        (("random", 2, 20, 3, None), "n .* must satisfy"),
        (("random", 2, 20, 0, None), "n .* must satisfy"),
        (("random", 3, 20, 2, 3), "threshold must satisfy"),
        (("global", 2, 20, None, 1), "random scheme only"),
    ],
)
def test_check_scheme_errors(args, match) -> None:
    with pytest.raises(InputError, match=match):
        check_scheme(*args)


def test_success_threshold() -> None:
    assert success_threshold("global", None, None) is None
    assert success_threshold("random", 2, None) == 2
    assert success_threshold("random", 2, 1) == 1


def test_random_draw_is_numpys_generator_of_seed_and_index() -> None:
    """Row i's S is ``default_rng([seed, index_i]).choice(pool, n)`` over its candidates
    ``Y ∩ T_k`` in label order, so identical candidate pools at two indices draw apart."""
    import numpy as np

    torch.manual_seed(1)
    row_scores = torch.randn(1, 12)
    row_labels = torch.zeros(1, 12)
    row_labels[0, row_scores[0].topk(9).indices] = 1  # 6 candidates in the top-6
    b, n, k, seed = 30, 2, 6, 11
    scores, labels = row_scores.repeat(b, 1), row_labels.repeat(b, 1)
    idx = [3 * i + 5 for i in range(b)]
    spec, ok = select_random(labels, scores, n, k, seed, idx)
    assert ok.all()
    pool = sorted(
        set(row_scores[0].topk(k).indices.tolist())
        & set(torch.nonzero(row_labels[0]).flatten().tolist())
    )
    assert len(pool) == 6
    for i in range(b):
        pick = np.random.default_rng([seed, idx[i]]).choice(len(pool), size=n, replace=False)
        assert set(torch.nonzero(spec[i]).flatten().tolist()) == {pool[j] for j in pick}
    # the same pool at 30 indices: many different draws, not one draw repeated
    assert len({tuple(torch.nonzero(r).flatten().tolist()) for r in spec}) >= 8
