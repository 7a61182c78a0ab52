"""The certificate math (SPEC §7.8) against independent references: scipy's binomial tails
for the Clopper–Pearson bounds, and a plain-Python float64 loop written from MultiGuard's
Theorem 1 (``statistics.NormalDist``, no numpy, no scipy) for ``e(R)``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import binom

from tkmia.certificate import certified_intersection, label_bounds
from tkmia.errors import InputError
from tkmia.models.smoothed import Smoothed

from _brute import multiguard_e as _brute_e


def _random_counts(  # noqa: ANN202
    rng: np.random.Generator, b: int, c: int, n: int, k_prime: int, flat: float = 0.3
):
    """Counts as a smoothed model makes them: each draw puts k' distinct labels in.
    ``flat`` is the Dirichlet concentration of the label weights: large values spread the
    draws over many labels, where the theorem's grouped terms (sums over u, v) decide."""
    weights = rng.dirichlet(np.full(c, flat), size=b)
    counts = np.zeros((b, c), dtype=np.int64)
    for i in range(b):
        for _ in range(n):
            counts[i, rng.choice(c, size=k_prime, replace=False, p=weights[i])] += 1
    relevant = rng.random((b, c)) < 0.5
    relevant[np.arange(b), counts.argmax(axis=1)] = True
    return counts, relevant


@pytest.mark.parametrize("flat", [0.3, 20.0])
@pytest.mark.parametrize("k_prime", [1, 2, 3])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_certified_intersection_equals_the_theorem_read_as_loops(
    k: int, k_prime: int, flat: float
) -> None:
    rng = np.random.default_rng(100 * k + 10 * k_prime + int(flat))
    counts, relevant = _random_counts(rng, b=12, c=8, n=200, k_prime=k_prime, flat=flat)
    lower, upper = label_bounds(counts, 200, alpha=0.01)
    radii = np.array([0.0, 0.05, 0.1, 0.2, 0.4, 0.8])
    got = certified_intersection(lower, upper, relevant, k, radii, 0.25, k_prime)
    want = [
        [_brute_e(lower[i], upper[i], relevant[i], k, r, 0.25, k_prime) for r in radii]
        for i in range(len(counts))
    ]
    assert got.tolist() == want
    if flat < 1 or k > 1:  # a flat top-1 certifies nothing: both sides are 0 there
        assert got.max() > 0, "the case must certify something to test anything"


@pytest.mark.parametrize("k_prime", [1, 2])
def test_the_grouped_terms_match_the_loops_where_they_decide(k_prime: int) -> None:
    # several relevant labels of similar, moderate probability: here the sums over u (and
    # v) beat the single-label terms, which random peaked counts rarely exercise
    rng = np.random.default_rng(k_prime)
    radii = np.linspace(0.0, 0.5, 11)
    for _ in range(40):
        relevant = np.zeros(8, dtype=bool)
        relevant[: rng.integers(2, 6)] = True
        p = np.where(relevant, rng.uniform(0.1, 0.3, 8), rng.uniform(0.0, 0.05, 8))
        p = np.clip(p / p.sum() * k_prime, 0, 1)
        lower, upper = np.clip(p - 0.01, 0, 1), np.clip(p + 0.01, 0, 1)
        k = int(rng.integers(1, 5))
        got = certified_intersection(lower[None], upper[None], relevant[None], k, radii, 0.25,
                                     k_prime)  # fmt: skip
        want = [_brute_e(lower, upper, relevant, k, r, 0.25, k_prime) for r in radii]
        assert got[0].tolist() == want


def test_certified_intersection_never_rises_with_the_radius() -> None:
    rng = np.random.default_rng(3)
    counts, relevant = _random_counts(rng, b=40, c=10, n=500, k_prime=1)
    lower, upper = label_bounds(counts, 500, alpha=0.001)
    got = certified_intersection(lower, upper, relevant, 3, np.linspace(0, 1.5, 31), 0.5)
    assert (np.diff(got, axis=1) <= 0).all()
    assert got[:, 0].max() > got[:, -1].min()


def test_tight_bounds_at_radius_zero_certify_the_smoothed_intersection() -> None:
    # exact probabilities (lower = upper = p) without ties: e(0) is |top-k of p ∩ Y|
    rng = np.random.default_rng(4)
    for _ in range(30):
        p = rng.dirichlet(np.ones(9))
        relevant = rng.random(9) < 0.4
        for k in (1, 2, 4):
            e = certified_intersection(p[None], p[None], relevant[None], k, np.zeros(1), 0.5)
            top = np.argsort(-p)[:k]
            assert e[0, 0] == relevant[top].sum()


