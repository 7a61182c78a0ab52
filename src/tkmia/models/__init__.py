"""Models: architectures (timm's included), the normalising wrapper, safe checkpoints, the
built-in model, and every outside model form (:func:`open_model`)."""

from tkmia.models import resnet as _resnet  # noqa: F401  (registers the ResNets)
from tkmia.models.builtin import builtin_model
from tkmia.models.checkpoint import load_state, read_meta, save_checkpoint
from tkmia.models.outputs import Logits, check_output, logits_of
from tkmia.models.registry import (
    architectures,
    build_model,
    build_net,
    load_model,
    register,
    uses_channels_last,
)
from tkmia.models.resnet import IMAGENET_MEAN, IMAGENET_STD, load_imagenet_weights
from tkmia.models.sources import ModelInfo, ModelSource, fit_model, open_model, parse_source
from tkmia.models.wrapper import Normalized

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Logits",
    "ModelInfo",
    "ModelSource",
    "Normalized",
    "architectures",
    "build_model",
    "build_net",
    "builtin_model",
    "check_output",
    "fit_model",
    "load_imagenet_weights",
    "load_model",
    "load_state",
    "logits_of",
    "open_model",
    "parse_source",
    "read_meta",
    "register",
    "save_checkpoint",
    "uses_channels_last",
]
