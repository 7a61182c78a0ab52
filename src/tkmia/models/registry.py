"""Building a model from checkpoint metadata and loading a checkpoint.

The architecture table (:func:`register`, :func:`build_net`, ...) lives in
:mod:`tkmia.models.architectures` and is re-exported here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tkmia.errors import InputError, MissingFileError
from tkmia.models.architectures import (
    NetBuilder,
    architectures,
    build_net,
    register,
    uses_channels_last,
)
from tkmia.models.checkpoint import load_state, read_meta
from tkmia.models.wrapper import Normalized

__all__ = [
    "NetBuilder",
    "architectures",
    "build_model",
    "build_net",
    "load_model",
    "register",
    "uses_channels_last",
]


def build_model(meta: dict[str, Any]) -> Normalized:
    """The normalised model described by checkpoint metadata (weights not loaded).

    Args:
        meta: at least ``arch``, ``classes`` (``c`` names), ``mean`` and ``std`` (per
            channel), as :func:`~tkmia.models.checkpoint.read_meta` returns them.

    Returns:
        A freshly initialised model, ``(B, 3, H, W)`` images in [0, 1] → ``(B, c)`` logits,
        in its architecture's memory layout.

    Raises:
        InputError: an unknown architecture, fewer than 2 classes, or bad statistics.
    """
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

    Raises:
        MissingFileError: the checkpoint or its sidecar does not exist.
        InputError: not a ``.safetensors`` file, a malformed sidecar (checked before any
            weight is read), unreadable or truncated weights, weights of another
            architecture (see :func:`check_state`), or a number of classes other than
            ``num_classes``.
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
    check_state(path, meta["arch"], state, model.state_dict())
    check_normalization(path, state, model.state_dict())
    model.load_state_dict(state)
    return model.to(device).eval(), meta


def check_normalization(
    path: Path, state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]
) -> None:
    """Check that the sidecar's ``mean`` and ``std`` (in ``expected``, the model it
    describes) are the normalisation the weights carry (``state``'s buffers): otherwise
    `tkmia inspect` would show one and the model apply the other.

    Raises:
        InputError: they differ (both values named, and the fix).
    """
    for key in ("mean", "std"):
        if key not in state or key not in expected:
            continue
        got, want = state[key].double().flatten(), expected[key].double().flatten()
        if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-5, atol=1e-7):
            raise InputError(
                f"checkpoint sidecar {str(path.with_suffix('.json'))!r} says {key} "
                f"{[round(v, 6) for v in want.tolist()]}, but the weights in {str(path)!r} "
                f"carry {key} {[round(v, 6) for v in got.tolist()]}: the sidecar was edited "
                "or belongs to other weights; set its mean and std to the weights' values"
            )


def check_state(
    path: Path, arch: str, state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]
) -> None:
    """Check a checkpoint's tensors against the model its sidecar describes, key by key.

    Raises:
        InputError: a missing or unexpected key, or a tensor of another shape or of a
            non-floating type where a floating one is expected, naming the file, the key
            and what was expected.
    """
    where = f"checkpoint {str(path)!r} does not match architecture {arch!r}"
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    if missing or unexpected:
        raise InputError(
            f"{where}: {len(missing)} tensors missing {missing[:3]}, {len(unexpected)} "
            f"unexpected {unexpected[:3]}"
        )
    for key, want in expected.items():
        got = state[key]
        if got.shape != want.shape:
            raise InputError(
                f"{where}: {key!r} must have shape {tuple(want.shape)}, got {tuple(got.shape)}"
            )
        if want.is_floating_point() and not got.is_floating_point():
            raise InputError(f"{where}: {key!r} must be floating point, got {got.dtype}")


def load_timm_weights(arch: str, path: str | Path) -> torch.nn.Module:
    """The timm model ``timm:<name>`` with the whole state dict of the local file ``path``
    (``.safetensors`` or a weights-only ``.pth``; nothing is downloaded, nothing unpickled),
    its head sized by the file's classifier; eval mode, on the CPU, not normalised.

    Raises:
        MissingFileError: no such file.
        InputError: timm missing or without that model, an unreadable file, or tensors that
            do not match the model key by key (see :func:`check_state`).
    """
    from tkmia.models.timm_nets import check_timm, num_classes_of

    check_timm(arch)
    state = load_state(path)
    net = build_net(arch, num_classes_of(arch, state))
    check_state(Path(path), arch, state, net.state_dict())
    net.load_state_dict(state)
    return net.eval()
