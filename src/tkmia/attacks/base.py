"""The attack engine shared by every attack (SPEC §4.1).

The engine owns everything but the objective: input validation, the model's input
normalisation, the tanh change of variables, per-sample success checks and early exit,
and the bookkeeping of results. An attack subclass supplies only its update rule
(:class:`Attack`) or, for loss-based attacks, only its objective (:class:`LossAttack`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from dataclasses import dataclass, field

import torch
from torch import nn

from tkmia.errors import InputError
from tkmia.losses import _masked_max
from tkmia.metrics import topk_indices, topk_mask

__all__ = ["Attack", "AttackResult", "LossAttack", "model_memory_format"]

#: pixels are clamped to [EPS, 1 - EPS] before atanh, so that w = 0 gives back x within EPS.
EPS = 1e-6
#: pixels at most this are 0 (float32's resolution of (tanh + 1)/2 near 0 and 1): the map
#: saturates at 0 and 1 alike, at |w| > 8.66, where its gradient is exactly 0
_FLUSH = 2.0**-25
#: torch.optim.SGD's fused kernel (one pass for weight decay, momentum and step), if any
_FUSED_SGD = getattr(torch, "_fused_sgd_", None)
_FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
#: default ``sync_every`` off the CPU: the host reads the finished flags every 4 iterations.
DEFAULT_SYNC_EVERY = 4


@dataclass
class AttackResult:
    """What an attack returns for a batch of B images with c labels.

    Attributes:
        adv_images: ``(B, C, H, W)`` in [0, 1]: the first iterate that met the success
            rule, or the last evaluated iterate for samples that never did.
        success: ``(B,)`` bool.
        iterations: ``(B,)`` long: optimisation steps taken before the returned iterate.
        clean_scores: ``(B, c)`` model scores of the clean images.
        adv_scores: ``(B, c)`` model scores of ``adv_images``.
        specified: ``(B, c)`` bool, the labels the attack had to hide.
        required: ``(B,)`` long, the ΔN each sample needed for success.
    """

    adv_images: torch.Tensor
    success: torch.Tensor
    iterations: torch.Tensor
    clean_scores: torch.Tensor
    adv_scores: torch.Tensor
    specified: torch.Tensor
    required: torch.Tensor


class _NormalizedModel(nn.Module):
    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean.to(x)) / self.std.to(x))


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InputError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def _check_positive(name: str, value: object, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (value >= 0 if allow_zero else value > 0) and value == value
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise InputError(f"{name} must be a number {bound}, got {value!r}")
    return float(value)


def _to_pixels(z: torch.Tensor) -> torch.Tensor:
    """Inverse of the change of variables: tanh space to pixels in [0, 1].

    ``(tanh(z) + 1) / 2``, computed as ``σ(2z)``: the same function
    (``tanh z = 2σ(2z) − 1``), about 3.5x cheaper than ``torch.tanh`` on a CPU (where
    tanh is the dearest op of an attack iteration after the model).
    """
    return nn.functional.threshold(torch.sigmoid(2 * z), _FLUSH, 0.0)


def model_memory_format(model: nn.Module) -> torch.memory_format:
    """The memory layout the model's convolutions take their input in: channels-last if any
    4-D parameter is stored so (``model.to(memory_format=torch.channels_last)``)."""
    for p in model.parameters():
        if p.dim() == 4 and not p.is_contiguous():
            if p.is_contiguous(memory_format=torch.channels_last):
                return torch.channels_last
    return torch.contiguous_format


def _flat_view(t: torch.Tensor) -> torch.Tensor | None:
    """A 1-D view of all of ``t``'s elements in memory order, if ``t`` is dense in the
    standard or (4-D) channels-last layout; else ``None``."""
    if t.is_contiguous():
        return t.view(-1)
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1).view(-1)
    return None


def _upload(index: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host index tensor on ``device``; on CUDA without waiting for the queued work."""
    if device.type == "cuda":
        return index.pin_memory().to(device, non_blocking=True)
    return index.to(device)


