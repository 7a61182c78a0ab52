"""The built-in classifier of the digits dataset, shipped inside the package.

``digits_cnn`` is a small CNN (about 60k parameters) built for speed on a laptop CPU:
a 5×5 stride-2 stem and three 3×3 conv–BN–ReLU blocks (16, 32, 32, 64 channels, two
max-pools), global average pooling and a 20-way linear head. On 48×48 inputs it costs
about 3 M multiply-adds, so an attack iteration (forward and backward) on a batch runs
at thousands of images per second on two cores.

The shipped weights are ``tkmia/models/weights/digits_cnn.safetensors`` (+ ``.json``),
written by ``tkmia train --dataset digits`` (see README, "The built-in model").
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch
from torch import nn

from tkmia.errors import MissingFileError
from tkmia.models.registry import load_model, register
from tkmia.models.wrapper import Normalized

BUILTIN_ARCH = "digits_cnn"
#: per-channel statistics of the built-in dataset's training split (set at training time)
DIGITS_MEAN = (0.5, 0.5, 0.5)
DIGITS_STD = (0.25, 0.25, 0.25)


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


@register(BUILTIN_ARCH)
def digits_cnn(num_classes: int, width: int = 16) -> nn.Module:
    """The built-in architecture: ``(B, 3, H, W)`` normalised images → ``(B, num_classes)``."""
    w = width
    return nn.Sequential(
        nn.Conv2d(3, w, 5, stride=2, padding=2, bias=False),
        nn.BatchNorm2d(w),
        nn.ReLU(),
        *_block(w, 2 * w),
        nn.MaxPool2d(2),
        *_block(2 * w, 2 * w),
        nn.MaxPool2d(2),
        *_block(2 * w, 4 * w),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * w, num_classes),
    )


def builtin_checkpoint_path() -> Path:
    """Where the shipped checkpoint of the built-in model lives (inside the package)."""
    return Path(str(resources.files("tkmia.models") / "weights" / f"{BUILTIN_ARCH}.safetensors"))


def builtin_model(device: str | torch.device = "cpu") -> Normalized:
    """The trained built-in classifier (eval mode): ``[0, 1]`` images → 20 logits."""
    path = builtin_checkpoint_path()
    if not path.is_file():
        raise MissingFileError(
            f"the built-in model's weights {str(path)!r} are missing from this install; "
            "reinstall tkmia, or recreate them with `tkmia train --dataset digits --out "
            f"{path.parent}`"
        )
    model, _ = load_model(path, device)
    return model
