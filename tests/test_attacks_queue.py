"""Continuous batching (``batch_size``) and deferred completion checks (``sync_every``).

Both are engine scheduling choices: the result of every sample must be the one of a plain
call with the whole batch (SPEC §4.1: first successful iterate, same iteration counts).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tkmia.attacks import MLCWU, Attack, KFool, TkMIA, TkMLAPU
from tkmia.errors import InputError

from _brute import tkmia_loop
from _toys import CountingModel, make_cnn, make_problem

K = 3
B = 16
NAMES = ["tkmia", "tkmlapu", "mlcwu", "kfool"]


def _attack(name: str, model: nn.Module, max_iter: int = 15) -> Attack:
    """Step sizes that suit the random toy CNN (as in test_attacks.py)."""
    return {
        "tkmia": lambda: TkMIA(model, K, lr=5.0, lam=1e-3, max_iter=max_iter),
        "tkmlapu": lambda: TkMLAPU(model, K, lr=50.0, lam=1e-5, max_iter=max_iter),
        "mlcwu": lambda: MLCWU(model, K, lr=50.0, lam=1e-5, max_iter=max_iter),
        "kfool": lambda: KFool(model, K, max_iter=min(max_iter, 10)),
    }[name]()


def _dtype(name: str) -> torch.dtype:
    # kFool's huge steps on the random toy model amplify last-bit differences between
    # batch sizes (see test_batched_equals_one_by_one): compare it in float64.
    return torch.float64 if name == "kfool" else torch.float32


def _problem(name: str):
    model = make_cnn(dtype=_dtype(name))
    x, y, s = make_problem(model, B, K, n_relevant=4, n_specified=2, dtype=_dtype(name))
    return model, x, y, s


def _assert_same(a, b) -> None:
    assert torch.equal(a.success, b.success)
    assert torch.equal(a.iterations, b.iterations)
    assert torch.equal(a.required, b.required)
    torch.testing.assert_close(a.adv_images, b.adv_images, atol=1e-4, rtol=0)
    torch.testing.assert_close(a.adv_scores, b.adv_scores, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(a.clean_scores, b.clean_scores, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("batch_size", [1, 5, 16, 40])
def test_queue_equals_whole_batch(name: str, batch_size: int) -> None:
    model, x, y, s = _problem(name)
    atk = _attack(name, model)
    whole = atk(x, y, s, threshold=1)
    assert 0 < int(whole.success.sum()) < B  # some succeed at various iterations, some fail
    _assert_same(atk(x, y, s, threshold=1, batch_size=batch_size), whole)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("batch_size", "sync_every"), [(None, 3), (6, 4), (5, 16)])
def test_deferred_checks_equal_whole_batch(name, batch_size, sync_every) -> None:
    """sync_every > 1: finished samples stay in the batch (frozen) until the next check."""
    model, x, y, s = _problem(name)
    atk = _attack(name, model)
    whole = atk(x, y, s, threshold=1)
    deferred = atk(x, y, s, threshold=1, batch_size=batch_size, sync_every=sync_every)
    _assert_same(deferred, whole)


@pytest.mark.parametrize("name", ["tkmia", "kfool"])
def test_flags_read_after_the_update_equal_whole_batch(name, monkeypatch) -> None:
    """The CUDA ordering (flags waited for after the update step), exercised on the CPU."""
    model, x, y, s = _problem(name)
    atk = _attack(name, model)
    whole = atk(x, y, s, threshold=1)
    from tkmia.attacks import loop

    monkeypatch.setattr(loop, "flags_reader", lambda flags: lambda: flags.cpu())
    for batch_size, sync_every in [(None, 1), (5, 1), (5, 3)]:
        res = atk(x, y, s, threshold=1, batch_size=batch_size, sync_every=sync_every)
        _assert_same(res, whole)


@pytest.mark.parametrize("name", NAMES)
def test_continuous_batching_keeps_the_batch_full(name: str) -> None:
    """The working set never exceeds batch_size, stays full while samples are queued, and
    nothing is computed for a finished sample (sync_every = 1)."""
    model, x, y, s = _problem(name)
    counting = CountingModel(model)
    atk = _attack(name, counting)
    bs = 5
    counting.sizes.clear()
    res = atk(x, y, s, threshold=1, batch_size=bs)
    n_chunks = -(-B // bs)
    assert counting.sizes[:n_chunks] == [5, 5, 5, 1]  # the clean images, in chunks
    sizes = counting.sizes[n_chunks:]
    assert max(sizes) == bs
    assert sizes == sorted(sizes, reverse=True)
    assert sum(sizes) == int((res.iterations + 1).sum())
    # the batch only shrinks once every sample has been started: the last sample to start
    # is admitted when a slot frees up, at the latest while the batch is full
    full = sum(1 for n in sizes if n == bs)
    assert full >= len(sizes) - int(res.iterations.max()) - 1
    # fewer model calls than processing the batches one after another
    batch_by_batch = sum(int(res.iterations[i : i + bs].max()) + 1 for i in range(0, B, bs))
    assert len(sizes) <= batch_by_batch


@pytest.mark.parametrize("name", ["tkmia", "kfool"])
def test_deferred_checks_bound_the_extra_work(name: str) -> None:
    model, x, y, s = _problem(name)
    counting = CountingModel(model)
    atk = _attack(name, counting)
    counting.sizes.clear()
    res = atk(x, y, s, threshold=1, sync_every=4)
    evaluated = sum(counting.sizes[1:])
    needed = int((res.iterations + 1).sum())
    assert needed <= evaluated <= needed + 3 * B


class _FirstInputs(nn.Module):
    """Records the images of the attack's forward passes (grad enabled), one list per pass."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            self.inputs.append(x.detach().clone())
        return self.model(x)


