"""SPEC §7.1–7.3 in the attacks: the preserving rule, quantised success, TkML-AP-T."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tkmia.attacks import MLCWU, KFool, TkMIA, TkMLAPT, TkMLAPU
from tkmia.attacks.pixels import quantize
from tkmia.errors import InputError
from tkmia.losses import tkmia_loss, tkmlapt_grad, tkmlapt_loss
from tkmia.metrics import removed_count, topk_mask

from _brute import sgd_reference, tkmlapt_loop
from _toys import make_cnn, make_problem

K = 3


def _targets(model, x: torch.Tensor, n: int, seed: int = 2) -> torch.Tensor:
    """``n`` targets per image among its clean ranks 6..10 (outside make_problem's Y)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        order = model(x).argsort(dim=1, descending=True)
    t = torch.zeros(x.shape[0], order.shape[1])
    for i in range(x.shape[0]):
        t[i, order[i, 5 + torch.randperm(5, generator=g)[:n]]] = 1
    return t


def _hits(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (topk_mask(scores, K) & labels.bool()).sum(dim=1)


# ------------------------------------------------------------------ §7.1 preserve
def test_preserve_returns_images_that_keep_the_relevant_labels() -> None:
    model = make_cnn()
    x, y, s = make_problem(model, 10, K, n_relevant=6, n_specified=1)
    with torch.no_grad():
        fourth = model(x).argsort(dim=1, descending=True)[:, K]
    y[torch.arange(10), fourth] = 0  # an irrelevant label waits just below the top-k
    paper = TkMIA(model, K, lr=5.0, lam=1e-3, max_iter=30)(x, y, s)
    keep = TkMIA(model, K, lr=5.0, lam=1e-3, max_iter=30, success="preserve")(x, y, s)
    with torch.no_grad():
        rescored = model(keep.adv_images)
    removed = removed_count(keep.clean_scores, rescored, s, K)
    rule = (removed >= keep.required) & (_hits(rescored, y) >= _hits(keep.clean_scores, y))
    assert torch.equal(rule, keep.success)
    # both follow the same iterates: preserve returns the paper's first success when that
    # one keeps the relevant labels, else a later iterate (or fails)
    kept = paper.success & (_hits(paper.adv_scores, y) >= _hits(paper.clean_scores, y))
    assert kept.any() and (paper.success & ~kept).any()
    assert torch.equal(keep.iterations[kept], paper.iterations[kept])
    later = paper.success & ~kept & keep.success
    assert bool((keep.iterations[later] > paper.iterations[later]).all())


# ------------------------------------------------------------------ §7.2 quantise
@pytest.mark.parametrize("bits", [8, 4])
def test_quantised_images_are_q_of_the_sgd_iterate_and_succeed_as_saved(bits) -> None:
    """Float64: the returned image is q(x') of SPEC §4.1's iterate after ``iterations``
    steps, it is on the b-bit grid, and its success holds when it is scored again."""
    model = make_cnn(dtype=torch.float64)
    x, y, s = make_problem(model, 6, K, n_specified=2, dtype=torch.float64)
    x = quantize(x, 8)
    atk = TkMIA(model, K, lr=5.0, lam=1e-3, max_iter=25, quantize=bits)
    res = atk(x, y, s, threshold=1)
    assert res.success.any() and (res.iterations > 0).any()
    levels = 2**bits - 1
    grid = res.adv_images * levels
    torch.testing.assert_close(grid, grid.round(), atol=1e-9, rtol=0)
    with torch.no_grad():
        rescored = model(res.adv_images)
    torch.testing.assert_close(rescored, res.adv_scores)
    assert torch.equal(removed_count(res.clean_scores, rescored, s, K) >= 1, res.success)

    for i in range(6):
        it, one = int(res.iterations[i]), slice(i, i + 1)
        ref = sgd_reference(
            model, x[one], lambda f, one=one: tkmia_loss(f, y[one], s[one], K), 5.0, 1e-3, it
        )
        torch.testing.assert_close(res.adv_images[i : i + 1], quantize(ref, bits), atol=0, rtol=0)


def test_quantised_success_with_continuous_batching_and_deferred_checks() -> None:
    model = make_cnn()
    x, y, s = make_problem(model, 8, K, n_specified=2)
    atk = TkMIA(model, K, lr=5.0, lam=1e-3, max_iter=25, quantize=8)
    whole = atk(x, y, s, threshold=1)
    parts = atk(x, y, s, threshold=1, batch_size=3, sync_every=4)
    assert 2 <= int(whole.success.sum()) <= 7
    assert torch.equal(whole.success, parts.success)
    assert torch.equal(whole.iterations, parts.iterations)
    torch.testing.assert_close(whole.adv_images, parts.adv_images, atol=1 / 255 + 1e-6, rtol=0)
    assert torch.equal(atk.rescore(quantize(parts.adv_images, 8), parts, y), parts.success)


@pytest.mark.parametrize("cls", [TkMLAPU, MLCWU, KFool])
def test_quantised_success_of_the_baselines_survives_8_bits(cls) -> None:
    model = make_cnn()
    x, y, s = make_problem(model, 6, K, n_specified=1)
    kw = {"max_iter": 10, "linearize": "tanh"} if cls is KFool else {"lr": 50.0, "lam": 1e-5}
    kw["max_iter"] = 10
    res = cls(model, K, quantize=8, **kw)(x, y, s)
    assert res.success.any()
    assert torch.equal(res.adv_images, quantize(res.adv_images, 8))
    assert torch.equal(cls(model, K, **kw).rescore(res.adv_images, res, y), res.success)


class _MeanOverTheta(nn.Module):
    """Two labels: ``f_0 = 100·mean(x)``, ``f_1 = 100·θ`` with θ = 126.8/255, off the 8-bit
    grid: label 0 leaves the top-1 once the mean pixel is below θ, and an iterate between
    126.5/255 and θ succeeds while its 8-bit image (127/255) does not."""

    theta = (127 - 0.2) / 255

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.flatten(1).mean(dim=1)
        return 100 * torch.stack([m, torch.full_like(m, self.theta)], dim=1)


def _mean_over_theta_case():
    model = _MeanOverTheta()
    x = torch.full((1, 1, 2, 2), (127 + 0.1) / 255, dtype=torch.float64)
    y = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    kw = {"lr": 1e-5, "lam": 0.0, "max_iter": 100}
    return model, x, y, kw


def test_quantised_success_is_judged_on_the_8_bit_image_where_rounding_flips_it() -> None:
    """Steps smaller than an 8-bit level: the first iterate past θ succeeds, but its 8-bit
    image rounds back above θ and fails. With ``quantize=8`` success is judged on
    ``q(x')``: a later iterate (below 126.5/255) is the first success, and its returned
    8-bit image, 126/255, succeeds when scored again."""
    model, x, y, kw = _mean_over_theta_case()
    plain = TkMLAPU(model, 1, **kw)(x, y, y)
    assert plain.success.item()
    assert torch.equal(quantize(plain.adv_images, 8), torch.full_like(x, 127 / 255))
    with torch.no_grad():
        assert model(quantize(plain.adv_images, 8))[0].argmax().item() == 0  # rounding flips
    res = TkMLAPU(model, 1, quantize=8, **kw)(x, y, y)
    assert res.success.item() and res.iterations.item() > plain.iterations.item()
    assert torch.equal(res.adv_images, torch.full_like(x, 126 / 255))
    with torch.no_grad():
        torch.testing.assert_close(model(res.adv_images), res.adv_scores, rtol=0, atol=0)
    assert TkMLAPU(model, 1, **kw).rescore(res.adv_images, res, y).item()


def test_runners_8_bit_success_scores_the_8_bit_image() -> None:
    """``success_uint8`` of the records: the un-quantised attack's success, re-measured on
    ``round(255·x')/255``, is False where rounding flips it (and True for the attack that
    judged on the 8-bit image)."""
    from tkmia.experiments.runner import quantised_success

    model, x, y, kw = _mean_over_theta_case()
    atk = TkMLAPU(model, 1, **kw)
    plain = atk(x, y, y)
    assert plain.success.item() and not quantised_success(atk, plain, y).item()
    q_atk = TkMLAPU(model, 1, quantize=8, **kw)
    assert quantised_success(q_atk, q_atk(x, y, y), y).item()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"success": "keep"}, "success must be"), ({"quantize": 17}, "quantize"),
     ({"quantize": -1}, "quantize")],
)  # fmt: skip
def test_bad_success_or_quantize(kwargs, match) -> None:
    with pytest.raises(InputError, match=match):
        TkMIA(make_cnn(), K, **kwargs)


