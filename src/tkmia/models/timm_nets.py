"""timm backbones by name, ``timm:<model name>``: built with ``pretrained=False`` (nothing
is ever downloaded), with a c-way head; local pretrained weights via
:func:`load_backbone_weights`. timm is the optional extra ``tkmia[timm]``.
"""

from __future__ import annotations

from types import ModuleType

import torch
from torch import nn

from tkmia.errors import InputError

PREFIX = "timm:"
INSTALL = "pip install 'tkmia[timm]'"


def is_timm(arch: str) -> bool:
    """Whether ``arch`` names a timm model (``timm:<name>``)."""
    return arch.startswith(PREFIX) and len(arch) > len(PREFIX)


def _timm(arch: str) -> ModuleType:
    try:
        import timm
    except ImportError:
        raise InputError(
            f"architecture {arch!r} needs timm, which is not installed: {INSTALL}"
        ) from None
    return timm


def check_timm(arch: str) -> None:
    """Check that timm is installed and knows the model ``arch`` names (builds nothing).

    Raises:
        InputError: timm is missing (saying which extra to install) or has no such model.
    """
    timm = _timm(arch)
    name = arch[len(PREFIX) :]
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0]}*")[:8]
        raise InputError(
            f"timm has no model {name!r} (from --arch {arch!r})"
            + (f"; similar names: {close}" if close else "; see timm.list_models()")
        )


def build_timm(arch: str, num_classes: int) -> nn.Module:
    """A freshly initialised timm model ``timm:<name>`` with a ``num_classes``-way head
    (``pretrained=False``: nothing is downloaded). ``(B, 3, H, W)`` → ``(B, c)``.

    Raises:
        InputError: see :func:`check_timm`.
    """
    check_timm(arch)
    net: nn.Module = _timm(arch).create_model(
        arch[len(PREFIX) :], pretrained=False, num_classes=num_classes
    )
    return net


def head_names(net: nn.Module) -> tuple[str, ...]:
    """The modules that make up ``net``'s classifier head: timm's ``pretrained_cfg``
    ``classifier`` entry, else ``fc`` (torchvision's ResNets)."""
    cfg = getattr(net, "pretrained_cfg", None) or {}
    head = cfg.get("classifier", "fc")
    return tuple(head) if isinstance(head, (list, tuple)) else (head,)


def input_stats(arch: str) -> tuple[list[float], list[float]] | None:
    """The normalisation a timm model's pretrained weights expect (``pretrained_cfg``'s
    ``mean``/``std``), or None when timm does not say."""
    timm = _timm(arch)
    try:
        cfg = timm.models.get_pretrained_cfg(arch[len(PREFIX) :])
    except Exception:  # noqa: BLE001  (an unknown tag: ImageNet's, the caller's default)
        return None
    mean, std = getattr(cfg, "mean", None), getattr(cfg, "std", None)
    if not mean or not std or len(mean) != 3 or len(std) != 3:
        return None
    return [float(v) for v in mean], [float(v) for v in std]


def num_classes_of(arch: str, state: dict[str, torch.Tensor]) -> int:
    """The class count of a state dict of timm model ``arch``: the rows of its classifier's
    weight (timm's ``pretrained_cfg`` ``classifier`` entry names it).

    Raises:
        InputError: the state dict has no such weight (not weights of this model).
    """
    cfg = _timm(arch).models.get_pretrained_cfg(arch[len(PREFIX) :])
    head = getattr(cfg, "classifier", None) or "fc"
    heads = head if isinstance(head, (list, tuple)) else [head]
    for name in heads:
        weight = state.get(f"{name}.weight")
        if weight is not None and weight.dim() >= 1:
            return int(weight.shape[0])
    raise InputError(
        f"the weights have no classifier {[f'{h}.weight' for h in heads]} of timm model "
        f"{arch[len(PREFIX) :]!r}: are they weights of this model?"
    )
