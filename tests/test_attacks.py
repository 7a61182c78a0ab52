"""The attack engine: batched semantics, success re-checks, early exit, validation."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tkmia.attacks import MLCWU, KFool, TkMIA, TkMLAPT, TkMLAPU
from tkmia.attacks.loss import sgd_step
from tkmia.attacks.pixels import EPS, PixelMap, to_pixels
from tkmia.errors import InputError
from tkmia.losses import mlcw_loss, tkmia_loss, tkmlap_loss
from tkmia.metrics import removed_count, topk_mask

from _brute import kfool_loop_reference, kfool_step_reference, sgd_reference
from _toys import CountingModel, make_cnn, make_problem

K = 3


def _attacks(model: nn.Module, max_iter: int = 100) -> dict[str, object]:
    """The four attacks with step sizes that suit the random toy CNN (tiny input gradients)."""
    return {
        "tkmia": TkMIA(model, K, lr=5.0, lam=1e-3, max_iter=max_iter),
        "tkmlapu": TkMLAPU(model, K, lr=50.0, lam=1e-5, max_iter=max_iter),
        "mlcwu": MLCWU(model, K, lr=50.0, lam=1e-5, max_iter=max_iter),
        # tkmia's variant: the default's steps cross the toy's boundaries less often (the
        # default is checked against the reference loop below)
        "kfool": KFool(model, K, max_iter=min(max_iter, 10), linearize="tanh", overshoot=0.02),
    }


@pytest.mark.parametrize(
    ("name", "dtype"),
    [
        ("tkmia", torch.float32),
        ("tkmlapu", torch.float32),
        ("mlcwu", torch.float32),
        ("tkmia", torch.float64),
        ("tkmlapu", torch.float64),
        ("mlcwu", torch.float64),
        ("kfool", torch.float64),
    ],
)
def test_batched_equals_one_by_one(name: str, dtype: torch.dtype) -> None:
    """A sample's result does not depend on its batch mates.

    kFool is checked in float64 only: on this random toy model its steps are huge
    (tiny input gradients), which amplifies the last-bit differences between a batched
    and a single-image float32 convolution; the engine itself is batch-independent.
    """
    model = make_cnn(dtype=dtype)
    x, y, s = make_problem(model, 16, K, n_relevant=4, n_specified=2, dtype=dtype)
    atk = _attacks(model)[name]
    batched = atk(x, y, s, threshold=1)
    assert 3 <= batched.success.sum() <= 16
    for i in range(16):
        alone = atk(x[i : i + 1], y[i : i + 1], s[i : i + 1], threshold=1)
        assert alone.success.item() == batched.success[i].item()
        assert alone.iterations.item() == batched.iterations[i].item()
        torch.testing.assert_close(alone.adv_images[0], batched.adv_images[i], atol=1e-4, rtol=0)
        torch.testing.assert_close(alone.adv_scores[0], batched.adv_scores[i], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["tkmia", "tkmlapu", "mlcwu", "kfool"])
@pytest.mark.parametrize("threshold", [None, 1, 2])
def test_returned_images_meet_the_success_rule(name: str, threshold: int | None) -> None:
    model = make_cnn()
    x, y, s = make_problem(model, 12, K, n_relevant=5, n_specified=2)
    res = _attacks(model, max_iter=300)[name](x, y, s, threshold=threshold)
    assert res.success.any()
    assert res.adv_images.min() >= 0 and res.adv_images.max() <= 1
    with torch.no_grad():
        rescored = model(res.adv_images)
    torch.testing.assert_close(rescored, res.adv_scores, atol=1e-5, rtol=1e-5)
    removed = removed_count(res.clean_scores, rescored, s, K)
    assert torch.equal(removed >= res.required, res.success)
    in_top = (topk_mask(res.clean_scores, K) & s.bool()).sum(dim=1)
    expected = in_top if threshold is None else torch.full_like(in_top, threshold)
    assert torch.equal(res.required, expected)


@pytest.mark.parametrize("name", ["tkmia", "tkmlapu", "mlcwu", "kfool"])
def test_finished_samples_leave_the_batch(name: str) -> None:
    model = CountingModel(make_cnn())
    x, y, s = make_problem(model.model, 16, K)
    atk = _attacks(model)[name]
    model.sizes.clear()
    res = atk(x, y, s)
    sizes = model.sizes[1:]  # the first forward scores the clean images
    # success ends a sample: some succeed before max_iter and stop being evaluated
    early = res.success & (res.iterations < atk.max_iter)
    assert early.any() and (res.iterations < res.iterations.max()).any()
    # Each sample is evaluated at iterates 0 .. iterations[i], then leaves the batch:
    # the batch at iterate j holds exactly the samples that ran at least j steps.
    expected = [int((res.iterations >= j).sum()) for j in range(int(res.iterations.max()) + 1)]
    assert sizes == expected


@pytest.mark.parametrize("name", ["tkmia", "tkmlapu", "mlcwu", "kfool"])
def test_results_of_successful_samples_never_change(name: str) -> None:
    model = make_cnn()
    x, y, s = make_problem(model, 16, K, n_relevant=4, n_specified=2)
    short = _attacks(model, max_iter=40)[name](x, y, s, threshold=1)
    long = _attacks(model, max_iter=100)[name](x, y, s, threshold=1)
    done = short.success
    assert done.any()
    assert torch.equal(long.success[done], done[done])
    assert torch.equal(long.iterations[done], short.iterations[done])
    torch.testing.assert_close(long.adv_images[done], short.adv_images[done])


def test_first_success_is_returned() -> None:
    """With max_iter = the returned iteration count, the same iterate comes back."""
    model = make_cnn()
    x, y, s = make_problem(model, 8, K)
    res = TkMIA(model, K, lr=5.0, lam=1e-3, max_iter=60)(x, y, s)
    for i in torch.nonzero(res.success).flatten().tolist():
        it = int(res.iterations[i])
        if it == 0:
            continue
        before = TkMIA(model, K, lr=5.0, lam=1e-3, max_iter=it - 1)(
            x[i : i + 1], y[i : i + 1], s[i : i + 1]
        )
        assert not before.success.item()


def test_change_of_variables_round_trips() -> None:
    x = torch.rand(2, 3, 8, 8)
    x[0, 0, 0, 0] = 0.0
    x[1, 0, 0, 0] = 1.0
    back = to_pixels(torch.atanh(2 * x.clamp(EPS, 1 - EPS) - 1))
    assert (back - x).abs().max() <= 2 * EPS


def test_unsuccessful_sample_returns_last_iterate() -> None:
    model = make_cnn()
    x, y, s = make_problem(model, 4, K)
    res = TkMIA(model, K, lr=1e-2, lam=0.0, max_iter=3)(x, y, s)
    assert not res.success.any()
    assert res.iterations.tolist() == [3, 3, 3, 3]
    assert (res.adv_images - x).abs().max() > 0


def test_normalize_inside_equals_wrapped_model() -> None:
    model = make_cnn()
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)

    class Wrapped(nn.Module):
        def forward(self, x):
            m = torch.tensor(mean).view(1, 3, 1, 1)
            d = torch.tensor(std).view(1, 3, 1, 1)
            return model((x - m) / d)

    x, y, s = make_problem(Wrapped(), 6, K)
    a = TkMIA(model, K, lr=5.0, lam=1e-3, max_iter=30, normalize=(mean, std))(x, y, s)
    b = TkMIA(Wrapped(), K, lr=5.0, lam=1e-3, max_iter=30)(x, y, s)
    assert torch.equal(a.success, b.success)
    torch.testing.assert_close(a.adv_images, b.adv_images, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("penalty", "lam"), [("w", 0.5), ("pixel", 4.0)])
def test_penalty_enters_the_step_as_specified(penalty: str, lam: float) -> None:
    """Three steps of the attack equal SPEC §4.1 written out in float64 (momentum SGD on
    the objective plus the chosen penalty), and differ from the steps without it."""
    model = make_cnn(dtype=torch.float64)
    x, y, s = make_problem(model, 6, K, dtype=torch.float64)
    steps, lr = 3, 0.5  # small steps: no sample succeeds, all run the three steps

    def objective(f):
        return tkmia_loss(f, y.bool(), s.bool(), K)

    atk = TkMIA(model, K, lr=lr, lam=lam, max_iter=steps, penalty=penalty)
    atk.min_step = 0.0  # plain SPEC §4.1 SGD (the boost has its own test below)
    res = atk(x, y, s)
    assert (res.iterations == steps).all() and not res.success.any()
    expect = sgd_reference(model, x, objective, lr, lam, steps, penalty, min_step=0.0)
    torch.testing.assert_close(res.adv_images, expect, atol=1e-9, rtol=0)
    without = sgd_reference(model, x, objective, lr, 0.0, steps, min_step=0.0)
    assert (res.adv_images - without).abs().max() > 100 * 1e-9  # the penalty moved the step


@pytest.mark.parametrize(
    ("name", "loss"),
    [
        ("tkmia", lambda f, y, s: tkmia_loss(f, y, s, K)),
        ("tkmlapu", lambda f, y, s: tkmlap_loss(f, y, K)),
        ("mlcwu", lambda f, y, s: mlcw_loss(f, y)),
    ],
)
def test_loss_attacks_lower_their_own_loss(name, loss) -> None:
    model = make_cnn()
    x, y, s = make_problem(model, 8, K)
    cls = {"tkmia": TkMIA, "tkmlapu": TkMLAPU, "mlcwu": MLCWU}[name]
    values = []
    for steps in (1, 5, 10, 20):
        # an impossible threshold is not allowed, so use a model-independent trick:
        # lam = 0 and a small learning rate keep every sample running for `steps` steps.
        res = cls(model, K, lr=0.5, lam=0.0, max_iter=steps)(x, y, s)
        with torch.no_grad():
            values.append(float(loss(model(res.adv_images), y.bool(), s.bool()).mean()))
    assert values[0] > values[1] > values[2] > values[3]


def test_mlcwu_eps_bounds_the_perturbation() -> None:
    model = make_cnn()
    x, y, s = make_problem(model, 8, K)
    res = MLCWU(model, K, lr=5.0, lam=0.0, max_iter=30, eps=0.5)(x, y, s)
    norms = (res.adv_images - x).flatten(1).norm(dim=1)
    assert norms.max() <= 0.5 + 1e-3
    free = MLCWU(model, K, lr=5.0, lam=0.0, max_iter=30)(x, y, s)
    assert (free.adv_images - x).flatten(1).norm(dim=1).max() > 0.5


class LinearInTanhSpace(nn.Module):
    """f(x) = W atanh(2x − 1) + b: linear in the variable the attacks step in."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.w, self.b = w, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.atanh((2 * x - 1).clamp(-1 + 1e-12, 1 - 1e-12))
        return z.flatten(1) @ self.w.T + self.b


