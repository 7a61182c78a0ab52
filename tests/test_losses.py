"""Losses against float64 brute-force loops, and their gradients against finite differences."""

from __future__ import annotations

import pytest
import torch

from tkmia.losses import (
    average_top_k,
    mlcw_grad,
    mlcw_loss,
    tkmia_grad,
    tkmia_loss,
    tkmlap_grad,
    tkmlap_loss,
)

from _brute import atk_loop, tkmia_loop


def _random_case(b: int, c: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(b, c, generator=g, dtype=torch.float64)
    labels = torch.zeros(b, c, dtype=torch.float64)
    spec = torch.zeros(b, c, dtype=torch.float64)
    for i in range(b):
        n_rel = int(torch.randint(2, c, (1,), generator=g))
        rel = torch.randperm(c, generator=g)[:n_rel]
        labels[i, rel] = 1
        n_spec = int(torch.randint(1, n_rel, (1,), generator=g))
        spec[i, rel[:n_spec]] = 1
    return f, labels, spec


def _atk_dual_loop(a: list[float], m: int) -> float:
    """min over λ of λ + (1/m) Σ [a_i − λ]_+, by trying every entry as λ (the optimum is one)."""
    return min(lam + sum(max(x - lam, 0.0) for x in a) / m for x in a for lam in [x])


@pytest.mark.parametrize("c", [5, 20, 81])
def test_average_top_k_sort_and_dual_agree_with_loops(c: int) -> None:
    f, _, _ = _random_case(6, c, seed=c)
    for m in range(1, c + 1):
        sort = average_top_k(f, m, "sort")
        dual = average_top_k(f, m, "dual")
        loop = torch.tensor([atk_loop(row.tolist(), m) for row in f], dtype=torch.float64)
        dual_loop = torch.tensor([_atk_dual_loop(r.tolist(), m) for r in f], dtype=torch.float64)
        torch.testing.assert_close(sort, loop, rtol=0, atol=1e-12)
        torch.testing.assert_close(dual, loop, rtol=0, atol=1e-12)
        torch.testing.assert_close(dual_loop, loop, rtol=0, atol=1e-12)


def test_average_top_k_gradients_of_both_forms_agree() -> None:
    f, _, _ = _random_case(4, 12, seed=3)
    for m in (1, 5, 12):
        grads = []
        for method in ("sort", "dual"):
            a = f.clone().requires_grad_(True)
            average_top_k(a, m, method).sum().backward()
            grads.append(a.grad)
        torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("bad_m", [0, 13, 2.0, True])
def test_average_top_k_rejects_bad_m(bad_m) -> None:
    with pytest.raises(ValueError, match="m must be"):
        average_top_k(torch.zeros(2, 12), bad_m)


def _tkmlap_loop(f: list[float], y: list[int], k: int) -> float:
    c = len(f)
    max_y = max(f[i] for i in range(c) if y[i])
    return atk_loop([max_y - v for v in f], c - k)


def _mlcw_loop(f: list[float], y: list[int]) -> float:
    c = len(f)
    irrelevant = [f[i] for i in range(c) if not y[i]]
    if not irrelevant:
        return 0.0
    return max(max(f[i] for i in range(c) if y[i]) - min(irrelevant), 0.0)


@pytest.mark.parametrize("c", [5, 20, 81])
def test_losses_match_brute_force(c: int) -> None:
    f, y, s = _random_case(8, c, seed=100 + c)
    rows = list(zip(f.tolist(), y.int().tolist(), s.int().tolist(), strict=True))
    for k in range(1, c):
        expect = [tkmia_loop(fi, yi, si, k) for fi, yi, si in rows]
        torch.testing.assert_close(tkmia_loss(f, y, s, k), torch.tensor(expect, dtype=f.dtype))
        expect = [_tkmlap_loop(fi, yi, k) for fi, yi, _ in rows]
        torch.testing.assert_close(tkmlap_loss(f, y, k), torch.tensor(expect, dtype=f.dtype))
    expect = [_mlcw_loop(fi, yi) for fi, yi, _ in rows]
    torch.testing.assert_close(mlcw_loss(f, y), torch.tensor(expect, dtype=f.dtype))


def test_mlcw_loss_is_zero_once_targets_rank_last() -> None:
    f = torch.tensor([[5.0, 4.0, -1.0, -2.0]])
    y = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    assert mlcw_loss(f, y).item() == 0.0
    assert mlcw_loss(f, torch.ones_like(y)).item() == 0.0


def test_tkmia_loss_known_value() -> None:
    # c = 4, k = 2, S = {0}, R = {1}: ATk_2(f0 − f) + ATk_2(f − f1)
    f = torch.tensor([[3.0, 1.0, 2.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([[1.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    s = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    hide = (3.0 + 2.0) / 2  # the two largest of 3 − f = [0, 2, 1, 3]
    promote = (2.0 + 1.0) / 2  # the two largest of f − 1 = [2, 0, 1, −1]
    assert tkmia_loss(f, y, s, 2).item() == pytest.approx(hide + promote)


@pytest.mark.parametrize("name", ["atk_sort", "atk_dual", "tkmia", "tkmlap", "mlcw"])
def test_gradcheck(name: str) -> None:
    f, y, s = _random_case(3, 7, seed=7)
    k = 3
    fns = {
        "atk_sort": lambda a: average_top_k(a, 4, "sort"),
        "atk_dual": lambda a: average_top_k(a, 4, "dual"),
        "tkmia": lambda a: tkmia_loss(a, y, s, k),
        "tkmlap": lambda a: tkmlap_loss(a, y, k),
        "mlcw": lambda a: mlcw_loss(a, y),
    }
    a = f.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(fns[name], (a,), eps=1e-6, atol=1e-6)


def _autograd(loss, f: torch.Tensor) -> torch.Tensor:
    a = f.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss(a).sum(), a)
    return g


def _closed_and_autograd(f, y, s, k):
    """(closed form, autograd of the loss) for the three losses."""
    return [
        (tkmia_grad(f, y, s, k), _autograd(lambda a: tkmia_loss(a, y, s, k), f)),
        (tkmlap_grad(f, y, k), _autograd(lambda a: tkmlap_loss(a, y, k), f)),
        (mlcw_grad(f, y), _autograd(lambda a: mlcw_loss(a, y), f)),
    ]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("c", [5, 20, 81])
def test_closed_form_gradients_equal_autograd(c: int, dtype: torch.dtype) -> None:
    """What the attacks step with: bit for bit autograd's gradient of the loss, for every k
    (both branches of average_top_k)."""
    f, y, s = _random_case(8, c, seed=200 + c)
    f = f.to(dtype)
    for k in range(1, c):
        for closed, auto in _closed_and_autograd(f, y, s, k):
            assert closed.dtype == dtype and closed.shape == f.shape
            assert torch.equal(closed, auto)


def test_closed_form_gradients_at_ties_and_edges() -> None:
    """Ties in the max over S / min over R split the gradient evenly (as autograd's
    amax/amin); ML-CW-U's hinge gives 0 at a gap of exactly 0 (the loss is 0 there) and
    when the targets cover every label."""
    f = torch.tensor(
        [
            [3.0, 3.0, 1.0, 0.5, 0.5, -1.0],  # S = {0, 1} tied at the max, R = {3, 4} tied
            [1.0, 0.0, 1.0, 2.0, 3.0, 4.0],  # gap 0 for ML-CW-U: max_Y = min_{∉Y} = 1
        ],
        dtype=torch.float64,
    )
    y = torch.tensor([[1, 1, 0, 1, 1, 0], [1, 1, 0, 0, 0, 0]], dtype=torch.float64)
    s = torch.tensor([[1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]], dtype=torch.float64)
    for closed, auto in _closed_and_autograd(f, y, s, 2):
        torch.testing.assert_close(closed, auto, rtol=0, atol=1e-15)
    hide = tkmlap_grad(f, s, 2)
    assert hide[0, 0] == hide[0, 1] == pytest.approx(0.5)  # +1 split between the tied max
    assert mlcw_grad(f, y)[0].tolist() == [0.5, 0.5, 0.0, 0.0, 0.0, -1.0]
    assert mlcw_grad(f, y)[1].abs().sum() == 0
    assert mlcw_grad(f, torch.ones_like(y)).abs().sum() == 0


@pytest.mark.parametrize("name", ["tkmia", "tkmlap", "mlcw"])
def test_closed_form_gradients_against_finite_differences(name: str) -> None:
    f, y, s = _random_case(4, 9, seed=5)
    k = 3
    loss, grad = {
        "tkmia": (lambda a: tkmia_loss(a, y, s, k), tkmia_grad(f, y, s, k)),
        "tkmlap": (lambda a: tkmlap_loss(a, y, k), tkmlap_grad(f, y, k)),
        "mlcw": (lambda a: mlcw_loss(a, y), mlcw_grad(f, y)),
    }[name]
    h = 1e-6
    numeric = torch.zeros_like(f)
    for i in range(f.shape[0]):
        for j in range(f.shape[1]):
            step = torch.zeros_like(f)
            step[i, j] = h
            numeric[i, j] = (loss(f + step).sum() - loss(f - step).sum()) / (2 * h)
    torch.testing.assert_close(grad, numeric, rtol=0, atol=1e-6)
    assert grad.abs().sum() > 0


def test_losses_are_per_sample() -> None:
    """A sample's loss and gradient do not depend on the other rows of the batch."""
    f, y, s = _random_case(5, 9, seed=11)
    full = tkmia_loss(f, y, s, 2)
    for i in range(5):
        alone = tkmia_loss(f[i : i + 1], y[i : i + 1], s[i : i + 1], 2)
        torch.testing.assert_close(alone, full[i : i + 1])


def test_average_top_k_float32_large_c_matches_float64_top_m_mean() -> None:
    # for m > c/2 the sum runs over all entries minus the smallest ones; in float32 that
    # must still agree with the plain mean of the m largest (computed in float64)
    g = torch.Generator().manual_seed(0)
    f = torch.randn(8, 1000, generator=g) * 10
    for m in (1, 3, 500, 501, 997, 1000):
        want = f.double().topk(m, dim=1).values.mean(dim=1)
        for method in ("sort", "dual"):
            got = average_top_k(f, m, method)
            assert got.dtype == torch.float32
            torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-4)