def test_a_tie_at_the_kth_place_certifies_nothing_there() -> None:
    # relevant label 0 and irrelevant label 1 share the k-th probability: not certified
    p = np.array([[0.4, 0.4, 0.2]])
    relevant = np.array([[True, False, False]])
    assert certified_intersection(p, p, relevant, 1, np.zeros(1), 0.5)[0, 0] == 0
    assert certified_intersection(p, p, relevant, 2, np.zeros(1), 0.5)[0, 0] == 1


def test_too_few_draws_abstain() -> None:
    counts = np.array([[3, 1, 1, 0, 0]])
    relevant = np.array([[True, False, False, False, False]])
    lower, upper = label_bounds(counts, 5, alpha=0.001)
    assert certified_intersection(lower, upper, relevant, 1, np.zeros(1), 0.25)[0, 0] == 0


def test_clopper_pearson_bounds_are_the_binomial_tail_inverses() -> None:
    n, alpha, c = 50, 0.01, 4
    counts = np.array([[0, 7, 43, 50]])
    lower, upper = label_bounds(counts, n, alpha)
    level = alpha / c
    assert lower[0, 0] == 0.0 and upper[0, 3] == 1.0
    for x, lo in zip(counts[0, 1:], lower[0, 1:], strict=True):
        assert binom.sf(x - 1, n, lo) == pytest.approx(level, rel=1e-6)  # P(X >= x | lo)
    for x, hi in zip(counts[0, :3], upper[0, :3], strict=True):
        assert binom.cdf(x, n, hi) == pytest.approx(level, rel=1e-6)  # P(X <= x | hi)


@pytest.mark.parametrize(
    "call",
    [
        lambda: label_bounds(np.array([[1, 2]]), 1, 0.01),
        lambda: label_bounds(np.array([1, 2]), 5, 0.01),
        lambda: label_bounds(np.array([[1, 2]]), 5, 1.5),
        lambda: certified_intersection(
            np.ones((1, 3)), np.ones((1, 3)), np.ones((1, 3)), 4, np.zeros(1), 0.5
        ),  # fmt: skip
        lambda: certified_intersection(
            np.ones((1, 3)), np.ones((1, 3)), np.ones((1, 3)), 1, np.array([-1.0]), 0.5
        ),  # fmt: skip
        lambda: certified_intersection(
            np.ones((1, 3)), np.ones((1, 3)), np.ones((1, 3)), 1, np.zeros(1), 0.0
        ),  # fmt: skip
    ],
)
def test_bad_inputs_are_named(call) -> None:  # noqa: ANN001
    with pytest.raises(InputError):
        call()


class _Linear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(12, 5)
        torch.nn.init.normal_(self.lin.weight, generator=torch.Generator().manual_seed(0))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.lin(x.flatten(1))}


def test_smoothed_counts_match_a_one_draw_at_a_time_loop() -> None:
    model = _Linear()
    images = torch.rand(3, 3, 2, 2, generator=torch.Generator().manual_seed(1))
    smoothed = Smoothed(model, sigma=0.5, k_prime=2, n=7, batch=4, seed=5)
    counts = smoothed.counts(images, ids=[10, 11, 12])
    assert counts.sum(dim=1).tolist() == [14, 14, 14]
    for i, image_id in enumerate([10, 11, 12]):
        g = torch.Generator().manual_seed(5 * 1_000_003 + image_id)
        want = torch.zeros(5, dtype=torch.int64)
        for _ in range(7):
            noise = torch.randn((3, 2, 2), generator=g)
            noisy = (images[i : i + 1] + 0.5 * noise).clamp(0, 1)
            want[model(noisy)["logits"].topk(2, dim=1).indices[0]] += 1
        assert counts[i].tolist() == want.tolist()
    # the same image alone, or in another batch, gets the same counts
    assert Smoothed(model, 0.5, 2, 7, 100, 5).counts(images[1:2], ids=[11])[0].tolist() == (
        counts[1].tolist()
    )


def test_smoothed_scores_average_the_softmax_over_their_own_noise() -> None:
    from tkmia.models.smoothed import SmoothedScores

    model = _Linear()
    images = torch.rand(2, 3, 2, 2, generator=torch.Generator().manual_seed(2))
    state = torch.get_rng_state()
    surrogate = SmoothedScores(model, sigma=0.3, m=5, seed=9)
    x = images.clone().requires_grad_(True)
    out = surrogate(x)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is left alone
    g = torch.Generator().manual_seed(9)
    noise = torch.randn((2, 5, 3, 2, 2), generator=g)
    noisy = (images[:, None] + 0.3 * noise).clamp(0, 1).flatten(0, 1)
    want = model(noisy)["logits"].softmax(dim=1).view(2, 5, -1).mean(dim=1).log()
    torch.testing.assert_close(out, want)
    (grad,) = torch.autograd.grad(out[:, 0].sum(), x)
    assert grad.abs().sum() > 0