def test_kfool_crosses_a_linear_boundary_in_one_step() -> None:
    torch.manual_seed(0)
    d, c, k = 12, 4, 1
    w = torch.randn(c, d, dtype=torch.float64)
    x = torch.full((1, 3, 2, 2), 0.5, dtype=torch.float64)
    b = torch.tensor([[3.0, 2.0, -5.0, -6.0]], dtype=torch.float64)
    model = LinearInTanhSpace(w, b)
    # Y = {0}: m = 0 is top-1; the one label in its way among the top-2 is p = 1.
    y = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    res = KFool(model, k, max_iter=5, linearize="tanh", overshoot=0.02)(x, y, y)
    assert res.success.item() and res.iterations.item() == 1
    # closed form: r = |d| g / ‖g‖², g = W_1 − W_0, d = f_1 − f_0 = −1
    g = w[1] - w[0]
    r = 1.0 * g / g.dot(g)
    expect = to_pixels(torch.atanh(2 * x.clamp(EPS, 1 - EPS) - 1) + 1.02 * r.view(1, 3, 2, 2))
    torch.testing.assert_close(res.adv_images, expect)
    f = model(res.adv_images)[0]
    assert f[1] - f[0] == pytest.approx(0.02, abs=1e-6)


@pytest.mark.parametrize("targets", ["relevant", "specified"])
def test_kfool_anchors_on_the_best_target_not_the_best_label(targets: str) -> None:
    """The clean top-1 is irrelevant here: kFool's anchor ``m`` is the best *target*
    label, and every step equals SPEC §4.2's, written out one image at a time."""
    model = make_cnn(dtype=torch.float64)
    g = torch.Generator().manual_seed(4)
    x = torch.rand(6, 3, 16, 16, generator=g, dtype=torch.float64)
    with torch.no_grad():
        order = model(x).argsort(dim=1, descending=True)
    y = torch.zeros(6, 10, dtype=torch.float64)
    y.scatter_(1, order[:, 1:5], 1)  # ranks 2..5 relevant; the top-1 is not
    s = torch.zeros_like(y)
    s.scatter_(1, order[:, 2:3], 1)  # the third-ranked label: the best target only for S
    atk = KFool(model, K, max_iter=3, baseline_targets=targets, linearize="tanh", overshoot=0.02)
    res = atk(x, y, s)
    assert (res.iterations >= 1).all()
    for i in range(6):
        anchor = int(order[i, 1] if targets == "relevant" else order[i, 2])
        r = torch.zeros_like(x[i : i + 1])
        for _ in range(int(res.iterations[i])):
            r = kfool_step_reference(model, x[i : i + 1], r, anchor, K, atk.overshoot)
        z0 = torch.atanh(2 * x[i : i + 1].clamp(EPS, 1 - EPS) - 1)
        expect = (torch.tanh(z0 + (1 + atk.overshoot) * r) + 1) / 2
        torch.testing.assert_close(res.adv_images[i : i + 1], expect, atol=1e-7, rtol=0)


