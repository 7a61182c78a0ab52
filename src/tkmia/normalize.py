"""The normalising wrapper: every model tkmia attacks or trains takes pixels in [0, 1]."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from tkmia.errors import InputError

__all__ = ["Normalized"]


class Normalized(nn.Module):
    """Apply ``(x − mean) / std`` per channel, then ``net``.

    Args:
        net: a module taking normalised images ``(B, C, H, W)`` and returning scores ``(B, c)``.
        mean: per-channel means (length C, finite).
        std: per-channel standard deviations (length C, > 0 and finite).

    The wrapper is what attacks and measures see: input ``(B, C, H, W)`` in [0, 1], output
    logits ``(B, c)``. The statistics follow the input's device and dtype.

    After :meth:`to_channels_last` the network's weights and its input are kept in the
    channels-last memory layout (the caller's tensors stay as they are); the function is the
    same up to float rounding.

    Raises:
        InputError: when mean or std are not sequences of finite numbers of one length, or
            some std is not positive.
    """

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_t, std_t = _stats("mean", mean), _stats("std", std)
        if mean_t.numel() != std_t.numel():
            raise InputError(
                f"mean and std must have the same length, got {mean_t.numel()} and {std_t.numel()}"
            )
        if bool((std_t <= 0).any()):
            raise InputError(f"std must be positive, got {std_t.tolist()}")
        self.net = net
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1))
        self.register_buffer("std", std_t.view(1, -1, 1, 1))
        self.channels_last = False

    def to_channels_last(self) -> Normalized:
        """Switch the network to the channels-last (NHWC) memory layout, in place.

        oneDNN's CPU convolutions of small networks run markedly faster in it; on a GPU it is
        what cuDNN prefers under mixed precision. Returns ``self``.
        """
        self.net.to(memory_format=torch.channels_last)
        self.channels_last = True
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scores ``(B, c)`` of pixels ``x`` ``(B, C, H, W)`` in [0, 1]."""
        mean, std = self.mean, self.std
        if mean.dtype != x.dtype or mean.device != x.device:
            mean, std = mean.to(x), std.to(x)
        z = (x - mean) / std
        if self.channels_last:
            z = z.contiguous(memory_format=torch.channels_last)
        scores: torch.Tensor = self.net(z)
        return scores


def _stats(name: str, values: object) -> torch.Tensor:
    """``values`` as a float32 tensor ``(C,)``; an :class:`InputError` unless they are a
    sequence (or tensor) of finite real numbers."""
    expected = f"{name} must be a list of finite numbers, one per channel"
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise InputError(f"{expected}, got {values!r}")
    items = list(values)
    numbers = []
    for value in items:
        try:  # bools and strings are not numbers here, even though float() takes them
            number = math.nan if isinstance(value, (bool, str, bytes)) else float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number):
            raise InputError(f"{expected}, got {value!r} in {items!r}")
        numbers.append(number)
    return torch.tensor(numbers, dtype=torch.float32)
