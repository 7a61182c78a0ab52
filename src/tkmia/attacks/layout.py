"""Memory layout and host–device transfers of the attack's tensors."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["flags_reader", "flat_view", "model_memory_format", "upload"]


def model_memory_format(model: nn.Module) -> torch.memory_format:
    """The memory layout the model's convolutions take their input in: channels-last if any
    4-D parameter is stored so (``model.to(memory_format=torch.channels_last)``)."""
    for p in model.parameters():
        if p.dim() == 4 and not p.is_contiguous():
            if p.is_contiguous(memory_format=torch.channels_last):
                return torch.channels_last
    return torch.contiguous_format


def flat_view(t: torch.Tensor) -> torch.Tensor | None:
    """A 1-D view of all of ``t``'s elements in memory order, if ``t`` is dense in the
    standard or (4-D) channels-last layout; else ``None``."""
    if t.is_contiguous():
        return t.view(-1)
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1).view(-1)
    return None


def upload(index: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host index tensor on ``device``; on CUDA without waiting for the queued work."""
    if device.type == "cuda":
        return index.pin_memory().to(device, non_blocking=True)
    return index.to(device)


def flags_reader(flags: torch.Tensor) -> Callable[[], torch.Tensor] | None:
    """Start copying the ``(n,)`` bool ``flags`` to the host; returns the wait for them.

    On CUDA the copy is queued before the update step and waited for after it, so the
    device stays busy with the update while the host waits. ``None`` (other devices): the
    caller reads the flags right away.
    """
    if flags.device.type != "cuda":
        return None
    host = torch.empty(flags.shape, dtype=torch.bool, pin_memory=True)
    host.copy_(flags, non_blocking=True)
    event = torch.cuda.Event()  # type: ignore[no-untyped-call]
    event.record()

    def wait() -> torch.Tensor:
        event.synchronize()
        return host

    return wait
