"""The normalising wrapper: every tkmia model takes pixels in [0, 1]."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Normalized(nn.Module):
    """Apply ``(x - mean) / std`` per channel, then ``net``.

    Args:
        net: a module taking normalised images ``(B, C, H, W)`` and returning scores ``(B, c)``.
        mean, std: per-channel statistics (length C).

    The wrapper is what attacks and measures see: input ``(B, C, H, W)`` in [0, 1],
    output logits ``(B, c)``.

    After :meth:`to_channels_last` the network's weights and its input are kept in the
    channels-last memory layout (the caller's tensors stay as they are); the function is
    the same up to float rounding.
    """

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(
                f"mean and std must have the same length, got {len(mean)} and {len(std)}"
            )
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {list(std)}")
        self.net = net
        shape = (1, -1, 1, 1)
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(shape))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(shape))
        self.channels_last = False

    def to_channels_last(self) -> Normalized:
        """Switch the network to the channels-last (NHWC) memory layout, in place.

        oneDNN's CPU convolutions of small networks run markedly faster in it (the
        built-in model's forward and backward about 1.5x on two cores, see README
        "Performance"); on a GPU it is what cuDNN prefers under mixed precision.
        Returns ``self``.
        """
        self.net.to(memory_format=torch.channels_last)
        self.channels_last = True
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.mean) / self.std
        if self.channels_last:
            z = z.contiguous(memory_format=torch.channels_last)
        return self.net(z)