# ------------------------------------------------------------------ §7.3 TkML-AP-T
@pytest.mark.parametrize("tie", [0.0, 0.3])
@pytest.mark.parametrize("c", [5, 12])
def test_tkmlapt_loss_matches_the_loop_and_its_gradient_finite_differences(c, tie) -> None:
    g = torch.Generator().manual_seed(c)
    f = torch.randn(6, c, generator=g, dtype=torch.float64)
    t = (torch.rand(6, c, generator=g) < 0.3).double()
    for k in (1, 2, c - 1):
        loss = tkmlapt_loss(f, t, k, tie)
        want = [tkmlapt_loop(f[i].tolist(), t[i].int().tolist(), k, tie) for i in range(6)]
        torch.testing.assert_close(loss, torch.tensor(want, dtype=torch.float64))
        grad = tkmlapt_grad(f, t, k, tie)
        h = 1e-6
        for j in range(c):
            e = torch.zeros_like(f)
            e[:, j] = h
            fd = (tkmlapt_loss(f + e, t, k, tie) - tkmlapt_loss(f - e, t, k, tie)) / (2 * h)
            torch.testing.assert_close(grad[:, j], fd, atol=1e-6, rtol=0)
        f1 = f.clone().requires_grad_(True)
        (auto,) = torch.autograd.grad(tkmlapt_loss(f1, t, k, tie).sum(), f1)
        if tie:  # the tie term's τ(f − t) is rounded differently from autograd's chain
            torch.testing.assert_close(grad, auto, atol=1e-14, rtol=0)
        else:
            assert torch.equal(grad, auto)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tkmlapt_grad_is_autograds_bit_for_bit_without_the_tie_term(dtype) -> None:
    """What the attack steps with, for every k, in both dtypes, ties at the k-th score
    included (autograd's clamp passes no gradient at 0: a label tied with f_[k] is inactive)."""
    g = torch.Generator().manual_seed(0)
    f = torch.randn(40, 20, generator=g).to(dtype)
    f[:5, 7] = f[:5].topk(4, dim=1).values[:, -1]  # label 7 tied with the 4th score
    t = torch.rand(40, 20, generator=g) < 0.15
    t[:5, 7] = True
    for k in range(1, 20):
        a = f.clone().requires_grad_(True)
        (auto,) = torch.autograd.grad(tkmlapt_loss(a, t, k).sum(), a)
        assert torch.equal(tkmlapt_grad(f, t, k), auto), k