class _Pixels(torch.autograd.Function):
    """``_to_pixels(z0 + v)`` and its gradient w.r.t. ``v``, bit for bit, in fewer passes
    and allocations (in place on one buffer; the pixels themselves are what the gradient
    ``2·x·(1 − x)`` needs)."""

    @staticmethod
    def forward(ctx, z0: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        x = nn.functional.threshold_(torch.add(z0, v).mul_(2).sigmoid_(), _FLUSH, 0.0)
        ctx.save_for_backward(x)
        return x

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        (x,) = ctx.saved_tensors
        g = torch.ops.aten.sigmoid_backward(grad, x).mul_(2)
        return (g if ctx.needs_input_grad[0] else None), (g if ctx.needs_input_grad[1] else None)


class Attack:
    """Base class: a batched, per-sample early-exit attack on a top-k multi-label model.

    Args:
        model: maps images ``(B, C, H, W)`` to scores ``(B, c)``; put in eval mode.
        k: the top-k the attacked system reports, ``1 <= k < c``.
        max_iter: at most this many update steps per sample.
        normalize: optional ``(mean, std)`` per channel, applied inside the attack so that
            callers always pass (and get back) pixels in [0, 1].

    Calling the attack:
    ``atk(images, labels, specified, threshold=None, batch_size=None, sync_every=None)``:
        images: ``(B, C, H, W)`` float in [0, 1].
        labels: ``(B, c)`` 0/1 ground truth (the relevant set Y).
        specified: ``(B, c)`` 0/1, a non-empty subset S of the relevant labels to hide.
        threshold: ``None`` for S1's rule (every specified label in the clean top-k must
            leave it, ``ΔN >= |S ∩ T_k(x)|``), or an int ``t`` (``ΔN >= t``).
        batch_size: ``None`` optimises all B samples together; an int keeps a working
            set of at most ``batch_size`` samples and refills the slot of every sample
            that finishes from the queue of those not yet started (continuous batching).
            The results are those of the whole-batch call.
        sync_every: how often (in iterations) the host looks at which samples finished;
            ``None``: 1 on the CPU, 4 elsewhere. Never changes the results.

    ``atk.stream(chunks, threshold=None, batch_size=64, sync_every=None)`` attacks an
    iterable of ``(images, labels, specified)`` chunks through one working set and yields
    each chunk's result as it completes (see :meth:`stream`).

    Subclasses implement :meth:`_update` (and may extend :meth:`_prepare`/:meth:`_finished`).
    Samples are independent: a sample's result never depends on its batch mates, and a
    sample that succeeds leaves the batch.
    """

    #: TkMIA needs a relevant label outside S to promote; baselines do not.
    needs_remaining: bool = False

    def __init__(
        self,
        model: nn.Module,
        k: int,
        max_iter: int,
        normalize: tuple[Sequence[float], Sequence[float]] | None = None,
    ) -> None:
        self.k = _check_int("k", k, 1)
        self.max_iter = _check_int("max_iter", max_iter, 1)
        model.eval()
        if normalize is not None:
            if len(normalize) != 2:
                raise InputError("normalize must be a pair (mean, std) of per-channel sequences")
            if any(float(s) <= 0 for s in normalize[1]):
                raise InputError(f"normalize std must be positive, got {list(normalize[1])}")
            model = _NormalizedModel(model, *normalize).eval()
        self.model = model
        #: the layout of the attack's state (z0, w, momentum, ...): the model's own, so that
        #: neither the input nor its gradient is copied between layouts every iteration
        self.memory_format = model_memory_format(model)

    # ----------------------------------------------------------------- hooks
    def _prepare(self, clean_scores: torch.Tensor, ctx: dict[str, torch.Tensor]) -> None:
        """Add per-sample tensors (first dimension B) to ``ctx`` before the loop."""

    def _finished(self, scores: torch.Tensor, ctx: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(n,)`` bool: samples the attack gives up on (besides success and max_iter)."""
        return torch.zeros(scores.shape[0], dtype=torch.bool, device=scores.device)

    def _update(
        self,
        x_adv: torch.Tensor,
        scores: torch.Tensor,
        ctx: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """One step for the ``n`` active samples; returns the new ``v`` ``(n, C, H, W)``.

        ``x_adv`` are the pixels of the tanh-space point ``z0 + v`` (``ctx["z0"]``; the
        graph leaf ``v`` is ``ctx["v"]``) and ``scores = model(x_adv)``, both still
        attached to the graph.
        ``ctx`` holds the working set's rows of every per-sample tensor; an attack keeps
        its state there (updated in place or replaced by a new tensor of the same shape),
        and it may compute the new ``v`` in place in ``ctx["v"]`` (detached).
        The engine drops the rows of samples that finish or writes the next queued
        samples' rows over them in place, so every entry must be created by
        :meth:`_prepare`. Rows of samples that finished since the engine's last check
        (``sync_every > 1``) are updated too; the engine ignores their new ``v``.
        """
        raise NotImplementedError

    # ---------------------------------------------------------------- engine
    @torch.no_grad()
    def _validate(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        specified: torch.Tensor,
    ) -> None:
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
            raise InputError(f"images must be a tensor of shape (B, C, H, W), got {shape}")
        if not images.is_floating_point():
            raise InputError(f"images must be floating point in [0, 1], got dtype {images.dtype}")
        if images.numel():
            low, high = (float(t) for t in torch.aminmax(images))  # one pass; NaN propagates
            if not (math.isfinite(low) and math.isfinite(high)):
                raise InputError("images contain NaN or infinite values")
            if low < 0 or high > 1:
                raise InputError(
                    f"images must lie in [0, 1], got values in [{low:.4g}, {high:.4g}]; pass "
                    "un-normalised pixels and give the model's mean/std as normalize=(mean, std)"
                )
        b = images.shape[0]
        for name, mask in (("labels", labels), ("specified", specified)):
            if not isinstance(mask, torch.Tensor) or mask.dim() != 2 or mask.shape[0] != b:
                shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask)
                raise InputError(f"{name} must have shape (B, c) with B = {b}, got {shape}")
            if not bool(((mask == 0) | (mask == 1)).all()):
                raise InputError(f"{name} must contain only 0 and 1")
        if labels.shape != specified.shape:
            raise InputError(
                f"labels and specified must have the same shape, got {tuple(labels.shape)} "
                f"and {tuple(specified.shape)}"
            )
        c = labels.shape[1]
        if not self.k < c:
            raise InputError(f"k must satisfy 1 <= k < c = {c}, got k = {self.k}")
        lab, spec = labels.bool(), specified.bool()
        if bool((spec & ~lab).any()):
            bad = torch.nonzero((spec & ~lab).any(dim=1)).flatten().tolist()
            raise InputError(f"specified must be a subset of labels; not so for samples {bad[:10]}")
        if bool((spec.sum(dim=1) == 0).any()):
            bad = torch.nonzero(spec.sum(dim=1) == 0).flatten().tolist()
            raise InputError(f"specified must be non-empty for every sample; empty for {bad[:10]}")
        if self.needs_remaining and bool(((lab & ~spec).sum(dim=1) == 0).any()):
            bad = torch.nonzero((lab & ~spec).sum(dim=1) == 0).flatten().tolist()
            raise InputError(
                f"{type(self).__name__} needs at least one relevant label outside specified "
                f"to take their place; samples {bad[:10]} have none"
            )

    def _required(
        self, clean_scores: torch.Tensor, specified: torch.Tensor, threshold: int | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample ``(ΔN needed, |S ∩ T_k(x)|)``, both ``(B,)`` long."""
        in_top = (topk_mask(clean_scores, self.k) & specified).sum(dim=1)
        if threshold is None:
            required = in_top
        else:
            _check_int("threshold", threshold, 1)
            required = torch.full_like(in_top, threshold)
        short = required > in_top
        if bool((in_top == 0).any()) or bool(short.any()):
            bad = torch.nonzero(short | (in_top == 0)).flatten().tolist()
            raise InputError(
                f"samples {bad[:10]} have fewer specified labels in their clean top-{self.k} "
                "than the success rule needs to remove (ΔN can be at most |S ∩ T_k(x)|); "
                "select specified labels from the clean top-k or lower the threshold"
            )
        return required, in_top

    def __call__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        specified: torch.Tensor,
        threshold: int | None = None,
        batch_size: int | None = None,
        sync_every: int | None = None,
    ) -> AttackResult:
        """Attack every sample of ``images``; see the class docstring for the arguments.

        ``batch_size`` (optional) bounds the working set: at most ``batch_size`` samples
        are optimised at once, and as soon as one finishes its slot is refilled from the
        queue of samples not yet started (continuous batching), so that the batch stays
        full until the queue runs dry. The clean images are scored in chunks of
        ``batch_size`` too. The result is the one of a call with the whole batch (samples
        are independent; only last-bit rounding of batch-size-dependent kernels differs).
        To attack more images than fit in memory at once, or to write results as they
        come, use :meth:`stream`.

        ``sync_every`` (optional) is how often, in iterations, the host looks at which
        samples finished (to drop or replace them). Success, give-up and ``max_iter`` are
        evaluated on the device at every iteration; a sample that finishes between two
        checks keeps its first successful iterate (masked updates, its ``w`` is frozen)
        and only occupies its slot until the next check. Default: 1 on the CPU (a check
        costs nothing there, and nothing is ever computed for a finished sample), 4 on
        accelerators (no host–device synchronisation in the other iterations; on CUDA the
        check itself is overlapped with the update step). Results never depend on it.
        """
        if batch_size is not None:
            _check_int("batch_size", batch_size, 1)
        cap = batch_size
        if cap is None:
            cap = images.shape[0] if isinstance(images, torch.Tensor) and images.dim() else 1
        (result,) = self.stream([(images, labels, specified)], threshold, max(cap, 1), sync_every)
        return result

    def stream(
        self,
        chunks: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
        threshold: int | None = None,
        batch_size: int = 64,
        sync_every: int | None = None,
    ) -> Iterator[AttackResult]:
        """Attack a stream of chunks with one working set: continuous batching across them.

        ``chunks`` yields ``(images, labels, specified)`` triples, each as for a call
        (same device, dtype, image size and number of labels throughout). They are read
        lazily: the next chunk is read (validated, its clean images scored) only when a
        slot of the working set falls free and the chunks read so far have no sample left
        to start; a chunk is held only while some of its samples wait or run (with
        chunks of a few batches, two or three at a time). The attack yields each
        chunk's :class:`AttackResult`, in order, as soon as its last sample finishes;
        meanwhile the next chunk's samples already fill the slots its stragglers free, so
        the working set stays full until the whole stream runs dry, where one call per
        chunk would drain it at the end of every chunk. The results are those of one call
        per chunk (samples are independent). Bad input in a chunk raises
        :class:`~tkmia.errors.InputError` when that chunk is read, after the results of
        the chunks before it were yielded.

        The samples of a chunk start in order of expected need, the longest first (see
        :meth:`_expected_need`). If ``chunks`` has a length (a list, or any object with
        ``len()``), the last two chunks start as one: the last chunk is read together with
        the one before it, and their samples start in one order of expected need. The
        last chunk's long runs then start with the previous chunk's instead of after them,
        where nothing is left to fill the working set beside them (the tail of the stream,
        in ever smaller batches); most of all when the last chunk is short. An error in
        reading the last chunk that early is held back and raised when that chunk would
        have been read. Results never depend on the order.
        """
        _check_int("batch_size", batch_size, 1)
        if sync_every is not None:
            _check_int("sync_every", sync_every, 1)
        total = len(chunks) if isinstance(chunks, Sized) else None
        queue = _Queue(self, iter(chunks), threshold, batch_size, total)
        return self._run(queue, batch_size, sync_every)

    @torch.no_grad()
    def _read(
        self,
        item: object,
        threshold: int | None,
        cap: int,
        start: int,
        first: _Chunk | None,
    ) -> _Chunk:
        """Validate and score one chunk of the stream; its samples are ``start, start + 1, …``."""
        if not isinstance(item, (tuple, list)) or len(item) != 3:
            raise InputError("every chunk must be a triple (images, labels, specified)")
        images, labels, specified = item
        self._validate(images, labels, specified)
        if first is not None:
            x_first = first.x0
            same = (images.device, images.dtype, tuple(images.shape[1:]), labels.shape[1]) == (
                x_first.device,
                x_first.dtype,
                tuple(x_first.shape[1:]),
                first.labels.shape[1],
            )
            if not same:
                raise InputError(
                    "every chunk of a stream must have the first chunk's device, dtype, image "
                    f"shape and number of labels ({x_first.device}, {x_first.dtype}, "
                    f"{tuple(x_first.shape[1:])}, c = {first.labels.shape[1]}); got "
                    f"{images.device}, {images.dtype}, {tuple(images.shape[1:])}, "
                    f"c = {labels.shape[1]}"
                )
        device, b = images.device, images.shape[0]
        labels = labels.to(device).bool()
        specified = specified.to(device).bool()
        x0 = images.detach().contiguous(memory_format=self.memory_format)
        clean_scores = self._clean_scores(x0, labels.shape, cap)
        required, in_top = self._required(clean_scores, specified, threshold)
        result = AttackResult(
            adv_images=images.detach().clone(),
            success=torch.zeros(b, dtype=torch.bool, device=device),
            iterations=torch.zeros(b, dtype=torch.long, device=device),
            clean_scores=clean_scores,
            adv_scores=clean_scores.clone(),
            specified=specified,
            required=required,
        )
        need = self._expected_need(clean_scores, labels, specified).cpu()
        return _Chunk(result, x0, labels, in_top - required, start, need)

    @torch.no_grad()
    def _clean_scores(self, x0: torch.Tensor, shape: torch.Size, chunk: int) -> torch.Tensor:
        parts = [self.model(x0[i : i + chunk]) for i in range(0, x0.shape[0], max(chunk, 1))]
        scores = torch.cat(parts) if len(parts) > 1 else (parts[0] if parts else self.model(x0))
        if scores.dim() != 2 or scores.shape != shape:
            raise InputError(
                f"the model must return scores of shape (B, c) = {tuple(shape)}, "
                f"got {tuple(scores.shape)}"
            )
        return scores.detach()

    def _admit(self, chunk: _Chunk, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """The per-sample state ``ctx`` of the rows ``rows`` (long, on the chunk's device)
        of ``chunk`` at iterate 0: new tensors, never views of the chunk's."""
        x0 = chunk.x0[rows]
        ctx = {
            "x0": x0,
            "z0": torch.atanh(2 * x0.clamp(EPS, 1 - EPS) - 1),
            "v": torch.zeros_like(x0),
            "labels": chunk.labels[rows],
            "specified": chunk.result.specified[rows],
            "max_left": chunk.max_left[rows],
        }
        self._prepare(chunk.result.clean_scores[rows], ctx)
        return ctx

    def _expected_need(
        self, clean_scores: torch.Tensor, labels: torch.Tensor, specified: torch.Tensor
    ) -> torch.Tensor:
        """How long each of a chunk's samples is expected to run, ``(B,)`` float, larger
        for longer: samples start in decreasing order of it (ties in stream order), so
        that long runs start early instead of running on alone, in small batches, once
        the stream runs dry. Results never depend on it. ``labels`` and ``specified`` are
        bool ``(B, c)``.

        Here the clean margin ``max_{j∈S} f_j − f_[k+1]``: by how much the best specified
        label has to fall to leave the top-k (``f_[k+1]``: the (k+1)-th largest score).
        An attack overrides it where something else predicts its runs better.
        """
        kth = clean_scores.topk(self.k + 1, dim=1).values[:, -1:]
        return (_masked_max(clean_scores, specified) - kth).squeeze(1)

    def _flags_reader(self, flags: torch.Tensor) -> Callable[[], torch.Tensor] | None:
        """Start copying the ``(n,)`` bool ``flags`` to the host; returns the wait for them.

        On CUDA the copy is queued before the update step and waited for after it, so the
        device stays busy with the update while the host waits. ``None`` (other devices):
        the engine reads the flags right away, before the update, and skips the update
        when every slot is finished.
        """
        if flags.device.type != "cuda":
            return None
        host = torch.empty(flags.shape, dtype=torch.bool, pin_memory=True)
        host.copy_(flags, non_blocking=True)
        event = torch.cuda.Event()
        event.record()

        def wait() -> torch.Tensor:
            event.synchronize()
            return host

        return wait

    @torch.no_grad()
    def _run(self, queue: _Queue, cap: int, sync_every: int | None) -> Iterator[AttackResult]:
        """The optimisation loop over a working set of at most ``cap`` slots (SPEC §4.1).

        Every slot holds one sample; its rows of ``ctx`` are its state, ``ids`` its number
        in the stream (on the host) and ``it`` its iteration count. Each iteration
        evaluates the current iterate of every slot, flags (on the device) the slots that
        succeed, give up or reach ``max_iter``, and takes an update step. Every
        ``sync_every`` iterations the host reads the flags, writes the finished samples'
        results, refills their slots in place from the queue (chunk by chunk, each in its
        admission order), yields the chunks that are complete and, once the stream is dry,
        compacts the working set.
        Between two checks a finished slot keeps its first final iterate in ``kept``
        (masked writes) and its ``v`` is frozen.
        """
        k = self.k
        gives_up = type(self)._finished is not Attack._finished
        n0 = min(cap, queue.fill(cap))
        if not n0:
            yield from queue.ready()
            return
        first = queue.pending[0]
        device = first.x0.device
        if sync_every is None:
            sync_every = 1 if device.type == "cpu" else DEFAULT_SYNC_EVERY
        ctx, ids = queue.take(n0)
        it = torch.zeros(n0, dtype=torch.long, device=device)
        it_host = torch.zeros(n0, dtype=torch.long)
        lazy = sync_every > 1
        if lazy:
            done_before = torch.zeros(n0, dtype=torch.bool, device=device)
            c, dtype = first.result.clean_scores.shape[1], first.result.clean_scores.dtype
            kept = {
                "x": torch.empty_like(ctx["x0"]),
                "scores": torch.empty((n0, c), dtype=dtype, device=device),
                "ok": torch.zeros(n0, dtype=torch.bool, device=device),
                "it": torch.zeros(n0, dtype=torch.long, device=device),
            }
        since_check = 0
        while ids.numel():
            v = ctx["v"] = ctx["v"].detach().requires_grad_(True)
            with torch.enable_grad():
                x_adv = _Pixels.apply(ctx["z0"], v)
                scores = self.model(x_adv)
            x_det, s_det = x_adv.detach(), scores.detach()
            left = ctx["specified"].gather(1, topk_indices(s_det, k)).sum(dim=1)
            ok = left <= ctx["max_left"]
            fin = ok | (it >= self.max_iter)
            if gives_up:
                fin = fin | self._finished(s_det, ctx)
            since_check += 1
            check = since_check >= sync_every or bool((it_host >= self.max_iter).any())
            if lazy:
                newly = fin & ~done_before
                fin = fin | done_before
            if not check:
                # masked bookkeeping, no host-device synchronisation
                for name, now in (("x", x_det), ("scores", s_det), ("ok", ok), ("it", it)):
                    mask = newly.view((-1,) + (1,) * (now.dim() - 1))
                    kept[name] = torch.where(mask, now, kept[name])
                done_before = fin
                v_old = v.detach().clone()  # _update may step ctx["v"] in place
                with torch.enable_grad():
                    v_new = self._update(x_adv, scores, ctx).detach()
                frozen = fin.view((-1,) + (1,) * (v.dim() - 1))
                ctx["v"] = torch.where(frozen, v_old, v_new)
                it += 1
                it_host += 1
                continue
            since_check = 0
            wait = self._flags_reader(fin)
            if wait is not None:
                with torch.enable_grad():
                    ctx["v"] = self._update(x_adv, scores, ctx).detach()
                done = wait()
            else:
                done = fin.cpu()
                if bool(done.all()):
                    ctx["v"] = v.detach()  # every slot is finished: no step needed
                else:
                    with torch.enable_grad():
                        ctx["v"] = self._update(x_adv, scores, ctx).detach()
            rows = torch.nonzero(done).flatten()
            it += 1
            it_host += 1
            if not rows.numel():
                continue
            # write the finished samples' results
            rows_d = _upload(rows, device)
            final = {
                "x": x_det[rows_d],
                "scores": s_det[rows_d],
                "ok": ok[rows_d],
                "it": it[rows_d] - 1,
            }
            if lazy:
                earlier = ~newly[rows_d]
                for name, now in final.items():
                    mask = earlier.view((-1,) + (1,) * (now.dim() - 1))
                    final[name] = torch.where(mask, kept[name][rows_d], now)
            queue.finish(ids[rows], final)
            # refill their slots in place from the queue ...
            n_new = min(rows.numel(), queue.fill(rows.numel()))
            if n_new:
                fill, fill_d = rows[:n_new], rows_d[:n_new]
                new, new_ids = queue.take(n_new)
                if new.keys() != ctx.keys():
                    raise RuntimeError(
                        f"{type(self).__name__} keeps per-sample state {sorted(ctx)} but "
                        f"_prepare creates {sorted(new)}; create every entry in _prepare"
                    )
                for name, t in ctx.items():
                    t.index_copy_(0, fill_d, new[name].to(t.dtype))
                ids[fill] = new_ids
                it.index_fill_(0, fill_d, 0)
                it_host.index_fill_(0, fill, 0)
            # ... and drop the slots the queue could not refill
            if n_new < rows.numel():
                keep_mask = ~done
                keep_mask[rows[:n_new]] = True
                keep = torch.nonzero(keep_mask).flatten()
                keep_d = _upload(keep, device)
                # (indexing keeps the memory layout; index_select would not)
                ctx = {name: t[keep_d] for name, t in ctx.items()}
                ids, it, it_host = ids[keep], it[keep_d], it_host[keep]
                if lazy:
                    kept = {name: t[keep_d] for name, t in kept.items()}
            if lazy:
                done_before = torch.zeros(ids.shape, dtype=torch.bool, device=device)
            yield from queue.ready()
        yield from queue.ready()


@dataclass
class _Chunk:
    """One chunk of a stream: its result (filled in as its samples finish) and inputs."""

    result: AttackResult
    x0: torch.Tensor
    labels: torch.Tensor
    max_left: torch.Tensor
    start: int  # the stream number of its first sample
    need: torch.Tensor  # (host, float) expected need of its rows (Attack._expected_need)
    size: int = field(init=False)
    left: int = field(init=False)  # samples not finished yet

    def __post_init__(self) -> None:
        self.size = self.left = self.x0.shape[0]


class _Group:
    """Chunks whose samples start as one, in decreasing expected need (ties in stream
    order): one chunk, or the last two of a stream."""

    def __init__(self, chunks: list[_Chunk]) -> None:
        self.chunks = chunks
        need = torch.cat([ch.need for ch in chunks])
        order = need.argsort(descending=True, stable=True)
        which = torch.cat([torch.full((ch.size,), i) for i, ch in enumerate(chunks)])
        offsets = torch.tensor([ch.start - chunks[0].start for ch in chunks])
        self.which = which[order]  # (host, long) the chunk of each sample, in start order
        self.rows = order - offsets[self.which]  # (host, long) its row in that chunk
        self.size = len(order)
        self.started = 0


class _Queue:
    """The samples of a stream of chunks, numbered 0, 1, 2, … across chunks in order:
    read lazily, started group by group (a chunk, or the last two chunks of a stream of
    ``total`` chunks; within a group, expected longest first), finished in any order,
    handed back chunk by chunk."""

    def __init__(
        self,
        attack: Attack,
        chunks: Iterator,
        threshold: int | None,
        cap: int,
        total: int | None = None,
    ) -> None:
        self.attack, self.chunks, self.threshold, self.cap = attack, chunks, threshold, cap
        self.total = total  # the number of chunks, if known
        self.pending: deque[_Chunk] = deque()
        self.groups: deque[_Group] = deque()  # groups with samples not started yet
        self.read = 0  # samples read so far
        self.admitted = 0  # samples started so far
        self.n_chunks = 0  # chunks taken from the iterator so far
        self.late_error: BaseException | None = None  # see fill
        self.dry = False

    def _next_item(self) -> object:
        """The next item of the iterator, ``None`` at its end."""
        if self.late_error is not None:
            raise self.late_error
        item = next(self.chunks, None)
        if item is not None:
            self.n_chunks += 1
        return item

    def _read(self, item: object) -> _Chunk:
        first = self.pending[0] if self.pending else None
        chunk = self.attack._read(item, self.threshold, self.cap, self.read, first)
        self.pending.append(chunk)
        self.read += chunk.size
        return chunk

    def fill(self, n: int) -> int:
        """Read chunks until ``n`` samples wait to start or the stream ends; how many wait.
        Where the chunk read is the last but one of the stream, the last is read with it."""
        while not self.dry and self.read - self.admitted < n:
            item = self._next_item()
            if item is None:
                self.dry = True
                break
            group = [self._read(item)]
            if self.total is not None and self.n_chunks == self.total - 1:
                try:  # the last chunk, early; an error is raised when that chunk is due
                    last = self._next_item()
                    if last is not None:
                        group.append(self._read(last))
                except Exception as error:
                    self.late_error = error
            group = [ch for ch in group if ch.size]
            if group:
                self.groups.append(_Group(group))
        return self.read - self.admitted

    def take(self, n: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The next ``n`` samples to start: their state (new tensors, never views) and
        their stream numbers ``(n,)`` (host, long). Groups start in stream order, the
        samples of a group in decreasing expected need."""
        parts, ids = [], []
        while n > 0 and self.groups:
            group = self.groups[0]
            lo, hi = group.started, min(group.started + n, group.size)
            which, rows = group.which[lo:hi], group.rows[lo:hi]
            for i, ch in enumerate(group.chunks):
                mine = rows[which == i]
                if mine.numel():
                    parts.append(self.attack._admit(ch, _upload(mine, ch.x0.device)))
                    ids.append(mine + ch.start)
            group.started = hi
            n -= hi - lo
            self.admitted += hi - lo
            if group.started == group.size:
                self.groups.popleft()
        if len(parts) == 1:
            return parts[0], ids[0]
        return {name: torch.cat([p[name] for p in parts]) for name in parts[0]}, torch.cat(ids)

    def finish(self, ids: torch.Tensor, final: dict[str, torch.Tensor]) -> None:
        """Write the final state of the samples ``ids`` (host, long) into their chunks."""
        numbers = ids.tolist()
        for ch in self.pending:
            picks = [i for i, n in enumerate(numbers) if ch.start <= n < ch.start + ch.size]
            if not picks:
                continue
            device = ch.result.success.device
            mine = final
            if len(picks) < len(numbers):
                pick = _upload(torch.tensor(picks), device)
                mine = {name: t[pick] for name, t in final.items()}
            rows = _upload(torch.tensor([numbers[i] - ch.start for i in picks]), device)
            ch.result.adv_images[rows] = mine["x"].to(ch.result.adv_images.dtype)
            ch.result.adv_scores[rows] = mine["scores"]
            ch.result.success[rows] = mine["ok"]
            ch.result.iterations[rows] = mine["it"]
            ch.left -= len(picks)

    def ready(self) -> Iterator[AttackResult]:
        """Hand back, in order, the chunks at the head whose samples have all finished."""
        while self.pending and self.pending[0].left == 0:
            yield self.pending.popleft().result


class LossAttack(Attack):
    """An attack that minimises a per-sample objective with SGD in tanh space.

    ``w`` (the engine's ``v``) starts at 0; every step adds the perturbation penalty —
    ``penalty="w"``: ``(λ/2)‖w‖²`` (weight decay λ on w, as the reference code);
    ``penalty="pixel"``: ``(λ/2)‖x' − x‖²`` — and takes an SGD step with momentum 0.9
    (PyTorch's SGD semantics, no dampening) and learning rate ``lr``.
    """

    momentum = 0.9

    def __init__(
        self,
        model: nn.Module,
        k: int,
        lr: float,
        lam: float,
        max_iter: int,
        penalty: str = "w",
        normalize: tuple[Sequence[float], Sequence[float]] | None = None,
    ) -> None:
        super().__init__(model, k, max_iter, normalize)
        self.lr = _check_positive("lr", lr)
        self.lam = _check_positive("lam", lam, allow_zero=True)
        if penalty not in ("w", "pixel"):
            raise InputError(f"penalty must be 'w' or 'pixel', got {penalty!r}")
        self.penalty = penalty

    def objective(self, scores: torch.Tensor, ctx: dict[str, torch.Tensor]) -> torch.Tensor:
        """The per-sample loss ``(n,)`` to minimise, from scores ``(n, c)``."""
        raise NotImplementedError

    def objective_grad(
        self, scores: torch.Tensor, ctx: dict[str, torch.Tensor]
    ) -> torch.Tensor | None:
        """The gradient ``(n, c)`` of ``objective(scores, ctx).sum()`` w.r.t. the (detached)
        ``scores``, in closed form; ``None`` (the default): autograd differentiates
        :meth:`objective`. The built-in attacks give it (``tkmia.losses.*_grad``)."""
        return None

    def _prepare(self, clean_scores: torch.Tensor, ctx: dict[str, torch.Tensor]) -> None:
        ctx["momentum_buffer"] = torch.zeros_like(ctx["x0"])

    def _expected_need(
        self, clean_scores: torch.Tensor, labels: torch.Tensor, specified: torch.Tensor
    ) -> torch.Tensor:
        """The objective at the clean scores: how far the attack has to go (the margin of
        :class:`Attack` looks at the specified labels alone). Evaluated when a chunk is
        read, with only ``labels`` and ``specified`` in ``ctx``; an objective that needs
        more overrides this. On the built-in benchmark (README, "Performance") four
        TkMIA streams took 636, 632, 590 and 1152 attack iterations with it, 786, 715, 589
        and 1197 with the margin; for TkML-AP-U and ML-CW-U it did about as well as the
        margin without the last two chunks as one, and better than with them."""
        ctx = {"labels": labels, "specified": specified}
        try:
            return self.objective(clean_scores, ctx)
        except KeyError as missing:
            raise RuntimeError(
                f"{type(self).__name__}.objective needs ctx[{missing}], which is not there "
                "when the samples are ordered; override _expected_need"
            ) from None

    def _update(self, x_adv, scores, ctx):
        w = ctx["v"]
        d_scores = self.objective_grad(scores.detach(), ctx)
        if d_scores is None:
            outputs, grads = [self.objective(scores, ctx).sum()], [None]
        else:
            outputs, grads = [scores], [d_scores]
        if self.penalty == "pixel" and self.lam > 0:
            outputs.append(0.5 * self.lam * (x_adv - ctx["x0"]).pow(2).sum())
            grads.append(None)
        (grad,) = torch.autograd.grad(outputs, w, grads)
        return self._constrain(self._sgd_step(w.detach(), grad, ctx["momentum_buffer"]), ctx)

    def _sgd_step(self, w: torch.Tensor, grad: torch.Tensor, buf: torch.Tensor) -> torch.Tensor:
        """torch.optim.SGD's step, in place on ``w`` and ``buf``: ``d = g + λw`` (penalty
        ``"w"``), ``buf = 0.9·buf + d``, ``w = w − lr·buf``; in one fused pass where PyTorch
        has one (bit-identical to the three separate passes).

        The fused kernel walks the three tensors' memory in lockstep, so it is given flat
        views of them when all three are dense in the same layout (standard or
        channels-last; it would make standard-layout copies of channels-last tensors,
        which cost more than they save); otherwise the separate passes, which work in any
        layout, are used."""
        lam = self.lam if self.penalty == "w" else 0.0
        if (
            _FUSED_SGD is not None
            and w.dtype in _FUSED_DTYPES
            and grad.dtype == w.dtype
            and w.stride() == grad.stride() == buf.stride()
            and _flat_view(w) is not None  # then so are grad and buf: same shape and strides
        ):
            _FUSED_SGD(
                [_flat_view(w)], [_flat_view(grad)], [_flat_view(buf)], weight_decay=lam,
                momentum=self.momentum, lr=self.lr, dampening=0.0, nesterov=False,
                maximize=False, is_first_step=False,
            )  # fmt: skip
            return w
        if lam > 0:
            grad = grad.add(w, alpha=lam)
        buf.mul_(self.momentum).add_(grad)
        return w.add_(buf, alpha=-self.lr)

    def _constrain(self, w: torch.Tensor, ctx: dict[str, torch.Tensor]) -> torch.Tensor:
        """Hook for a projection after the step (ML-CW-U's L2 budget); identity here."""
        return w
