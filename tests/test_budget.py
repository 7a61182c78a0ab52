"""The ε-bounded attacks of `tkmia evaluate` (SPEC §7.7): the budget holds exactly, the
white-box attack reaches a linear model's analytic optimum, the black-box attack never asks
for a gradient and makes exactly the queries it reports, seeds and batching never change a
result, and the smallest-margin loss against a brute-force reference."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from tkmia.attacks.budget import APGD, Square, least_hits, worst_case
from tkmia.attacks.budget.apgd import checkpoints
from tkmia.attacks.budget.common import margin_loss
from tkmia.attacks.budget.square import square_fraction
from tkmia.errors import InputError

from _toys import make_cnn

C, K = 10, 3


def _problem(b: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, nn.Module]:
    model = make_cnn(C)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, 16, 16, generator=g)
    x[:, :, :2] = 0.0  # pixels on the box's edges
    x[:, :, -2:] = 1.0
    with torch.no_grad():
        order = model(x).argsort(dim=1, descending=True)
    labels = torch.zeros(b, C)
    labels.scatter_(1, order[:, :4], 1)  # the clean top-4 are relevant
    return x, labels, model


def _attacks(model: nn.Module, norm: str) -> list[APGD | Square]:
    return [
        APGD(model, K, norm, "margin", iterations=12, restarts=2),
        APGD(model, K, norm, "tkmlapu", iterations=12),
        Square(model, K, norm, queries=40),
    ]


def _distance(adv: torch.Tensor, x: torch.Tensor, norm: str) -> torch.Tensor:
    d = (adv.double() - x.double()).flatten(1)
    return d.abs().amax(dim=1) if norm == "linf" else d.norm(dim=1)


@pytest.mark.parametrize(
    ("norm", "eps"), [("linf", 8 / 255), ("linf", 0.3), ("l2", 0.5), ("l2", 3.0)]
)
def test_every_returned_image_is_within_the_budget_exactly(norm: str, eps: float) -> None:
    x, labels, model = _problem()
    for attack in _attacks(model, norm):
        result = attack(x, labels, eps)
        assert bool((_distance(result.adv_images, x, norm) <= eps).all()), type(attack).__name__
        assert float(result.adv_images.min()) >= 0 and float(result.adv_images.max()) <= 1
        with torch.no_grad():  # the scores and ê are those of the returned images
            again = model(result.adv_images)
        torch.testing.assert_close(again, result.adv_scores)
        assert bool((result.hits <= result.clean_hits).all())


def test_linf_pgd_reaches_the_linear_models_analytic_optimum() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3))
    with torch.no_grad():
        net[1].bias.copy_(torch.tensor([50.0, 0.0, 0.0]))  # label 0 stays on top: no early exit
    x = torch.rand(4, 3, 4, 4)
    labels = torch.zeros(4, 3)
    labels[:, 0] = 1
    eps = 0.05
    # TkML-AP-U with c = 3, k = 1: the mean of f0 − f1 and f0 − f2, linear in x, so the
    # minimum over the box ∩ ball is at x0 − ε·sign(g), clipped, coordinate by coordinate
    w = net[1].weight.detach()
    g = (2 * w[0] - w[1] - w[2]).view(1, 3, 4, 4) / 2
    optimum = (x - eps * g.sign()).clamp(0, 1)
    result = APGD(net, 1, "linf", "tkmlapu", iterations=20)(x, labels, eps)
    torch.testing.assert_close(result.adv_images, optimum, atol=1e-6, rtol=0)
    assert result.hits.tolist() == [1, 1, 1, 1]


class _NoGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return x.clone()

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        raise RuntimeError("this model gives no gradients")


class _ScoresOnly(nn.Module):
    """A model that refuses to run with gradients enabled and whose backward raises."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert not torch.is_grad_enabled(), "called with gradients enabled"
        self.rows += x.shape[0]
        return _NoGrad.apply(self.net(x))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_square_needs_scores_only_and_makes_exactly_the_queries_it_reports(norm: str) -> None:
    x, labels, model = _problem()
    box = _ScoresOnly(model)
    eps = 8 / 255 if norm == "linf" else 0.5
    result = Square(box, K, norm, queries=30)(x, labels, eps)
    assert box.rows == int(result.queries.sum())
    assert int(result.queries.max()) <= 30
    for i in range(x.shape[0]):  # and per image, attacked alone
        box.rows = 0
        alone = Square(box, K, norm, queries=30)(x[i : i + 1], labels[i : i + 1], eps,
                                                 indices=torch.tensor([i]))  # fmt: skip
        assert box.rows == int(alone.queries[0]) == int(result.queries[i])
    with pytest.raises(AssertionError, match="gradients enabled"):
        APGD(box, K, norm)(x, labels, eps)  # the white-box attack does need them