def test_tkmlapt_loss_pushes_non_targets_above_the_kth_score_down() -> None:
    """k = 2, T = {2, 3}: label 1 holds the k-th place; the target 3 is below it, the
    non-target 0 above it. Known value and gradient by hand."""
    f = torch.tensor([[4.0, 3.0, 3.5, 1.0, 0.0]], dtype=torch.float64)
    t = torch.tensor([[0, 0, 1, 1, 0]])
    # f_[2] = 3.5 (label 2, a target): pull (3.5 − 1) on label 3, push (4 − 3.5) on label 0
    assert tkmlapt_loss(f, t, 2).item() == pytest.approx(2.5 + 0.5)
    # −1 on the target below, +1 on the non-target above; on the k-th label +1 − 1 = 0
    assert tkmlapt_grad(f, t, 2).tolist() == [[1.0, 0.0, 0.0, -1.0, 0.0]]
    # the tie term: (τ/2) Σ (1 − t_j f_j)², t = [−1, −1, 1, 1, −1]
    tie = (0.5 / 2) * (25 + 16 + 6.25 + 0 + 1)
    assert tkmlapt_loss(f, t, 2, tie=0.5).item() == pytest.approx(3.0 + tie)
    f[0, 0] = 2.0  # the non-target drops out: label 1 holds the k-th place, pulled down
    assert tkmlapt_grad(f, t, 2).tolist() == [[0.0, 1.0, 0.0, -1.0, 0.0]]