def _smooth_problem(b: int, k: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A small float64 tanh MLP on (3, 4, 4) images with input gradients of order 1 (kFool's
    steps stay moderate, no pixel saturates: not chaotic), and an S1 problem on it: Y the
    clean top-3, S one label of the clean top-k."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.Tanh(), nn.Linear(16, 6))
    model = model.double().eval()
    with torch.no_grad():
        model[1].weight.mul_(3.0)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(b, 3, 4, 4, generator=g, dtype=torch.float64)
    with torch.no_grad():
        order = model(x).argsort(dim=1, descending=True)
    y = torch.zeros(b, 6, dtype=torch.float64).scatter_(1, order[:, :3], 1)
    s = torch.zeros_like(y)
    for i in range(b):
        s[i, order[i, torch.randperm(k, generator=g)[:1]]] = 1
    return model, x, y, s


@pytest.mark.parametrize("batch_size", [None, 3])
def test_kfool_matches_the_reference_loop_one_image_at_a_time(batch_size) -> None:
    """The default kFool (pixel-space gradients, no overshoot) is the paper's loop: the
    same success flags, step counts and images as ``kfool_global`` written out one image
    at a time in float64 (``_brute.kfool_loop_reference``)."""
    k, max_iter = 2, 30
    model, x, y, s = _smooth_problem(16, k)
    res = KFool(model, k, max_iter=max_iter)(x, y, s, batch_size=batch_size)
    assert 3 <= int(res.success.sum()) < 16 and len(set(res.iterations.tolist())) >= 3
    for i in range(16):
        ok, steps, image = kfool_loop_reference(model, x[i : i + 1], y[i], s[i], k, max_iter)
        assert (res.success[i].item(), res.iterations[i].item()) == (ok, steps), i
        torch.testing.assert_close(res.adv_images[i : i + 1], image, atol=1e-8, rtol=0)


def test_kfool_variants_differ_on_the_smooth_model() -> None:
    """``linearize="tanh"`` and an overshoot are another attack: not the reference's."""
    model, x, y, s = _smooth_problem(16, 2)
    image = KFool(model, 2, max_iter=30)(x, y, s)
    tanh = KFool(model, 2, max_iter=30, linearize="tanh", overshoot=0.02)(x, y, s)
    assert not torch.equal(image.iterations, tanh.iterations)


def test_kfool_linearize_is_checked() -> None:
    model = make_cnn()
    with pytest.raises(InputError, match="linearize must be one of"):
        KFool(model, K, max_iter=3, linearize="pixels")
    with pytest.raises(InputError, match="overshoot must be"):
        KFool(model, K, max_iter=3, overshoot=float("inf"))


def test_kfool_stops_when_no_target_is_left_in_top_k() -> None:
    model = make_cnn()
    x, y, s = make_problem(model, 8, K, n_relevant=4, n_specified=1)
    # success needs ΔN >= 1 on S, but kFool attacks all of Y; it stops when Y left the top-k
    res = KFool(model, K, max_iter=50, stop_when_stalled=False)(x, y, s)
    top = res.adv_scores.topk(K, dim=1).indices
    no_target_left = ~y.bool().gather(1, top).any(1)
    assert (res.success | no_target_left | (res.iterations == 50)).all()


def test_kfool_stops_before_max_iter_once_every_target_left_the_top_k() -> None:
    """Targets S, Y = the clean top-3 = the clean top-k: with ``success="preserve"`` an
    iterate where S has left the top-k has not succeeded (an irrelevant label took its
    place), and kFool stops the sample there, at the first such iterate (where the paper's
    rule, on the same iterates, succeeds), well before ``max_iter``."""
    model = make_cnn(dtype=torch.float64)
    x, y, s = make_problem(model, 8, K, n_relevant=K, n_specified=1, dtype=torch.float64)
    kw = {"max_iter": 60, "baseline_targets": "specified"}
    res = KFool(model, K, success="preserve", **kw)(x, y, s)
    paper = KFool(model, K, **kw)(x, y, s)
    top = res.adv_scores.topk(K, dim=1).indices
    gone = ~s.bool().gather(1, top).any(1)
    assert gone.sum() >= 4 and not res.success.any()
    assert (res.iterations[gone] < 60).all()
    assert paper.success[gone].all()
    assert torch.equal(res.iterations[gone], paper.iterations[gone])


class _LinearInPixels(nn.Module):
    def __init__(self, w: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.w, self.b = w, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w.T + self.b


def test_kfool_a_step_negative_on_every_pixel_is_not_a_stall() -> None:
    """f linear in the pixels, g = W_1 − W_0 = −1 on every pixel, clean pixels 0.5: every
    step lowers every (unsaturated) pixel, and the boundary (pixels at 0.25) is only
    approached (the tanh map shrinks each step), so kFool runs to ``max_iter`` as the
    reference loop does; a stall check that only sees positive steps would stop it after
    one."""
    d = 12
    w = torch.stack([torch.full((d,), 0.5), torch.full((d,), -0.5), torch.zeros(d)]).double()
    model = _LinearInPixels(w, torch.tensor([0.0, 3.0, -10.0], dtype=torch.float64))
    x = torch.full((1, 3, 2, 2), 0.5, dtype=torch.float64)
    y = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    res = KFool(model, 1, max_iter=10)(x, y, y)
    ok, steps, image = kfool_loop_reference(model, x, y[0], y[0], 1, 10)
    assert (ok, steps) == (False, 10)
    assert not res.success.item() and res.iterations.item() == 10
    torch.testing.assert_close(res.adv_images, image, rtol=0, atol=1e-12)
    assert ((res.adv_images > 0.25) & (res.adv_images < 0.3)).all()


@pytest.mark.parametrize("linearize", ["image", "tanh"])
@pytest.mark.parametrize("batch_size", [None, 1])
def test_kfool_stalled_samples_stop_with_the_result_of_max_iter(batch_size, linearize) -> None:
    """A sample whose kFool step moves no pixel (every pixel it pushes is saturated that
    way) stops early; its image, scores and success are those of running on to max_iter."""
    model = make_cnn(dtype=torch.float64)
    x, y, s = make_problem(model, 16, K, dtype=torch.float64)
    kw = {"linearize": linearize, "overshoot": 0.02 if linearize == "tanh" else 0.0}
    full = KFool(model, K, 300, stop_when_stalled=False, **kw)(x, y, s, batch_size=batch_size)
    early = KFool(model, K, max_iter=300, **kw)(x, y, s, batch_size=batch_size)
    assert torch.equal(early.adv_images, full.adv_images)
    # scored in working sets of other sizes (samples leave earlier): last-bit differences
    torch.testing.assert_close(early.adv_scores, full.adv_scores, rtol=0, atol=1e-12)
    assert torch.equal(early.success, full.success)
    stalled = early.iterations < full.iterations
    assert stalled.sum() >= (3 if linearize == "tanh" else 2)  # failures that saturate
    assert (full.iterations[stalled] == 300).all() and not early.success[stalled].any()
    if linearize == "tanh":  # there, a step moves no pixel only once all are saturated
        saturated = ((early.adv_images == 0) | (early.adv_images == 1)).flatten(1).all(dim=1)
        assert saturated[stalled].all()
    assert torch.equal(early.iterations[~stalled], full.iterations[~stalled])


# ------------------------------------------------------------------ validation
def _valid(model: nn.Module):
    return make_problem(model, 4, K)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda x, y, s: (x[0], y, s), "images must be a tensor of shape"),
        (lambda x, y, s: (x * 2, y, s), r"images must lie in \[0, 1\]"),
        (lambda x, y, s: (x.masked_fill(x > 0.9, float("nan")), y, s), "NaN"),
        (lambda x, y, s: ((x * 255).to(torch.uint8), y, s), "floating point"),
        (lambda x, y, s: (x, y[:3], s), "labels must have shape"),
        (lambda x, y, s: (x, y * 2, s), "labels must contain only 0 and 1"),
        (lambda x, y, s: (x, y, s[:, :5]), "specified must have shape|same shape"),
        (lambda x, y, s: (x, y, torch.zeros_like(s)), "non-empty"),
        (lambda x, y, s: (x, y, 1 - y), "subset of labels"),
        (lambda x, y, s: (x, s, s), "relevant label outside specified"),
    ],
)
def test_invalid_inputs_raise_value_error(mutate, match) -> None:
    model = make_cnn()
    x, y, s = mutate(*_valid(model))
    with pytest.raises(ValueError, match=match):
        TkMIA(model, K, lr=1.0, lam=0.0, max_iter=2)(x, y, s)