def _margins(scores: torch.Tensor, s: torch.Tensor) -> list[float]:
    """Brute force: ``max_S f − f_[k+1]`` per sample."""
    out = []
    for f, m in zip(scores.tolist(), s.tolist(), strict=True):
        out.append(max(v for v, b in zip(f, m, strict=True) if b) - sorted(f, reverse=True)[K])
    return out


def _by_need(need: list[float], offset: int = 0) -> list[int]:
    """Sample numbers by decreasing expected need, ties in the given order."""
    return [offset + i for i in sorted(range(len(need)), key=lambda i: -need[i])]


def _start_order(name: str, model: nn.Module, chunks, as_list: bool) -> list[list[int]]:
    """The samples (numbers in the stream) that start at each attack iteration of a
    stream of ``chunks`` (given as a list, or as an iterator without a length)."""
    x = torch.cat([c[0] for c in chunks])
    rec = _FirstInputs(model)
    if name == "tkmia":
        atk = TkMIA(rec, K, lr=1e-9, lam=0.0, max_iter=2)  # nobody succeeds: 3 passes each
    else:
        atk = KFool(rec, K, max_iter=2)
    list(atk.stream(chunks if as_list else iter(chunks), threshold=1, batch_size=5))
    seen: set[int] = set()
    newcomers = []
    for batch in rec.inputs:
        dist = (batch.flatten(1)[:, None] - x.flatten(1)[None]).abs().amax(dim=2)
        new = [i for i in dist.argmin(dim=1).tolist() if i not in seen]
        seen.update(new)
        newcomers.append(new)
    return newcomers


