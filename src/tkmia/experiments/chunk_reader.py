"""Reading a setting's chunks from the dataset while an attack streams through them."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from tkmia.data.common import LabelledDataset


@dataclass(frozen=True)
class Chunk:
    """A chunk as read from the dataset.

    Attributes:
        positions: positions into the setting's selected list.
        indices: the images' dataset indices.
        images: ``(B, 3, H, W)`` pixels in [0, 1], on the attack's device.
        labels: ``(B, c)`` ground truth, on the attack's device.
    """

    positions: list[int]
    indices: list[int]
    images: torch.Tensor
    labels: torch.Tensor


class ChunkReader:
    """The ``(images, labels, specified)`` of each chunk, read only when the attack's
    stream asks for the next one.

    Results come back in chunk order: :meth:`finished` hands back the oldest chunk read
    whose result has not been claimed yet, with the time spent reading since the last
    call (to keep it out of the attack's time).

    Args:
        dataset: yields ``(image (3, H, W), labels (c,))``.
        indices: the setting's selected dataset indices.
        specified: ``(len(indices), c)`` bool, the specified labels of each selected image.
        chunks: the chunks to read, as positions into ``indices``.
        device: where the tensors go.
    """

    def __init__(
        self,
        dataset: LabelledDataset,
        indices: Sequence[int],
        specified: torch.Tensor,
        chunks: Sequence[Sequence[int]],
        device: str,
    ) -> None:
        self.dataset, self.indices, self.specified = dataset, indices, specified
        self.chunks, self.device = chunks, device
        self._read: deque[Chunk] = deque()
        self._seconds = 0.0

    def __len__(self) -> int:  # the attack then reads the last chunk with the one before it
        return len(self.chunks)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for positions in self.chunks:
            start = time.perf_counter()
            chunk = self._load(list(positions))
            self._read.append(chunk)
            self._seconds += time.perf_counter() - start
            yield chunk.images, chunk.labels, self.specified[chunk.positions].to(self.device)

    def _load(self, positions: list[int]) -> Chunk:
        indices = [self.indices[p] for p in positions]
        items = [self.dataset[i] for i in indices]
        images = torch.stack([im for im, _ in items]).to(self.device)
        labels = torch.stack([lab for _, lab in items]).to(self.device)
        return Chunk(positions, indices, images, labels)

    def finished(self) -> tuple[Chunk, float]:
        """The oldest chunk whose result came back, and the seconds spent reading since
        the previous call (then reset to zero).

        Raises:
            IndexError: every chunk read was handed back already.
        """
        chunk, seconds = self._read.popleft(), self._seconds
        self._seconds = 0.0
        return chunk, seconds
