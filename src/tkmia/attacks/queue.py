"""The scheduler of a stream of chunks: which samples start when, and whose results are due.

It knows nothing of attacks: it takes a ``read`` callable that turns an item of the stream
into a :class:`Chunk` and an ``admit`` callable that builds the starting state of some of a
chunk's rows. Samples are numbered 0, 1, 2, … across the chunks, in stream order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from tkmia.attacks.layout import upload
from tkmia.attacks.result import AttackResult
from tkmia.attacks.state import SampleState

__all__ = ["Chunk", "ChunkQueue", "Finals"]


@dataclass
class Finals:
    """The iterate a sample's result is taken from, for ``n`` samples.

    Attributes:
        x: ``(n, C, H, W)`` pixels; scores: ``(n, c)``; ok: ``(n,)`` bool success;
        it: ``(n,)`` long, the steps taken before this iterate.
    """

    x: torch.Tensor
    scores: torch.Tensor
    ok: torch.Tensor
    it: torch.Tensor

    def rows(self, index: torch.Tensor) -> Finals:
        """The rows ``index`` of every field."""
        return Finals(self.x[index], self.scores[index], self.ok[index], self.it[index])

    def where(self, mask: torch.Tensor, other: Finals) -> Finals:
        """Per row: ``other``'s values where ``mask`` ``(n,)`` is set, else these."""

        def pick(mine: torch.Tensor, theirs: torch.Tensor) -> torch.Tensor:
            return torch.where(mask.view((-1,) + (1,) * (mine.dim() - 1)), theirs, mine)

        return Finals(
            pick(self.x, other.x),
            pick(self.scores, other.scores),
            pick(self.ok, other.ok),
            pick(self.it, other.it),
        )


@dataclass
class Chunk:
    """One chunk of a stream: its result (filled in as its samples finish) and inputs.

    Attributes:
        result: the chunk's result, complete once ``left`` is 0.
        x0: ``(B, C, H, W)`` the clean images, in the model's memory layout.
        labels: ``(B, c)`` bool.
        max_left: ``(B,)`` long, the bound of the success rule (``SampleState.max_left``).
        start: the stream number of its first sample.
        need: ``(B,)`` float on the host: each sample's expected need (longest first).
    """

    result: AttackResult
    x0: torch.Tensor
    labels: torch.Tensor
    max_left: torch.Tensor
    start: int
    need: torch.Tensor
    size: int = field(init=False)
    left: int = field(init=False)  # samples not finished yet

    def __post_init__(self) -> None:
        self.size = self.left = self.x0.shape[0]

    def write(self, rows: torch.Tensor, final: Finals) -> None:
        """Store the results of the rows ``rows`` (long, on the result's device)."""
        self.result.adv_images[rows] = final.x.to(self.result.adv_images.dtype)
        self.result.adv_scores[rows] = final.scores
        self.result.success[rows] = final.ok
        self.result.iterations[rows] = final.it
        self.left -= rows.numel()


class _Group:
    """Chunks whose samples start as one, in decreasing expected need (ties in stream
    order): one chunk, or the last two of a stream."""

    def __init__(self, chunks: list[Chunk]) -> None:
        self.chunks = chunks
        need = torch.cat([ch.need for ch in chunks])
        order = need.argsort(descending=True, stable=True)
        which = torch.cat([torch.full((ch.size,), i) for i, ch in enumerate(chunks)])
        offsets = torch.tensor([ch.start - chunks[0].start for ch in chunks])
        self.which = which[order]  # (host, long) the chunk of each sample, in start order
        self.rows = order - offsets[self.which]  # (host, long) its row in that chunk
        self.size = len(order)
        self.started = 0


#: reads one item of the stream into a chunk: ``read(item, start, first_chunk_or_None)``
ReadChunk = Callable[[object, int, "Chunk | None"], Chunk]
#: the starting state of some rows (long, on the chunk's device) of a chunk
AdmitRows = Callable[[Chunk, torch.Tensor], SampleState]


class ChunkQueue:
    """The samples of a stream of chunks: read lazily, started group by group (a chunk, or
    the last two chunks of a stream of ``total`` chunks; within a group, expected longest
    first), finished in any order, handed back chunk by chunk in stream order.

    Args:
        chunks: the stream's items.
        read: turns an item into a :class:`Chunk` (validating it); its errors propagate.
        admit: the starting state of rows of a chunk.
        total: the number of chunks, if known: then the last chunk is read with the one
            before it and their samples start as one group; an error in that early read is
            held back and raised when the last chunk would have been read.
    """

    def __init__(
        self, chunks: Iterator[object], read: ReadChunk, admit: AdmitRows, total: int | None
    ) -> None:
        self.chunks, self.read_chunk, self.admit, self.total = chunks, read, admit, total
        self.pending: deque[Chunk] = deque()  # read and not handed back yet
        self.groups: deque[_Group] = deque()  # groups with samples not started yet
        self.read = 0  # samples read so far
        self.admitted = 0  # samples started so far
        self.n_chunks = 0  # items taken from the iterator so far
        self.late_error: BaseException | None = None
        self.dry = False

    def _next_item(self) -> object:
        """The next item of the iterator, ``None`` at its end."""
        if self.late_error is not None:
            raise self.late_error
        item = next(self.chunks, None)
        if item is not None:
            self.n_chunks += 1
        return item

    def _read(self, item: object) -> Chunk:
        chunk = self.read_chunk(item, self.read, self.pending[0] if self.pending else None)
        self.pending.append(chunk)
        self.read += chunk.size
        return chunk

    def fill(self, n: int) -> int:
        """Read chunks until ``n`` samples wait to start or the stream ends; how many wait."""
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

    def take(self, n: int) -> tuple[SampleState, torch.Tensor]:
        """The next ``n`` samples to start: their state (new tensors, never views) and their
        stream numbers ``(n,)`` (host, long)."""
        parts, ids = [], []
        while n > 0 and self.groups:
            group = self.groups[0]
            lo, hi = group.started, min(group.started + n, group.size)
            which, rows = group.which[lo:hi], group.rows[lo:hi]
            for i, ch in enumerate(group.chunks):
                mine = rows[which == i]
                if mine.numel():
                    parts.append(self.admit(ch, upload(mine, ch.x0.device)))
                    ids.append(mine + ch.start)
            group.started = hi
            n -= hi - lo
            self.admitted += hi - lo
            if group.started == group.size:
                self.groups.popleft()
        return SampleState.cat(parts), (ids[0] if len(ids) == 1 else torch.cat(ids))

    def finish(self, ids: torch.Tensor, final: Finals) -> None:
        """Write the final iterates of the samples ``ids`` (host, long) into their chunks."""
        numbers = ids.tolist()
        for ch in self.pending:
            picks = [i for i, n in enumerate(numbers) if ch.start <= n < ch.start + ch.size]
            if not picks:
                continue
            device = ch.result.success.device
            mine = final
            if len(picks) < len(numbers):
                mine = final.rows(upload(torch.tensor(picks), device))
            ch.write(upload(torch.tensor([numbers[i] - ch.start for i in picks]), device), mine)

    def ready(self) -> Iterator[AttackResult]:
        """Hand back, in order, the chunks at the head whose samples have all finished."""
        while self.pending and self.pending[0].left == 0:
            yield self.pending.popleft().result