@pytest.mark.parametrize("as_list", [False, True])
@pytest.mark.parametrize("name", ["kfool", "tkmia"])
def test_samples_start_longest_expected_first(name: str, as_list: bool) -> None:
    """Samples start by decreasing expected need: chunk by chunk, except that the last two
    chunks of a stream whose length is known start as one. The expected need is the clean
    margin of the best specified label over the (k+1)-th score (kFool), a loss-based
    attack's objective at the clean scores (TkMIA)."""
    model = make_cnn()
    x, y, s = make_problem(model, 2 * B + B // 2, K, n_relevant=4, n_specified=2)
    with torch.no_grad():
        scores = model(x)
    margins = _margins(scores, s)
    if name == "tkmia":
        rows = zip(scores.tolist(), y.int().tolist(), s.int().tolist(), strict=True)
        need = [tkmia_loop(f, yi, si, K) for f, yi, si in rows]
        # the toy problem tells the two apart (else this test could not see which one is used)
        assert _by_need(need[:B]) != _by_need(margins[:B])
    else:
        need = margins
    newcomers = _start_order(name, model, _cut(x, y, s, [B, B, B // 2]), as_list)
    first = _by_need(need[:B])
    if as_list:
        rest = _by_need(need[B:], B)
    else:
        rest = _by_need(need[B : 2 * B], B) + _by_need(need[2 * B :], 2 * B)
    expected = first + rest
    pos = 0
    for new in newcomers:  # each iteration's newcomers are the next ones in that order
        assert sorted(new) == sorted(expected[pos : pos + len(new)])
        pos += len(new)
    assert pos == len(expected)
    assert first != sorted(first)  # the toy problem does reorder
    separate = [i for i in rest if i < 2 * B] + [i for i in rest if i >= 2 * B]
    assert (rest != separate) == as_list  # the last two chunks mix, only with a length


def test_an_objective_that_needs_more_state_says_to_override_expected_need() -> None:
    class NeedsPixels(TkMIA):
        def objective(self, scores, state):
            return super().objective(scores, state) + 0 * state.x0.flatten(1).sum(dim=1)

    model, x, y, s = _problem("tkmia")
    atk = NeedsPixels(model, K, lr=1.0, lam=0.0, max_iter=2)
    with pytest.raises(RuntimeError, match=r"needs state\.x0.*override expected_need"):
        atk(x, y, s, threshold=1)


def test_an_error_in_the_last_chunk_read_early_is_raised_when_it_is_due() -> None:
    """With a length, the last chunk is read together with the one before it; its bad
    input is still reported only after the chunks before it came back."""
    model, x, y, s = _problem("tkmia")
    atk = _attack("tkmia", model)
    chunks = _cut(x, y, s, [4, 4, 4])
    bad = chunks[:2] + [(x[8:12], y[8:12], torch.zeros_like(s[8:12]))]
    got = []
    with pytest.raises(InputError, match="specified must be non-empty"):
        for res in atk.stream(bad, threshold=1, batch_size=4):
            got.append(res)
    assert len(got) >= 1
    _assert_same(got[0], atk(*chunks[0], threshold=1))

    def failing():
        yield from chunks[:2]
        raise OSError("disk gone")

    class Sized3:
        def __len__(self) -> int:
            return 3

        def __iter__(self):
            return failing()

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for res in atk.stream(Sized3(), threshold=1, batch_size=4):
            got.append(res)
    assert len(got) >= 1


def test_queue_handles_more_images_than_one_call_would_fit() -> None:
    """Unequal batch_size / B splits and a batch_size of 1 give the same results."""
    model = make_cnn()
    x, y, s = make_problem(model, 23, K, n_relevant=4, n_specified=1)
    atk = TkMIA(model, K, lr=5.0, lam=1e-3, max_iter=40)
    whole = atk(x, y, s)
    for bs in (1, 7, 22):
        _assert_same(atk(x, y, s, batch_size=bs), whole)


def test_empty_batch() -> None:
    model = make_cnn()
    x, y, s = make_problem(model, 4, K)
    res = TkMIA(model, K, lr=5.0, lam=1e-3, max_iter=5)(x[:0], y[:0], s[:0], batch_size=2)
    assert res.adv_images.shape == (0, 3, 16, 16) and res.success.shape == (0,)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size must be an integer"),
        ({"batch_size": 2.0}, "batch_size must be an integer"),
        ({"sync_every": 0}, "sync_every must be an integer"),
    ],
)
def test_bad_scheduling_arguments(kwargs, match) -> None:
    model = make_cnn()
    x, y, s = make_problem(model, 4, K)
    with pytest.raises(InputError, match=match):
        TkMIA(model, K, lr=1.0, lam=0.0, max_iter=2)(x, y, s, **kwargs)


# ------------------------------------------------------------------ stream of chunks
def _cut(x, y, s, sizes):
    """The triples of consecutive chunks of the given sizes."""
    out, start = [], 0
    for n in sizes:
        out.append((x[start : start + n], y[start : start + n], s[start : start + n]))
        start += n
    return out


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("batch_size", "sync_every"), [(4, 1), (5, 3), (1, 1), (40, 1)])
def test_stream_equals_one_call_per_chunk(name, batch_size, sync_every) -> None:
    """Chunks of a stream (an empty one too) come back in order, each with the result of
    attacking it alone, although their samples share one working set."""
    model, x, y, s = _problem(name)
    atk = _attack(name, model)
    sizes = [6, 0, 3, 7]
    chunks = _cut(x, y, s, sizes)
    results = list(
        atk.stream(iter(chunks), threshold=1, batch_size=batch_size, sync_every=sync_every)
    )
    assert [len(r.success) for r in results] == sizes
    for chunk, res in zip(chunks, results, strict=True):
        _assert_same(res, atk(*chunk, threshold=1))


def test_stream_keeps_the_batch_full_across_chunks() -> None:
    """The next chunk's samples take the slots the previous chunk's stragglers free: the
    working set shrinks only once the stream is dry, and the stream needs fewer model calls
    than one call per chunk."""
    model, x, y, s = _problem("tkmia")
    atk = _attack("tkmia", model, max_iter=40)
    chunks = _cut(x, y, s, [5, 5, 6])
    sizes, results = _loop_sizes(atk, chunks)
    iterations = torch.cat([r.iterations for r in results])
    assert len({int(i) for i in iterations}) > 3  # samples finish at different iterations
    assert max(sizes) == 4
    assert sizes == sorted(sizes, reverse=True)
    assert sum(sizes) == int((iterations + 1).sum())  # nothing computed for finished ones
    one_call_each = sum(len(_loop_sizes(atk, [c])[0]) for c in chunks)
    assert len(sizes) < one_call_each


def _loop_sizes(atk: Attack, chunks) -> tuple[list[int], list]:
    """Batch sizes of the attack iterations (forward passes with gradients) of a stream of
    ``chunks`` (batch_size 4), and its results."""
    sizes: list[int] = []
    hook = atk.model.register_forward_pre_hook(
        lambda m, inp: sizes.append(inp[0].shape[0]) if torch.is_grad_enabled() else None
    )
    try:
        results = list(atk.stream(chunks, threshold=1, batch_size=4))
    finally:
        hook.remove()
    return sizes, results


def test_stream_reads_chunks_lazily_and_reports_bad_input_after_the_good_chunks() -> None:
    model, x, y, s = _problem("tkmia")
    atk = _attack("tkmia", model)
    chunks = _cut(x, y, s, [4, 4, 4, 4])
    read: list[int] = []

    def source():
        for i, chunk in enumerate(chunks):
            read.append(i)
            yield chunk

    stream = atk.stream(source(), threshold=1, batch_size=4)
    next(stream)
    assert len(read) < len(chunks)  # the chunks needed so far, not the whole stream
    bad = list(chunks[:2]) + [(x[8:12], y[8:12], torch.zeros_like(s[8:12]))]
    got = []
    with pytest.raises(InputError, match="specified must be non-empty"):
        for res in atk.stream(iter(bad), threshold=1, batch_size=4):
            got.append(res)
    assert len(got) >= 1  # the first chunk came back before the bad one was read
    _assert_same(got[0], atk(*chunks[0], threshold=1))


def test_stream_rejects_chunks_that_do_not_match_the_first() -> None:
    model, x, y, s = _problem("tkmia")
    atk = _attack("tkmia", model)
    odd = (x[4:8].double(), y[4:8], s[4:8])
    with pytest.raises(InputError, match="first chunk's device, dtype"):
        list(atk.stream([(x[:4], y[:4], s[:4]), odd], threshold=1, batch_size=2))
    with pytest.raises(InputError, match="triple"):
        list(atk.stream([(x[:4], y[:4])], batch_size=2))
    with pytest.raises(InputError, match="batch_size must be an integer"):
        atk.stream([(x[:4], y[:4], s[:4])], batch_size=0)
