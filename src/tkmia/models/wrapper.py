"""The normalising wrapper: every tkmia model takes pixels in [0, 1]."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from tkmia.errors import InputError


def _numbers(values: object, name: str) -> list[float]:
    """``values`` as a list of finite floats, else :class:`InputError` naming ``name``."""
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
    return numbers


def check_statistics(mean: object, std: object) -> None:
    """Check per-channel normalisation statistics.

    Args:
        mean, std: sequences of ``C`` finite numbers each; every ``std`` > 0.

    Raises:
        InputError: naming the value and what was expected.
    """
    means, stds = _numbers(mean, "mean"), _numbers(std, "std")
    if len(means) != len(stds):
        raise InputError(
            f"mean and std must have the same length, got {len(means)} and {len(stds)}"
        )
    if any(s <= 0 for s in stds):
        raise InputError(f"std must be positive, got {stds}")


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

    mean: torch.Tensor  # (1, C, 1, 1), a buffer
    std: torch.Tensor  # (1, C, 1, 1), a buffer, > 0

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        """See the class docstring.

        Raises:
            InputError: ``mean`` and ``std`` are not sequences of finite numbers of the same
                length, or a ``std`` is not positive.
        """
        super().__init__()
        check_statistics(mean, std)
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