def test_square_stops_at_the_budget_and_an_image_at_its_floor_costs_one_query() -> None:
    x, labels, model = _problem(b=3)
    labels[0] = 1  # every label relevant: the top-k cannot lose one
    result = Square(model, K, "linf", queries=25)(x, labels, 0.1)
    assert int(least_hits(labels, K)[0]) == K
    assert result.queries[0] == 1 and result.hits[0] == K
    assert int(result.queries.max()) <= 25


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_equal_seeds_equal_results_and_batched_equals_one_by_one(norm: str) -> None:
    x, labels, model = _problem()
    eps = 4 / 255 if norm == "linf" else 0.3
    for make in (lambda s: APGD(model, K, norm, iterations=8, restarts=3, seed=s),
                 lambda s: Square(model, K, norm, queries=40, seed=s)):  # fmt: skip
        a, b = make(5)(x, labels, eps), make(5)(x, labels, eps)
        assert torch.equal(a.adv_images, b.adv_images) and torch.equal(a.hits, b.hits)
        assert torch.equal(a.queries, b.queries)
        for i in range(x.shape[0]):
            one = make(5)(x[i : i + 1], labels[i : i + 1], eps, indices=torch.tensor([i]))
            assert int(one.hits[0]) == int(a.hits[i]) and int(one.queries[0]) == int(a.queries[i])
            torch.testing.assert_close(one.adv_images[0], a.adv_images[i], atol=1e-5, rtol=0)


def test_the_start_point_is_never_lost_and_the_caller_world_is_unchanged() -> None:
    x, labels, model = _problem()
    model.train()
    state = torch.random.get_rng_state()
    small = APGD(model, K, "linf", iterations=10)(x, labels, 2 / 255)
    large = APGD(model, K, "linf", iterations=10)(x, labels, 4 / 255, start=small.adv_images)
    assert bool((large.hits <= small.hits).all())
    square = Square(model, K, "linf", queries=20)(x, labels, 4 / 255, start=small.adv_images)
    assert bool((square.hits <= small.hits).all())
    assert model.training and torch.equal(torch.random.get_rng_state(), state)


def test_margin_loss_against_a_brute_force_reference() -> None:
    g = torch.Generator().manual_seed(3)
    for _ in range(200):
        c, k = 6, int(torch.randint(1, 5, (1,), generator=g))
        f = torch.randn(1, c, generator=g, dtype=torch.float64)
        y = (torch.rand(1, c, generator=g) < 0.5).double()
        if y.sum() == 0:
            y[0, 0] = 1
        top = set(f[0].argsort(descending=True)[:k].tolist())
        rel = [i for i in range(c) if y[0, i]]
        e = len(top & set(rel))
        floor = max(0, k - (c - len(rel)))
        span = float(f.max() - f.min())
        if e > floor:
            weakest = min(float(f[0, i]) for i in top if i in rel)
            rivals = sorted((float(f[0, i]) for i in range(c) if i not in rel), reverse=True)
            want = e + (weakest - rivals[k - e]) / span
        else:
            want = float(e)
        assert float(margin_loss(f, y, k)) == pytest.approx(want, abs=1e-12)


def test_worst_case_takes_the_minimum_and_names_the_first_attack() -> None:
    found = [torch.tensor([2, 0, 1, 3]), torch.tensor([1, 0, 1, 3]), torch.tensor([1, 1, 0, 3])]
    best, by = worst_case(found)
    assert best.tolist() == [1, 0, 0, 3] and by.tolist() == [1, 0, 2, 0]
    for t in found:
        assert bool((best <= t).all())
    with pytest.raises(InputError):
        worst_case([])


def test_schedules() -> None:
    marks = checkpoints(100)
    assert marks[0] == 22 and marks[-1] <= 100 and marks == sorted(set(marks))
    gaps = [b - a for a, b in itertools.pairwise([0, *marks])]
    assert min(gaps) >= 6  # p_{j+1} − p_j never falls below 0.06
    assert square_fraction(0.8, 1, 10000) == 0.8
    assert square_fraction(0.8, 11, 10000) == 0.4
    assert square_fraction(0.8, 100, 1000) == 0.8 / 2**4  # 1000 on the 10 000 scale
    assert square_fraction(0.8, 9999, 10000) == 0.8 / 2**9


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"eps": -1.0}, "eps"),
        ({"norm": "l1"}, "norm"),
        ({"labels_zero": True}, "at least one relevant label; images \\[1\\]"),
    ],
)
def test_bad_calls_are_refused_clearly(kwargs: dict, match: str) -> None:
    x, labels, model = _problem(b=2)
    if kwargs.pop("labels_zero", False):
        labels[1] = 0
    norm = kwargs.pop("norm", "linf")
    with pytest.raises(InputError, match=match):
        if norm != "linf":
            APGD(model, K, norm)
        APGD(model, K)(x, labels, kwargs.get("eps", 0.1))