def test_model_output_shape_is_checked() -> None:
    model = make_cnn(c=10)
    x, y, s = _valid(model)
    bad = nn.Sequential(model, nn.Linear(10, 7))
    with pytest.raises(InputError, match="model must return scores of shape"):
        TkMIA(bad, K, lr=1.0, lam=0.0, max_iter=2)(x, y, s)


def test_k_must_be_below_c() -> None:
    model = make_cnn(c=10)
    x, y, s = _valid(model)
    with pytest.raises(InputError, match="k must satisfy"):
        TkMIA(model, 10, lr=1.0, lam=0.0, max_iter=2)(x, y, s)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 0}, "k must be an integer"),
        ({"lr": 0.0}, "lr must be a number > 0"),
        ({"lam": -1.0}, "lam must be a number >= 0"),
        ({"max_iter": 0}, "max_iter must be an integer"),
        ({"penalty": "l2"}, "penalty must be"),
    ],
)
def test_bad_hyper_parameters(kwargs, match) -> None:
    args = {"k": 3, "lr": 1.0, "lam": 0.0, "max_iter": 2} | kwargs
    with pytest.raises(InputError, match=match):
        TkMIA(make_cnn(), **args)


def test_threshold_above_what_can_be_removed_is_rejected() -> None:
    model = make_cnn()
    x, y, s = make_problem(model, 4, K, n_specified=1)
    with pytest.raises(InputError, match="fewer specified labels in their clean top-3"):
        TkMIA(model, K, lr=1.0, lam=0.0, max_iter=2)(x, y, s, threshold=2)
    with pytest.raises(InputError, match="threshold must be an integer"):
        TkMIA(model, K, lr=1.0, lam=0.0, max_iter=2)(x, y, s, threshold=0)


