"""torchvision ResNets with a c-way multi-label head; ImageNet weights from a local file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import nn

from tkmia.errors import InputError
from tkmia.models.architectures import register
from tkmia.models.checkpoint import load_state

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


def _make_builder(name: str):
    def build(num_classes: int) -> nn.Module:
        # torchvision is imported on first use: it takes seconds to import, and the
        # built-in model does not need it
        import torchvision

        net = getattr(torchvision.models, name)(weights=None)
        net.fc = nn.Linear(net.fc.in_features, num_classes)
        return net

    return build


for _name in _RESNETS:
    register(_name)(_make_builder(_name))


def load_imagenet_weights(
    net: nn.Module, path: str | Path, head: Sequence[str] = ("fc",)
) -> nn.Module:
    """Load a pretrained state dict (``.pth`` or ``.safetensors``) into ``net``: torchvision's
    ImageNet weights for the ResNets, or a timm model's.

    The file's classifier ``head`` (modules by name: ``fc`` for torchvision's ResNets, a
    timm model's ``pretrained_cfg["classifier"]``) is skipped: the multi-label head stays
    freshly initialised, as in the paper. Nothing is downloaded; ``path`` must exist locally.
    """
    prefixes = tuple(f"{name}." for name in head)
    state = load_state(path)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith(prefixes)}
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as err:  # a tensor of another shape
        first = str(err).strip().splitlines()
        raise InputError(
            f"weights file {str(path)!r} does not match this architecture: "
            + " ".join(line.strip() for line in first[:3])
        ) from None
    missing = [k for k in missing if not k.startswith(prefixes)]
    if missing or unexpected:
        raise InputError(
            f"weights file {str(path)!r} does not match this architecture: "
            f"missing {missing[:5]}, unexpected {list(unexpected)[:5]}"
        )
    return net
