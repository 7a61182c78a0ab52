"""Checks that `tkmia run` and `tkmia train` share: the output folder and the device."""

from __future__ import annotations

import os
from pathlib import Path

from tkmia.errors import InputError


def check_writable(out: Path) -> None:
    """Check that ``out`` exists as a writable folder or can be created.

    Args:
        out: the results or checkpoint folder.

    Raises:
        InputError: the nearest existing ancestor is a file, or not writable.
    """
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(
            f"--out {str(out)!r} cannot be created: {str(probe)!r} is a file, not a folder"
        )
    if not os.access(probe, os.W_OK):
        raise InputError(
            f"--out {str(out)!r} cannot be written: no write permission in {str(probe)!r}"
        )


def resolve_device(device: str) -> str:
    """``auto`` (the default of every command): ``cuda`` when a GPU is there, else ``cpu``;
    any other value as it is."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str) -> None:
    """Check that torch knows ``device`` and, for CUDA, that a GPU is there.

    Args:
        device: ``auto``, ``cpu`` or ``cuda[:i]``.

    Raises:
        InputError: an unknown device, or CUDA asked for without a GPU.
    """
    import torch

    device = resolve_device(device)
    try:
        torch.device(device)
    except RuntimeError:
        raise InputError(f"--device must be auto, cpu or cuda[:i], got {device!r}") from None
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device!r} asked for, but no CUDA device is available")