def test_tkmlapt_batched_equals_one_by_one_and_meets_its_rule() -> None:
    model = make_cnn(dtype=torch.float64)
    x, y, _ = make_problem(model, 10, K, dtype=torch.float64)
    t = _targets(model, x, 1).double()
    atk = TkMLAPT(model, K, lr=50.0, lam=1e-5, max_iter=8)
    res = atk(x, y, t)
    assert 2 <= int(res.success.sum()) <= 9
    with torch.no_grad():
        rescored = model(res.adv_images)
    entered = (topk_mask(rescored, K) & t.bool()).sum(dim=1)
    assert torch.equal(entered >= 1, res.success)
    assert torch.equal(res.required, torch.full((10,), 1))
    for i in range(10):
        alone = atk(x[i : i + 1], y[i : i + 1], t[i : i + 1])
        assert alone.success.item() == res.success[i].item()
        assert alone.iterations.item() == res.iterations[i].item()
        torch.testing.assert_close(alone.adv_images[0], res.adv_images[i])


def test_tkmlapt_iterates_are_the_sgd_reference() -> None:
    model = make_cnn(dtype=torch.float64)
    x, y, _ = make_problem(model, 4, K, dtype=torch.float64)
    t = _targets(model, x, 1).double()
    res = TkMLAPT(model, K, lr=50.0, lam=1e-5, max_iter=25)(x, y, t)
    for i in range(4):
        it = int(res.iterations[i])
        ref = sgd_reference(
            model, x[i : i + 1], lambda f, i=i: tkmlapt_loss(f, t[i : i + 1], K), 50.0, 1e-5, it
        )
        torch.testing.assert_close(res.adv_images[i : i + 1], ref, atol=1e-9, rtol=0)


def test_tkmlapt_threshold_below_the_target_count_succeeds_once_t_targets_entered() -> None:
    """|T| = 2, threshold 1: ``required`` is 1, success is "at least one target in the
    top-k" on the returned image, that image is the SGD iterate after ``iterations`` steps
    and the iterate one step earlier had no target in (the first success)."""
    model = make_cnn(dtype=torch.float64)
    x, y, _ = make_problem(model, 6, K, dtype=torch.float64)
    t = _targets(model, x, 2).double()
    res = TkMLAPT(model, K, lr=50.0, lam=1e-5, max_iter=25)(x, y, t, threshold=1)
    assert torch.equal(res.required, torch.ones(6, dtype=res.required.dtype))
    with torch.no_grad():
        entered = (topk_mask(model(res.adv_images), K) & t.bool()).sum(dim=1)
    assert torch.equal(entered >= 1, res.success)
    assert res.success.all() and (entered == 1).any()  # one of the two targets suffices
    for i in range(6):
        it = int(res.iterations[i])
        assert it >= 1
        loss = lambda f, i=i: tkmlapt_loss(f, t[i : i + 1], K)  # noqa: E731
        ref = sgd_reference(model, x[i : i + 1], loss, 50.0, 1e-5, it)
        torch.testing.assert_close(res.adv_images[i : i + 1], ref, atol=1e-9, rtol=0)
        before = sgd_reference(model, x[i : i + 1], loss, 50.0, 1e-5, it - 1)
        with torch.no_grad():
            assert int((topk_mask(model(before), K) & t[i : i + 1].bool()).sum()) == 0


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda y, t: (y, t + y * (t.sum(1, keepdim=True) > -1)), "disjoint"),
        (lambda y, t: (y, torch.zeros_like(t)), "1 <= |targets| <= k"),
        (lambda y, t: (y, (1 - y)), "1 <= |targets| <= k"),
    ],
)
def test_tkmlapt_rejects_bad_targets(mutate, match) -> None:
    model = make_cnn()
    x, y, _ = make_problem(model, 3, K)
    yy, t = mutate(y, _targets(model, x, 1))
    with pytest.raises(InputError, match=match):
        TkMLAPT(model, K)(x, yy, t.clamp(max=1))
