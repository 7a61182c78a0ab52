"""The optimisation loop over a working set of samples (SPEC §4.1).

Every slot of the working set holds one sample. Each iteration evaluates the current iterate
of every slot, flags (on the device) the slots that succeed, give up or reach ``max_iter``,
and takes an update step. Every ``sync_every`` iterations the host reads the flags, writes
the finished samples' results, refills their slots in place from the queue, hands back the
chunks that are complete and, once the stream is dry, compacts the working set. Between two
checks a finished slot keeps its first final iterate aside (masked writes, no host–device
synchronisation); its later steps are computed but never used.

The loop knows nothing of the objective: it is given the iteration's three parts as
callables (:class:`Iteration`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from tkmia.attacks.layout import flags_reader, upload
from tkmia.attacks.queue import ChunkQueue, Finals
from tkmia.attacks.result import AttackResult
from tkmia.attacks.state import SampleState

__all__ = ["DEFAULT_SYNC_EVERY", "Iteration", "run"]

#: default ``sync_every`` off the CPU: the host reads the finished flags every 4 iterations.
DEFAULT_SYNC_EVERY = 4


@dataclass(frozen=True)
class Iteration:
    """What one iteration does, for the ``n`` samples of the working set.

    Attributes:
        evaluate: ``state -> (x_adv, scores)``, the iterate ``(n, C, H, W)`` and its scores
            ``(n, c)``, attached to the graph of ``state.v``.
        judge: ``(scores (n, c) detached, state, it (n,)) -> (ok, finished)``, both ``(n,)``
            bool: success, and success or giving up or ``max_iter`` reached.
        step: ``(x_adv, scores, state) -> v``, the next ``v`` ``(n, C, H, W)`` (may be
            computed in place in ``state.v``, and may update the attack's own fields).
        max_iter: at most this many steps per sample.
        judged: ``(x_adv, scores) -> (x, scores)``, both detached: the image that is judged
            and returned instead of the iterate, and its scores (a quantised iterate,
            SPEC §7.2); ``None``: the iterate itself.
    """

    evaluate: Callable[[SampleState], tuple[torch.Tensor, torch.Tensor]]
    judge: Callable[[torch.Tensor, SampleState, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    step: Callable[[torch.Tensor, torch.Tensor, SampleState], torch.Tensor]
    max_iter: int
    judged: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None


class _WorkingSet:
    """The samples being optimised: their state, stream numbers (host) and step counts
    (device, and a host copy), and with deferred checks the iterates kept aside."""

    def __init__(self, state: SampleState, ids: torch.Tensor, lazy: bool) -> None:
        device = state.x0.device
        self.state, self.ids = state, ids
        self.it = torch.zeros(ids.numel(), dtype=torch.long, device=device)
        self.it_host = torch.zeros(ids.numel(), dtype=torch.long)
        self.kept: Finals | None = None
        self.done_before: torch.Tensor | None = None
        if lazy:
            self.done_before = torch.zeros(ids.numel(), dtype=torch.bool, device=device)

    def remember(self, now: Finals, newly: torch.Tensor) -> None:
        """Keep ``now``'s iterate of the slots that ``newly`` finished."""
        self.kept = now if self.kept is None else self.kept.where(newly, now)

    def advance(self) -> None:
        self.it += 1
        self.it_host += 1

    def refill(self, rows: torch.Tensor, rows_d: torch.Tensor, queue: ChunkQueue) -> None:
        """Start the next queued samples in the slots ``rows`` (host; ``rows_d`` on the
        device), in place."""
        new, new_ids = queue.take(rows.numel())
        self.state.put_rows_(rows_d, new)
        self.ids[rows] = new_ids
        self.it.index_fill_(0, rows_d, 0)
        self.it_host.index_fill_(0, rows, 0)

    def keep_only(self, keep: torch.Tensor) -> None:
        """Drop every slot but ``keep`` (host, long)."""
        keep_d = upload(keep, self.it.device)
        self.state = self.state.rows(keep_d)
        self.ids, self.it, self.it_host = self.ids[keep], self.it[keep_d], self.it_host[keep]
        if self.kept is not None:
            self.kept = self.kept.rows(keep_d)

    def checked(self) -> None:
        """After a check no slot is finished any more."""
        if self.done_before is not None:
            self.done_before = torch.zeros_like(self.it, dtype=torch.bool)


def _final(
    ws: _WorkingSet, now: Finals, newly: torch.Tensor | None, rows_d: torch.Tensor
) -> Finals:
    """The result of the finished slots ``rows_d``: this iterate, or, for slots that finished
    before this check, the iterate kept aside then."""
    final = Finals(now.x[rows_d], now.scores[rows_d], now.ok[rows_d], now.it[rows_d] - 1)
    if newly is None or ws.kept is None:
        return final
    return final.where(~newly[rows_d], ws.kept.rows(rows_d))


@torch.no_grad()
def run(
    queue: ChunkQueue, cap: int, sync_every: int | None, iteration: Iteration
) -> Iterator[AttackResult]:
    """Attack the queue's samples in a working set of at most ``cap`` slots; yield each
    chunk's result, in stream order, as soon as its last sample finishes.

    ``sync_every``: how often (in iterations) the host reads which samples finished;
    ``None``: every iteration on the CPU (a check costs nothing there, and nothing is ever
    computed for a finished sample), every :data:`DEFAULT_SYNC_EVERY` elsewhere.
    """
    n0 = min(cap, queue.fill(cap))
    if not n0:
        yield from queue.ready()
        return
    state, ids = queue.take(n0)
    if sync_every is None:
        sync_every = 1 if state.x0.device.type == "cpu" else DEFAULT_SYNC_EVERY
    ws = _WorkingSet(state, ids, lazy=sync_every > 1)
    since_check = 0
    while ws.ids.numel():
        state = ws.state
        state.v = state.v.detach().requires_grad_(True)
        with torch.enable_grad():
            x_adv, scores = iteration.evaluate(state)
        x_det, s_det = x_adv.detach(), scores.detach()
        if iteration.judged is not None:
            x_det, s_det = iteration.judged(x_det, s_det)
        ok, fin = iteration.judge(s_det, state, ws.it)
        now = Finals(x_det, s_det, ok, ws.it)
        since_check += 1
        check = since_check >= sync_every or bool((ws.it_host >= iteration.max_iter).any())
        newly = None
        if ws.done_before is not None:
            newly = fin & ~ws.done_before
            fin = fin | ws.done_before
        if not check:
            assert newly is not None  # deferred checks keep done_before
            ws.remember(Finals(now.x, now.scores, now.ok, now.it.clone()), newly)
            ws.done_before = fin
            with torch.enable_grad():
                state.v = iteration.step(x_adv, scores, state).detach()
            ws.advance()
            continue
        since_check = 0
        done = _step_and_read(iteration, x_adv, scores, state, fin)
        ws.advance()
        rows = torch.nonzero(done).flatten()
        if not rows.numel():
            continue
        rows_d = upload(rows, ws.it.device)
        queue.finish(ws.ids[rows], _final(ws, now, newly, rows_d))
        n_new = min(rows.numel(), queue.fill(rows.numel()))
        if n_new:
            ws.refill(rows[:n_new], rows_d[:n_new], queue)
        if n_new < rows.numel():  # drop the slots the queue could not refill
            keep_mask = ~done
            keep_mask[rows[:n_new]] = True
            ws.keep_only(torch.nonzero(keep_mask).flatten())
        ws.checked()
        yield from queue.ready()
    yield from queue.ready()


def _step_and_read(
    iteration: Iteration,
    x_adv: torch.Tensor,
    scores: torch.Tensor,
    state: SampleState,
    fin: torch.Tensor,
) -> torch.Tensor:
    """Take the step and read the finished flags ``fin`` on the host ``(n,)``: on CUDA the
    flags' copy overlaps the step; elsewhere they are read first and the step is skipped
    when every slot is finished."""
    wait = flags_reader(fin)
    if wait is not None:
        with torch.enable_grad():
            state.v = iteration.step(x_adv, scores, state).detach()
        return wait()
    done = fin.cpu()
    if bool(done.all()):
        state.v = state.v.detach()  # every slot is finished: no step needed
    else:
        with torch.enable_grad():
            state.v = iteration.step(x_adv, scores, state).detach()
    return done
