"""The box constraint: the tanh change of variables between pixels and the attack's space.

An attack optimises ``v`` in ``x' = (tanh(z0 + v) + 1) / 2`` with ``z0 = atanh(2x − 1)``,
so every iterate is a valid image in [0, 1] (SPEC §4.1). The map is computed as
``σ(2z)``, the same function (``tanh z = 2σ(2z) − 1``): on a CPU ``torch.tanh`` cost about
5 % of an attack iteration, ``torch.sigmoid`` a quarter of that. In float32
``(tanh z + 1)/2`` is exactly 0 or 1 once ``|z| > 8.7`` (its resolution near 0 is 2⁻²⁵);
``σ(2z)`` would only reach 0 at ``z < −44``, so pixels at most 2⁻²⁵ are set to 0: the map
saturates alike at both ends, with a gradient of exactly 0 there.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["EPS", "FLUSH", "PixelMap", "quantize", "to_pixels", "to_tanh_space"]

#: pixels are clamped to [EPS, 1 − EPS] before atanh, so that v = 0 gives back x within EPS.
EPS = 1e-6
#: pixels at most this are 0 (float32's resolution of (tanh + 1)/2 near 0 and 1): the map
#: saturates at 0 and 1 alike, at |z| > 8.66, where its gradient is exactly 0
FLUSH = 2.0**-25


def to_tanh_space(x: torch.Tensor) -> torch.Tensor:
    """``z0 = atanh(2x − 1)`` of pixels ``x`` in [0, 1] (clamped to [EPS, 1 − EPS]), any shape."""
    return torch.atanh(2 * x.clamp(EPS, 1 - EPS) - 1)


def quantize(x: torch.Tensor, bits: int) -> torch.Tensor:
    """``q(x) = round((2^b − 1)·x) / (2^b − 1)`` of pixels ``x`` (clamped to [0, 1]), any
    shape: the image a ``b``-bit file stores, read back (SPEC §7.2). For ``b = 8`` this is
    exactly an 8-bit PNG's ``round(255·x) / 255``."""
    levels = float(2**bits - 1)
    return x.clamp(0, 1).mul(levels).round_().div_(levels)


def to_pixels(z: torch.Tensor) -> torch.Tensor:
    """The inverse map, ``(tanh(z) + 1) / 2`` computed as ``σ(2z)``, any shape, in [0, 1]."""
    return nn.functional.threshold(torch.sigmoid(2 * z), FLUSH, 0.0)


class PixelMap(torch.autograd.Function):
    """``to_pixels(z0 + v)`` and its gradient w.r.t. ``v`` (and ``z0``), bit for bit, in fewer
    passes and allocations: in place on one buffer, and the backward pass needs only the
    pixels themselves (``d/dz σ(2z) = 2·x·(1 − x)``). Call as ``PixelMap.apply(z0, v)``."""

    @staticmethod
    def forward(ctx: Any, z0: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        x = torch.threshold_(torch.add(z0, v).mul_(2).sigmoid_(), FLUSH, 0.0)
        ctx.save_for_backward(x)
        return x

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        (x,) = ctx.saved_tensors
        g: torch.Tensor = torch.ops.aten.sigmoid_backward(grad, x).mul_(2)
        return (g if ctx.needs_input_grad[0] else None), (g if ctx.needs_input_grad[1] else None)
