"""Architectures by name, and building/loading a model from a checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tkmia.errors import InputError, MissingFileError
from tkmia.models.checkpoint import load_state, read_meta
from tkmia.models.wrapper import Normalized

NetBuilder = Callable[[int], nn.Module]
_BUILDERS: dict[str, NetBuilder] = {}
_CHANNELS_LAST: set[str] = set()


def register(name: str, channels_last: bool = False) -> Callable[[NetBuilder], NetBuilder]:
    """Register ``builder(num_classes) -> nn.Module`` (a bare, un-normalised network);
    ``channels_last``: models of this architecture run in that memory layout (see
    :meth:`Normalized.to_channels_last`), for training and attacks alike."""

    def deco(builder: NetBuilder) -> NetBuilder:
        _BUILDERS[name] = builder
        if channels_last:
            _CHANNELS_LAST.add(name)
        return builder

    return deco


def uses_channels_last(arch: str) -> bool:
    """Whether models of architecture ``arch`` run in the channels-last layout."""
    return arch in _CHANNELS_LAST


def architectures() -> list[str]:
    """Names accepted by :func:`build_net` and ``--arch``."""
    return sorted(_BUILDERS)


def build_net(arch: str, num_classes: int) -> nn.Module:
    """A freshly initialised network ``arch`` with a ``num_classes``-way head."""
    if arch not in _BUILDERS:
        raise InputError(f"unknown architecture {arch!r}; expected one of {architectures()}")
    if num_classes < 2:
        raise InputError(f"a multi-label model needs at least 2 classes, got {num_classes}")
    return _BUILDERS[arch](num_classes)


def build_model(meta: dict[str, Any]) -> Normalized:
    """The normalised model described by checkpoint metadata (weights not loaded)."""
    net = build_net(meta["arch"], len(meta["classes"]))
    model = Normalized(net, meta["mean"], meta["std"])
    return model.to_channels_last() if uses_channels_last(meta["arch"]) else model


def load_model(
    path: str | Path, device: str | torch.device = "cpu", num_classes: int | None = None
) -> tuple[Normalized, dict[str, Any]]:
    """Load a tkmia checkpoint (``.safetensors`` + ``.json`` sidecar) without pickle.

    Args:
        path: the ``.safetensors`` file.
        device: where to put the model.
        num_classes: if given, the number of classes the caller's dataset has; a
            checkpoint for another number of classes is an :class:`InputError`.

    Returns:
        ``(model, meta)`` with the model in eval mode.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"model checkpoint {str(path)!r} not found")
    if path.suffix != ".safetensors":
        raise InputError(
            f"model checkpoint {str(path)!r} must be a .safetensors file with a .json sidecar; "
            "pickle checkpoints are refused (convert with `tkmia train` or safetensors)"
        )
    meta = read_meta(path)
    state = load_state(path)
    if num_classes is not None and len(meta["classes"]) != num_classes:
        raise InputError(
            f"checkpoint {str(path)!r} is for {len(meta['classes'])} classes but the dataset "
            f"has {num_classes}"
        )
    model = build_model(meta)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise InputError(
            f"checkpoint {str(path)!r} does not match architecture {meta['arch']!r}: {first}"
        ) from None
    return model.to(device).eval(), meta
