"""The table of architectures: names, network builders, memory layout.

Builders register themselves here (see :mod:`tkmia.models.resnet` and
:mod:`tkmia.models.builtin`); the checkpoint sidecar check and :func:`build_net` look
names up here. This module imports nothing else from :mod:`tkmia.models` but
:mod:`tkmia.models.timm_nets` (``timm:<name>`` architectures).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from tkmia.errors import InputError

NetBuilder = Callable[[int], nn.Module]
_BUILDERS: dict[str, NetBuilder] = {}
_CHANNELS_LAST: set[str] = set()


def register(name: str, channels_last: bool = False) -> Callable[[NetBuilder], NetBuilder]:
    """Register ``builder(num_classes) -> nn.Module`` (a bare, un-normalised network).

    Args:
        name: the architecture's name, as in a checkpoint's ``arch`` and ``--arch``.
        channels_last: models of this architecture run in that memory layout (see
            :meth:`~tkmia.models.wrapper.Normalized.to_channels_last`), for training and
            attacks alike.

    Returns:
        A decorator that registers the builder and returns it unchanged.
    """

    def deco(builder: NetBuilder) -> NetBuilder:
        _BUILDERS[name] = builder
        if channels_last:
            _CHANNELS_LAST.add(name)
        return builder

    return deco


def is_architecture(arch: object) -> bool:
    """Whether ``arch`` is a registered name or a timm name ``timm:<model>`` (whether timm
    knows that model is checked when it is built)."""
    from tkmia.models.timm_nets import is_timm

    return isinstance(arch, str) and (arch in _BUILDERS or is_timm(arch))


def check_architecture(arch: str) -> None:
    """Check ``--arch`` without building anything.

    Raises:
        InputError: an unknown name; for ``timm:<model>``, timm missing (naming the extra
            to install) or a model timm does not know.
    """
    from tkmia.models.timm_nets import check_timm, is_timm

    if is_timm(arch):
        check_timm(arch)
    elif arch not in _BUILDERS:
        raise InputError(
            f"unknown architecture {arch!r}; expected one of {architectures()} or timm:<model name>"
        )


def uses_channels_last(arch: str) -> bool:
    """Whether models of architecture ``arch`` run in the channels-last layout."""
    return arch in _CHANNELS_LAST


def architectures() -> list[str]:
    """Names accepted by :func:`build_net` and ``--arch``, sorted."""
    return sorted(_BUILDERS)


def build_net(arch: str, num_classes: int) -> nn.Module:
    """A freshly initialised network ``arch`` with a ``num_classes``-way head.

    Args:
        arch: one of :func:`architectures`, or ``timm:<model name>`` for any timm model
            (built with ``pretrained=False``; needs ``pip install 'tkmia[timm]'``).
        num_classes: ``c`` >= 2; the network maps ``(B, 3, H, W)`` to ``(B, c)``.

    Raises:
        InputError: an unknown ``arch``, fewer than 2 classes, or a timm name without
            timm installed.
    """
    from tkmia.models.timm_nets import build_timm, is_timm

    check_architecture(arch)
    if num_classes < 2:
        raise InputError(f"a multi-label model needs at least 2 classes, got {num_classes}")
    return build_timm(arch, num_classes) if is_timm(arch) else _BUILDERS[arch](num_classes)
