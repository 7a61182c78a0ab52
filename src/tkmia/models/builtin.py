"""The built-in classifier of the digits dataset, shipped inside the package.

``digits_cnn`` is a small CNN (about 60k parameters) built for speed on a laptop CPU:
a 5×5 stride-2 stem and three 3×3 conv–BN–ReLU blocks (16, 32, 32, 64 channels, two
max-pools), global average pooling and a 20-way linear head. On 48×48 inputs it costs
about 3 M multiply-adds, so an attack iteration (forward and backward) on a batch runs
at thousands of images per second on two cores.

The shipped weights are ``tkmia/models/weights/digits_cnn.safetensors`` (+ ``.json``),
written by ``tkmia train --dataset digits`` (see docs/benchmark.md, the built-in model).
:func:`builtin_model` returns the network for inference and attacks, with every
BatchNorm folded into the convolution before it (the same function up to float rounding,
about 1e-5 on the logits, and cheaper to attack) and in
the channels-last memory layout (see :meth:`Normalized.to_channels_last`).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from tkmia.errors import MissingFileError
from tkmia.models.architectures import register
from tkmia.models.registry import load_model
from tkmia.models.wrapper import Normalized

BUILTIN_ARCH = "digits_cnn"
#: per-channel statistics of the built-in dataset's training split (set at training time)
DIGITS_MEAN = (0.5, 0.5, 0.5)
DIGITS_STD = (0.25, 0.25, 0.25)


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


@register(BUILTIN_ARCH, channels_last=True)
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


def fold_batchnorm(net: nn.Sequential) -> nn.Sequential:
    """``net`` (eval mode) with every ``Conv2d`` directly followed by a ``BatchNorm2d``
    replaced by one equivalent ``Conv2d``; a new module, ``net`` is left as it is."""
    layers: list[nn.Module] = []
    for layer in net:
        if isinstance(layer, nn.BatchNorm2d) and layers and isinstance(layers[-1], nn.Conv2d):
            layers[-1] = fuse_conv_bn_eval(layers[-1], layer)
        else:
            layers.append(layer)
    return nn.Sequential(*layers).eval()


def builtin_checkpoint_path(variant: str = "") -> Path:
    """Where the shipped checkpoint of the built-in model lives (inside the package).

    Args:
        variant: ``""`` the built-in model; ``"noise0.25"`` the same architecture trained
            with Gaussian noise σ = 0.25 for randomized smoothing (`tkmia certify`'s default
            on digits), made by ``tkmia train --dataset digits --noise 0.25 --epochs 8``.
    """
    name = BUILTIN_ARCH + (f"_{variant}" if variant else "")
    return Path(str(resources.files("tkmia.models") / "weights" / f"{name}.safetensors"))


def builtin_model(device: str | torch.device = "cpu") -> Normalized:
    """The trained built-in classifier (eval mode, BatchNorm folded into the convolutions,
    for inference and attacks only): ``[0, 1]`` images → 20 logits."""
    path = builtin_checkpoint_path()
    if not path.is_file():
        raise MissingFileError(
            f"the built-in model's weights {str(path)!r} are missing from this install; "
            "reinstall tkmia, or recreate them with `tkmia train --dataset digits --out "
            f"{path.parent}`"
        )
    model, _ = load_model(path, device)
    net = model.net.eval()
    assert isinstance(net, nn.Sequential), "digits_cnn builds an nn.Sequential"
    model.net = fold_batchnorm(net)
    return model.to_channels_last()