def test_baseline_targets_option() -> None:
    model = make_cnn()
    x, y, s = make_problem(model, 8, K)
    with pytest.raises(InputError, match="baseline_targets"):
        TkMLAPU(model, K, 1.0, 0.0, 5, baseline_targets="all")


@pytest.mark.parametrize("cls", [TkMLAPU, MLCWU])
@pytest.mark.parametrize("targets", ["relevant", "specified"])
def test_baseline_targets_choose_the_labels_the_loss_attacks(cls, targets: str) -> None:
    """ "relevant" minimises the baseline's loss over Y, "specified" over S (float64,
    against SPEC §4.1 written out)."""
    model = make_cnn(dtype=torch.float64)
    x, y, s = make_problem(model, 6, K, n_relevant=4, n_specified=1, dtype=torch.float64)
    attacked = (y if targets == "relevant" else s).bool()
    steps, lr, lam = 3, 0.5, 1e-3

    def objective(f):
        if cls is TkMLAPU:
            return tkmlap_loss(f, attacked, K)
        return mlcw_loss(f, attacked)

    res = cls(model, K, lr, lam, steps, baseline_targets=targets)(x, y, s)
    assert (res.iterations == steps).all()
    expect = sgd_reference(model, x, objective, lr, lam, steps)
    torch.testing.assert_close(res.adv_images, expect, atol=1e-9, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_engine_pixels_match_the_change_of_variables_bit_for_bit(dtype) -> None:
    """The engine's fused transform equals to_pixels(z0 + v), value and gradient."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 8, 8, generator=g, dtype=dtype)
    z0 = torch.atanh(2 * x.clamp(EPS, 1 - EPS) - 1)
    v0 = 0.3 * torch.randn(x.shape, generator=g, dtype=dtype)
    v0[0] *= 60  # pixels saturated at 0 and 1 too
    weight = torch.randn(x.shape, generator=g, dtype=dtype)
    outs, grads = [], []
    for fn in (lambda v: to_pixels(z0 + v), lambda v: PixelMap.apply(z0, v)):
        v = v0.clone().requires_grad_(True)
        out = fn(v)
        (grad,) = torch.autograd.grad((out * weight).sum(), v)
        outs.append(out.detach())
        grads.append(grad)
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(grads[0], grads[1])


def test_pixel_map_is_the_tanh_change_of_variables_and_saturates_alike_at_0_and_1() -> None:
    """to_pixels(z) = (tanh(z) + 1)/2 (float64 reference) to float32 resolution (2 ulp
    of 1, where float32's own (tanh + 1)/2 is within 1 ulp, and its gradient 1 ulp); it is
    exactly 0 or 1, with a gradient of exactly 0, beyond |z| = 8.7 on both sides (as
    float32's (tanh + 1)/2), and never outside [0, 1]."""
    z = torch.linspace(-60, 60, 200_001, dtype=torch.float32).requires_grad_(True)
    out = to_pixels(z)
    (grad,) = torch.autograd.grad(out.sum(), z)
    x = out.detach()
    ref = (torch.tanh(z.detach().double()) + 1) / 2
    assert float((x.double() - ref).abs().max()) < 1.2e-7
    ref_grad = 0.5 * (1 - torch.tanh(z.detach().double()) ** 2)
    assert float((grad.double() - ref_grad).abs().max()) < 2.4e-7
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    outside = z.detach().abs() > 8.7
    assert bool(((x == 0) | (x == 1))[outside].all())
    assert bool((grad[outside] == 0).all())
    inside = z.detach().abs() < 8.3
    assert bool(((x > 0) & (x < 1))[inside].all())
    assert bool((grad[inside] > 0).all())


@pytest.mark.parametrize("penalty", ["w", "pixel"])
@pytest.mark.parametrize("cls", [TkMIA, TkMLAPU, MLCWU])
def test_closed_form_objective_gradient_equals_autograd(cls, penalty, monkeypatch) -> None:
    """The loss attacks step with the closed-form gradient of their objective; with
    autograd's instead (objective_grad -> None) every result is the same, bit for bit."""
    model = make_cnn()
    x, y, s = make_problem(model, 12, K, n_relevant=4, n_specified=2)
    atk = cls(model, K, lr=5.0 if cls is TkMIA else 50.0, lam=1e-3, max_iter=15, penalty=penalty)
    closed = atk(x, y, s, threshold=1)
    assert int(closed.success.sum()) > 0 and len(set(closed.iterations.tolist())) > 2
    monkeypatch.setattr(cls, "objective_grad", lambda self, scores, ctx: None)
    auto = atk(x, y, s, threshold=1)
    assert torch.equal(closed.adv_images, auto.adv_images)
    assert torch.equal(closed.iterations, auto.iterations)


@pytest.mark.parametrize("penalty", ["w", "pixel"])
def test_sgd_step_is_torch_sgd(penalty) -> None:
    """LossAttack's step is torch.optim.SGD's (momentum 0.9, weight decay λ on w)."""
    decay = 0.05 if penalty == "w" else 0.0
    g = torch.Generator().manual_seed(0)
    w = torch.randn(2, 3, 4, 4, generator=g)
    param = w.clone().requires_grad_(True)
    opt = torch.optim.SGD(
        [param], lr=0.3, momentum=0.9, weight_decay=0.05 if penalty == "w" else 0.0
    )
    buf = torch.zeros_like(w)
    for _ in range(3):
        grad = torch.randn(w.shape, generator=g)
        param.grad = grad.clone()
        opt.step()
        w = sgd_step(w, grad, buf, 0.3, decay)
        torch.testing.assert_close(w, param.detach(), rtol=1e-6, atol=1e-7)


def test_sgd_step_with_a_gradient_in_another_memory_layout() -> None:
    """A channels-last gradient (what a channels-last model returns) steps like its
    contiguous copy: the fused kernel must not read it in w's layout."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(2, 3, 4, 4, generator=g)
    grad = torch.randn(2, 3, 4, 4, generator=g)
    expected = sgd_step(w.clone(), grad, torch.zeros_like(w), 0.3, 0.05)
    last = grad.contiguous(memory_format=torch.channels_last)
    assert last.stride() != grad.stride()
    assert torch.equal(sgd_step(w.clone(), last, torch.zeros_like(w), 0.3, 0.05), expected)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_fused_sgd_step_equals_the_separate_passes(fmt, monkeypatch) -> None:
    """The fused kernel (on flat views of w, grad and the momentum buffer, in their common
    layout) steps w and the buffer in place, bit for bit as the three separate passes."""
    from tkmia.attacks import loss

    if loss._FUSED_SGD is None:
        pytest.skip("this PyTorch has no fused SGD kernel")
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(2, 3, 5, 4, generator=g).contiguous(memory_format=fmt)
    grads = [torch.randn(2, 3, 5, 4, generator=g).contiguous(memory_format=fmt) for _ in range(3)]
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return fused_sgd(*args, **kwargs)

    fused_sgd, runs = loss._FUSED_SGD, []
    for fused in (counted, None):
        monkeypatch.setattr(loss, "_FUSED_SGD", fused)
        w, buf = w0.clone(), torch.zeros_like(w0)
        for grad in grads:
            assert sgd_step(w, grad, buf, 0.3, 0.05) is w
        assert w.is_contiguous(memory_format=fmt) and buf.is_contiguous(memory_format=fmt)
        runs.append((w, buf))
    assert len(calls) == len(grads)  # the first run did take the fused path
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert not torch.equal(runs[0][0], w0)


@pytest.mark.parametrize("name", ["tkmia", "tkmlapu", "mlcwu", "kfool"])
def test_channels_last_model_gives_the_same_attack(name) -> None:
    """An attack on a channels-last copy of a model (the layout of its input gradients
    differs) gives the result of the attack on the model itself."""
    model = make_cnn(dtype=torch.float64)
    x, y, s = make_problem(model, 6, K, dtype=torch.float64)
    last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    wrapped = nn.Sequential(_ChannelsLast(), last).eval()
    a = _attacks(model, max_iter=30)[name](x, y, s)
    atk = _attacks(wrapped, max_iter=30)[name]
    assert atk.memory_format == torch.channels_last  # its state is kept in the model's layout
    assert _attacks(model, max_iter=30)[name].memory_format == torch.contiguous_format
    layouts = wrapped[0].layouts
    for batch_size in (None, 4):  # 4: slots are refilled and dropped (the queue's tail)
        layouts.clear()
        b = atk(x, y, s, batch_size=batch_size)
        assert b.adv_images.is_contiguous()  # handed back in the caller's layout
        assert layouts and all(layouts)  # every iteration's input arrives channels-last
        assert torch.equal(a.iterations, b.iterations)
        assert torch.equal(a.success, b.success)
        torch.testing.assert_close(a.adv_images, b.adv_images, rtol=0, atol=1e-9)


class _ChannelsLast(nn.Module):
    """Hands its input on in the channels-last layout; records, for the forward passes of
    attack iterations, whether the input already came so."""

    def __init__(self) -> None:
        super().__init__()
        self.layouts: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            self.layouts.append(x.is_contiguous(memory_format=torch.channels_last))
        return x.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("name", ["tkmia", "kfool"])
def test_an_attack_gives_the_model_back_its_own_mode(name) -> None:
    """The model runs in eval mode during the attack (same results as an eval model) and
    every module gets its own train/eval mode back afterwards."""
    model = nn.Sequential(make_cnn(), nn.Dropout(0.5)).eval()  # dropout: eval mode matters
    x, y, s = make_problem(model, 6, K)
    expected = _attacks(model, max_iter=20)[name](x, y, s)
    model.train()
    model[0][0].eval()  # a mixed state, as with frozen layers
    modes = [m.training for m in model.modules()]
    atk = _attacks(model, max_iter=20)[name]
    assert [m.training for m in model.modules()] == modes  # building it changes nothing
    res = atk(x, y, s)
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(res.adv_images, expected.adv_images)
    assert torch.equal(res.iterations, expected.iterations)


#: the tuned defaults (docs/benchmark.md, docs/beyond-the-paper.md), written out: a changed
#: default must be a deliberate change of this table too
_TUNED = {
    TkMIA: {"lr": 1e-4, "lam": 1e-3, "max_iter": 300},
    TkMLAPU: {"lr": 5e-4, "lam": 1e-3, "max_iter": 300},
    MLCWU: {"lr": 5e-4, "lam": 1e-3, "max_iter": 300},
    KFool: {"max_iter": 300, "overshoot": 0.0, "linearize": "image"},
    TkMLAPT: {"lr": 5e-4, "lam": 1e-3, "max_iter": 300, "tie": 0.0},
}


@pytest.mark.parametrize("cls", list(_TUNED), ids=lambda c: c.__name__)
def test_attacks_run_with_their_tuned_defaults_from_the_registry(cls) -> None:
    """``cls(model, k)`` has the tuned defaults, the registry has the same (one source of
    truth), and ``cls(model, k)`` runs."""
    import inspect

    from tkmia.experiments.methods import HYPERPARAMETERS, REGISTRY

    spec = next(s for s in REGISTRY.values() if s.cls is cls)
    want = _TUNED[cls] | {"success_rule": "paper", "quantize": 0}
    assert dict(spec.defaults) == want
    params = inspect.signature(cls).parameters
    keyword = {h: params[HYPERPARAMETERS[h].arg].default for h in spec.takes}
    # a keyword default None (quantize) is the hyper-parameter's implicit value (0: off)
    implicit = {h: HYPERPARAMETERS[h].implicit for h, v in keyword.items() if v is None}
    assert keyword | implicit == want
    model = make_cnn()
    x, y, s = make_problem(model, 2, K)
    atk = cls(model, K)
    assert {h: getattr(atk, h) for h in _TUNED[cls]} == _TUNED[cls]
    if cls is TkMLAPT:
        with torch.no_grad():
            order = model(x).argsort(dim=1, descending=True)
        s = torch.zeros_like(y).scatter_(1, order[:, -1:], 1.0)  # the last label: not in Y
    res = atk(x, y, s)
    assert res.success.shape == (2,)


def test_the_registry_reads_defaults_from_the_class_signature() -> None:
    """One source of truth: a registry entry's defaults are its class's keyword defaults,
    and a class without one for a hyper-parameter it takes is refused."""
    from tkmia.experiments.methods import MethodSpec

    class Slow(TkMIA):
        def __init__(self, model, k, lr=1e-5, lam=0.0, max_iter=7):
            super().__init__(model, k, lr, lam, max_iter)

    spec = MethodSpec("slow", "Slow", Slow, ("lr", "lam", "max_iter"), True)
    assert dict(spec.defaults) == {"lr": 1e-5, "lam": 0.0, "max_iter": 7}

    class NoDefault(TkMIA):
        def __init__(self, model, k, lr, lam=0.0, max_iter=7):
            super().__init__(model, k, lr, lam, max_iter)

    with pytest.raises(ValueError, match="no keyword default"):
        MethodSpec("bad", "Bad", NoDefault, ("lr", "lam", "max_iter"), True)


@pytest.mark.parametrize(("scale", "lr"), [(1e-3, 1e-4), (1.0, 0.05)])
def test_a_weak_first_gradient_raises_the_step_as_the_reference_does(
    scale: float, lr: float
) -> None:
    """A small first step (tiny logits, a small lr) is raised to the floor (issue 35): the
    attack's iterates are the float64 reference's with the boost, and not those without
    it; where lr·rms is above the floor nothing changes."""
    net = make_cnn(dtype=torch.float64)

    class Scaled(torch.nn.Module):
        def forward(self, x):
            return net(x) * scale

    model = Scaled()
    x, y, s = make_problem(model, 4, K, dtype=torch.float64)
    steps = 3

    def objective(f):
        return tkmia_loss(f, y.bool(), s.bool(), K)

    res = TkMIA(model, K, lr=lr, lam=1e-3, max_iter=steps)(x, y, s)
    assert (res.iterations == steps).all()
    expect = sgd_reference(model, x, objective, lr, 1e-3, steps)
    torch.testing.assert_close(res.adv_images, expect, atol=1e-9, rtol=0)
    plain = sgd_reference(model, x, objective, lr, 1e-3, steps, min_step=0.0)
    moved = (res.adv_images - plain).abs().max()
    assert moved > 1e-6 if scale < 1 else moved < 1e-12
