"""The base class every attack shares: validation, normalisation, streaming, bookkeeping.

An attack subclass supplies its update rule (:meth:`Attack.step`) and, if it keeps state of
its own, :meth:`Attack.init_state`; loss-based attacks only their objective
(:class:`~tkmia.attacks.loss.LossAttack`). The loop itself is :func:`tkmia.attacks.loop.run`,
the scheduling of a stream of chunks :class:`tkmia.attacks.queue.ChunkQueue`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Sequence, Sized
from contextlib import contextmanager

import torch
from torch import nn

from tkmia.attacks import loop
from tkmia.attacks.checks import check_int
from tkmia.attacks.inputs import (
    check_batch,
    check_like_first,
    check_targets_batch,
    required_removals,
    required_targets,
)
from tkmia.attacks.layout import model_memory_format
from tkmia.attacks.pixels import PixelMap, quantize, to_tanh_space
from tkmia.attacks.queue import Chunk, ChunkQueue
from tkmia.attacks.result import AttackResult
from tkmia.attacks.state import SampleState
from tkmia.attacks.stealth import STEALTH_RHO, check_reference, rule_parts, within_band
from tkmia.errors import LOW_SUCCESS, InputError, LowSuccessWarning, low_success_advice
from tkmia.losses import masked_max
from tkmia.metrics import topk_indices
from tkmia.normalize import Normalized
from tkmia.outputs import as_logits
from tkmia.score_stats import label_free_stats

__all__ = ["SUCCESS_RULES", "Attack", "Normalize"]

#: the success rules every attack takes: the paper's (SPEC §5), the measure-preserving one
#: (SPEC §7.1), the monitor-imperceptible one (SPEC §7.6) and both of the latter
SUCCESS_RULES = ("paper", "preserve", "stealth", "preserve+stealth")

#: per-channel ``(mean, std)`` of the model's input normalisation
Normalize = tuple[Sequence[float], Sequence[float]]


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode for the block and give every module back its own mode."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


class Attack:
    """Base class: a batched, per-sample early-exit attack on a top-k multi-label model.

    Args:
        model: maps images ``(B, C, H, W)`` to scores ``(B, c)``: a tensor, or a tuple, dict
            or object with ``.logits`` holding it (read by :func:`tkmia.outputs.logits_of`).
            It runs in eval mode during the attack; its own train/eval mode is given back
            afterwards.
        k: the top-k the attacked system reports, ``1 <= k < c``.
        max_iter: at most this many update steps per sample.
        normalize: optional ``(mean, std)`` per channel, applied inside the attack so that
            callers always pass (and get back) pixels in [0, 1].
        success: ``"paper"`` (SPEC §5) or ``"preserve"``: a sample succeeds only when its
            top-k also keeps at least as many relevant labels as the clean image's
            (``|T_k(x') ∩ Y| >= |T_k(x) ∩ Y|``, so TkAcc and P@k cannot drop; SPEC §7.1);
            the attack runs on until both hold (or ``max_iter``); ``"stealth"``: SPEC §5's
            rule and every label-free statistic of the audit within ``rho · IQR`` of the
            clean image's own (SPEC §7.6; give the IQR with :meth:`set_stealth_reference`
            before calling); ``"preserve+stealth"``: all three.
        quantize: ``None`` (or 0): off; ``b`` (1 to 16): success is judged on the iterate
            quantised to ``b`` bits per channel, ``q(x') = round((2^b − 1)x') / (2^b − 1)``,
            and the returned images and scores are ``q(x')`` of the first iterate whose
            quantised image succeeds (SPEC §7.2): they survive being saved with ``b`` bits.
            The step is still taken at ``x'``; each iteration scores ``q(x')`` once more.

    Raises:
        InputError: for a bad ``k``, ``max_iter``, ``normalize``, ``success`` or ``quantize``.

    Calling the attack, ``atk(images, labels, specified, threshold=None, batch_size=None,
    sync_every=None)``:
        images: ``(B, C, H, W)`` float in [0, 1].
        labels: ``(B, c)`` 0/1 ground truth (the relevant set Y).
        specified: ``(B, c)`` 0/1, a non-empty subset S of the relevant labels to hide.
        threshold: ``None`` for S1's rule (every specified label in the clean top-k must
            leave it, ``ΔN >= |S ∩ T_k(x)|``), or an int ``t`` (``ΔN >= t``).
        batch_size: ``None`` optimises all B samples together; an int keeps a working set of
            at most ``batch_size`` samples and refills the slot of every sample that finishes
            from the queue of those not yet started (continuous batching). The results are
            those of the whole-batch call.
        sync_every: how often (in iterations) the host looks at which samples finished;
            ``None``: 1 on the CPU, 4 elsewhere. Never changes the results.

    ``atk.stream(chunks, threshold=None, batch_size=64, sync_every=None)`` attacks an iterable
    of ``(images, labels, specified)`` chunks through one working set and yields each chunk's
    result as it completes (see :meth:`stream`).

    Subclass hooks (all public, shapes for the ``n`` samples of the working set):
    :meth:`step` (required), :meth:`init_state`, :meth:`gives_up`, :meth:`expected_need`.
    Samples are independent: a sample's result never depends on its batch mates, and a
    sample that succeeds leaves the batch.
    """

    #: whether every sample needs a relevant label outside S (TkMIA promotes one)
    needs_remaining: bool = False
    #: whether the attack is called with targets T (labels outside Y to bring into the
    #: top-k, SPEC §7.3) in place of the specified labels S to hide
    targeted: bool = False

    def __init__(
        self,
        model: nn.Module,
        k: int,
        max_iter: int,
        normalize: Normalize | None = None,
        success: str = "paper",
        quantize: int | None = None,
    ) -> None:
        self.k = check_int("k", k, 1)
        self.max_iter = check_int("max_iter", max_iter, 1)
        if success not in SUCCESS_RULES:
            raise InputError(f"success must be one of {SUCCESS_RULES}, got {success!r}")
        self.success = success
        self.preserve, self.stealth = rule_parts(success)
        #: ``success="stealth"``'s scale, ``(4,)`` float64, and tolerance ρ
        self.stealth_iqr: torch.Tensor | None = None
        self.rho = STEALTH_RHO
        if quantize is not None and quantize != 0:
            if check_int("quantize", quantize, 1) > 16:
                raise InputError(f"quantize must be a number of bits from 1 to 16, got {quantize}")
        self.quantize = quantize or None
        model = as_logits(model)
        if normalize is not None:
            if not isinstance(normalize, (tuple, list)) or len(normalize) != 2:
                raise InputError("normalize must be a pair (mean, std) of per-channel sequences")
            try:
                model = Normalized(model, *normalize)
            except InputError as err:  # "normalize std must be positive, ..."
                raise InputError(f"normalize {err}") from None
        self.model = model
        #: the layout of the attack's state (z0, v, ...): the model's own, so that neither
        #: the input nor its gradient is copied between layouts every iteration
        self.memory_format = model_memory_format(model)

    def set_stealth_reference(self, iqr: object, rho: float = STEALTH_RHO) -> Attack:
        """Give ``success="stealth"`` its scale: ``iqr`` (4 numbers), the interquartile range
        of each label-free statistic over the clean eligible images of the setting
        (:func:`tkmia.score_stats.label_free_iqr`), and the tolerance ``rho``; returns the
        attack.

        Raises:
            InputError: a bad ``iqr`` or ``rho``.
        """
        self.stealth_iqr, self.rho = check_reference(iqr, rho)
        return self

    # ----------------------------------------------------------------- hooks
    def init_state(self, base: SampleState, clean_scores: torch.Tensor) -> SampleState:
        """The starting state of ``n`` samples: ``base`` (the engine's fields), or a subclass
        of :class:`SampleState` built with ``StateClass.extend(base, field=tensor, ...)``
        for an attack that keeps state of its own; ``clean_scores`` ``(n, c)``. Must return
        the same class every time."""
        return base

    def gives_up(self, scores: torch.Tensor, state: SampleState) -> torch.Tensor | None:
        """``(n,)`` bool: samples to stop besides success and ``max_iter`` (evaluated on the
        current iterate's detached ``scores`` ``(n, c)``), or ``None`` for none ever."""
        return None

    def step(self, x_adv: torch.Tensor, scores: torch.Tensor, state: SampleState) -> torch.Tensor:
        """One update for the ``n`` samples; returns the new ``v`` ``(n, C, H, W)``.

        ``x_adv`` ``(n, C, H, W)`` are the pixels of ``state.z0 + state.v`` (``state.v`` is
        the graph's leaf) and ``scores = model(x_adv)`` ``(n, c)``, both still attached to
        the graph. The step may compute the new ``v`` in place in ``state.v`` (detached) and
        update the attack's own fields of ``state`` (in place or by assigning a new tensor of
        the same shape). Samples that finished since the engine's last check
        (``sync_every > 1``) are stepped too; the engine never uses what they become.
        """
        raise NotImplementedError

    def expected_need(
        self, clean_scores: torch.Tensor, labels: torch.Tensor, specified: torch.Tensor
    ) -> torch.Tensor:
        """How long each of a chunk's ``B`` samples is expected to run, ``(B,)`` float, larger
        for longer: samples start in decreasing order of it (ties in stream order), so that
        long runs start early instead of running on alone, in small batches, once the stream
        runs dry. Results never depend on it. ``labels`` and ``specified`` are bool ``(B, c)``.

        Here the clean margin ``max_{j∈S} f_j − f_[k+1]``: by how much the best specified
        label has to fall to leave the top-k.
        """
        kth = clean_scores.topk(self.k + 1, dim=1).values[:, -1:]
        return (masked_max(clean_scores, specified) - kth).squeeze(1)

    def rule(
        self,
        scores: torch.Tensor,
        labels: torch.Tensor,
        specified: torch.Tensor,
        bound: torch.Tensor,
        min_hits: torch.Tensor,
        clean_stats: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(n,)`` bool: whether scores ``(n, c)`` meet the attack's success rule.

        ``labels``, ``specified`` ``(n, c)`` bool; ``bound`` ``(n,)`` long: the labels of S
        that may stay in the top-k (SPEC §5), or for a :attr:`targeted` attack the targets
        that must be in it (SPEC §7.3); ``min_hits`` ``(n,)`` long: the relevant labels the
        top-k must keep under ``success="preserve"`` (SPEC §7.1, ignored otherwise);
        ``clean_stats`` ``(n, 4)``: the clean images' label-free statistics, which
        ``success="stealth"`` needs (SPEC §7.6, ignored otherwise).
        """
        top = topk_indices(scores, self.k)
        in_top = specified.gather(1, top).sum(dim=1)
        ok = in_top >= bound if self.targeted else in_top <= bound
        if self.preserve:
            ok = ok & (labels.gather(1, top).sum(dim=1) >= min_hits)
        if self.stealth:
            assert clean_stats is not None and self.stealth_iqr is not None
            ok = ok & within_band(scores, clean_stats, self.stealth_iqr, self.rho, self.k)
        return ok

    def bounds(
        self,
        clean_scores: torch.Tensor,
        labels: torch.Tensor,
        specified: torch.Tensor,
        required: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(bound, min_hits)`` of :meth:`rule`, both ``(n,)`` long, from the clean scores
        ``(n, c)``, the bool masks ``(n, c)`` and the ``required`` of an
        :class:`AttackResult` ``(n,)``."""
        top = topk_indices(clean_scores, self.k)
        if self.targeted:
            bound = required
        else:
            bound = specified.gather(1, top).sum(dim=1) - required
        if self.preserve:
            min_hits = labels.gather(1, top).sum(dim=1)
        else:
            min_hits = torch.zeros_like(bound)
        return bound, min_hits

    @torch.no_grad()
    def rescore(
        self, images: torch.Tensor, result: AttackResult, labels: torch.Tensor
    ) -> torch.Tensor:
        """``(B,)`` bool: whether ``images`` ``(B, C, H, W)`` (e.g. ``result.adv_images``
        saved as 8-bit PNGs and read back) meet the rule ``result`` was judged by, scored
        again by the attack's model; ``labels`` ``(B, c)`` 0/1."""
        with _eval_mode(self.model):
            scores = self.model(images).to(result.clean_scores.dtype)
        labels = labels.to(scores.device).bool()
        bound, min_hits = self.bounds(
            result.clean_scores, labels, result.specified, result.required
        )
        clean_stats = label_free_stats(result.clean_scores, self.k)
        return self.rule(scores, labels, result.specified, bound, min_hits, clean_stats)

    # ------------------------------------------------------------ calling
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

        The clean images are scored in chunks of ``batch_size`` too. To attack more images
        than fit in memory at once, or to write results as they come, use :meth:`stream`.

        A :class:`~tkmia.errors.LowSuccessWarning` says when fewer than half of the
        samples succeed, with the figure and what to try.

        Raises:
            InputError: for bad inputs, threshold, batch size or sync_every.
        """
        if batch_size is not None:
            check_int("batch_size", batch_size, 1)
        cap = batch_size
        if cap is None:
            cap = images.shape[0] if isinstance(images, torch.Tensor) and images.dim() else 1
        (result,) = self.stream([(images, labels, specified)], threshold, max(cap, 1), sync_every)
        images_n = result.success.numel()
        if images_n and float(result.success.float().mean()) < LOW_SUCCESS:
            rate = float(result.success.float().mean())
            advice = low_success_advice(type(self).__name__, rate, images_n)
            warnings.warn(advice, LowSuccessWarning, stacklevel=2)
        return result

    def stream(
        self,
        chunks: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
        threshold: int | None = None,
        batch_size: int = 64,
        sync_every: int | None = None,
    ) -> Iterator[AttackResult]:
        """Attack a stream of chunks with one working set: continuous batching across them.

        ``chunks`` yields ``(images, labels, specified)`` triples, each as for a call (same
        device, dtype, image size and number of labels throughout). They are read lazily:
        the next chunk is read (validated, its clean images scored) only when a slot of the
        working set falls free and the chunks read so far have no sample left to start. The
        attack yields each chunk's :class:`AttackResult`, in order, as soon as its last
        sample finishes; meanwhile the next chunk's samples already fill the slots its
        stragglers free, so the working set stays full until the whole stream runs dry. The
        results are those of one call per chunk (samples are independent). Bad input in a
        chunk raises :class:`~tkmia.errors.InputError` when that chunk is read, after the
        results of the chunks before it were yielded.

        The samples of a chunk start in order of :meth:`expected_need`, the longest first.
        If ``chunks`` has a length, the last two chunks start as one: the last chunk is read
        together with the one before it (an error in reading it that early is raised when
        that chunk would have been read). Results never depend on the order.
        """
        check_int("batch_size", batch_size, 1)
        if self.stealth and self.stealth_iqr is None:
            raise InputError(
                f"success={self.success!r} needs the clean IQR of each label-free statistic: "
                "call attack.set_stealth_reference(label_free_iqr(clean_scores, k)) first, "
                "with the clean scores of the setting's eligible images (tkmia.score_stats)"
            )
        if sync_every is not None:
            check_int("sync_every", sync_every, 1)
        total = len(chunks) if isinstance(chunks, Sized) else None

        def read(item: object, start: int, first: Chunk | None) -> Chunk:
            return self._read(item, threshold, batch_size, start, first)

        queue = ChunkQueue(iter(chunks), read, self._admit, total)
        return self._run(queue, batch_size, sync_every)

    def _run(self, queue: ChunkQueue, cap: int, sync_every: int | None) -> Iterator[AttackResult]:
        with _eval_mode(self.model):
            judged = self._quantized if self.quantize else None
            iteration = loop.Iteration(
                self._evaluate, self._judge, self.step, self.max_iter, judged
            )
            yield from loop.run(queue, cap, sync_every, iteration)

    # -------------------------------------------------- engine internals
    def _evaluate(self, state: SampleState) -> tuple[torch.Tensor, torch.Tensor]:
        x_adv = PixelMap.apply(state.z0, state.v)
        return x_adv, self.model(x_adv)

    def _quantized(
        self, x_adv: torch.Tensor, scores: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.quantize is not None
        x_q = quantize(x_adv, self.quantize)
        return x_q, self.model(x_q).to(scores.dtype)

    def _judge(
        self, scores: torch.Tensor, state: SampleState, it: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ok = self.rule(
            scores, state.labels, state.specified, state.max_left, state.min_hits,
            state.clean_stats,
        )  # fmt: skip
        finished = ok | (it >= self.max_iter)
        stop = self.gives_up(scores, state)
        return ok, finished if stop is None else finished | stop

    @torch.no_grad()
    def _read(
        self, item: object, threshold: int | None, cap: int, start: int, first: Chunk | None
    ) -> Chunk:
        """Validate and score one chunk of the stream; its samples are ``start, start+1, …``."""
        if not isinstance(item, (tuple, list)) or len(item) != 3:
            raise InputError("every chunk must be a triple (images, labels, specified)")
        images, labels, specified = item
        if self.targeted:
            check_targets_batch(images, labels, specified, self.k)
        else:
            name = type(self).__name__ if self.needs_remaining else None
            check_batch(images, labels, specified, self.k, name)
        if first is not None:
            check_like_first(images, labels, first.x0, first.labels.shape[1])
        device, b = images.device, images.shape[0]
        labels = labels.to(device).bool()
        specified = specified.to(device).bool()
        x0 = images.detach().contiguous(memory_format=self.memory_format)
        clean_scores = self._clean_scores(x0, labels.shape, cap)
        if self.targeted:
            required = required_targets(specified, threshold)
        else:
            required = required_removals(clean_scores, specified, self.k, threshold)[0]
        bound = self.bounds(clean_scores, labels, specified, required)[0]
        result = AttackResult(
            adv_images=images.detach().clone(),
            success=torch.zeros(b, dtype=torch.bool, device=device),
            iterations=torch.zeros(b, dtype=torch.long, device=device),
            clean_scores=clean_scores,
            adv_scores=clean_scores.clone(),
            specified=specified,
            required=required,
        )
        need = self.expected_need(clean_scores, labels, specified).cpu()
        return Chunk(result, x0, labels, bound, start, need)

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

    def _admit(self, chunk: Chunk, rows: torch.Tensor) -> SampleState:
        """The state of the rows ``rows`` (long, on the chunk's device) of ``chunk`` at
        iterate 0: new tensors, never views of the chunk's."""
        x0 = chunk.x0[rows]
        labels = chunk.labels[rows]
        clean_scores = chunk.result.clean_scores[rows]
        required = chunk.result.required[rows]
        specified = chunk.result.specified[rows]
        base = SampleState(
            x0=x0,
            z0=to_tanh_space(x0),
            v=torch.zeros_like(x0),
            labels=labels,
            specified=specified,
            max_left=chunk.max_left[rows],
            min_hits=self.bounds(clean_scores, labels, specified, required)[1],
            clean_stats=label_free_stats(clean_scores, self.k),
        )
        return self.init_state(base, clean_scores)
