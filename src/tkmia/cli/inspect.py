"""`tkmia inspect`: what tkmia understood of a model, and its test mAP on a dataset.

The first thing to run on a model of one's own: it loads the model as `tkmia run` would
(the same ``--model``, ``--normalize``, ``--classes`` and ``--image-size``), runs one dummy
batch, and prints the source kind, classes, input size, normalisation, channels, output
shape, parameter count and device; with ``--dataset``, the test mAP on up to
``--samples`` images of the split `tkmia run` attacks.
"""

from __future__ import annotations

import argparse
from typing import Any

from tkmia.cli.checks import check_device, check_model_options, resolve_device
from tkmia.cli.options import OPTIONS, add_options, check_values, resolve_options
from tkmia.errors import InputError

#: the `run` options that `inspect` shares (same flags, same config keys)
SHARED = (
    "config",
    "model",
    "normalize",
    "classes",
    "image_size",
    "root",
    "csv",
    "split",
    "batch_size",
    "device",
)
#: test images scored for the mAP when --samples is not given
DEFAULT_SAMPLES = 256
_KINDS = {
    "builtin": "the built-in model",
    "checkpoint": "tkmia checkpoint (safetensors + JSON sidecar)",
    "torchscript": "TorchScript archive (torch.jit.load)",
    "export": "torch.export archive (torch.export.load)",
    "factory": "Python factory (your code, imported and called)",
    "timm": "timm model with local weights (pretrained=False, nothing downloaded)",
}


def add_parser(sub: Any) -> None:
    """Add the `inspect` subcommand.

    Args:
        sub: the ``add_subparsers()`` object of the `tkmia` parser.
    """
    parser = sub.add_parser(
        "inspect",
        help="show how tkmia reads a model, and its test mAP on a dataset",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument(
        "--dataset", help="a dataset to measure the test mAP on (default: none, no mAP)"
    )
    parser.add_argument(
        "--samples",
        type=int,
        help=f"test images for the mAP, the first of the split (default: {DEFAULT_SAMPLES})",
    )
    add_options(parser, [OPTIONS[name] for name in SHARED])
    parser.set_defaults(no_progress=True)


def _names(classes: list[str] | None) -> str:
    if classes is None:
        return "not named (give --classes FILE or --dataset)"
    shown = classes if len(classes) <= 5 else [*classes[:4], "...", classes[-1]]
    return f"{len(classes)} ({', '.join(shown)})"


def _stats(stats: Any) -> str:
    if stats is None:
        return "none: the model takes pixels in [0, 1]"
    mean, std = (", ".join(f"{v:.4g}" for v in values) for values in stats)
    return f"(x - mean) / std, mean ({mean}), std ({std})"


def _test_map(model: Any, dataset: Any, samples: int, batch_size: int, device: str) -> float:
    from torch.utils.data import Subset

    from tkmia.training import evaluate_map

    subset = Subset(dataset, range(min(samples, len(dataset))))
    return evaluate_map(model, subset, batch_size=batch_size, device=device)


def command(args: argparse.Namespace) -> int:
    """Run `tkmia inspect`: load the model, print what was understood.

    Returns:
        The exit code, 0.

    Raises:
        InputError, MissingFileError: a user mistake, or a model whose output is not
            ``(B, c)`` logits.
    """
    from tkmia.data.digits import CANVAS
    from tkmia.data.factory import DATASETS, DEFAULT_IMAGE_SIZE, EVAL_SPLIT, open_dataset
    from tkmia.models import check_output, fit_model, open_model

    opts = resolve_options(args)
    check_values(opts)
    name, samples = args.dataset or opts.get("dataset"), args.samples or DEFAULT_SAMPLES
    if args.samples is not None and args.samples < 1:
        raise InputError(f"--samples must be a positive integer, got {args.samples!r}")
    if name is not None and name not in DATASETS:
        raise InputError(f"unknown dataset {name!r}; expected one of {list(DATASETS)}")
    source = check_model_options(opts)
    device = opts.get("device") or "auto"
    check_device(device)
    device = resolve_device(device)
    model, info = open_model(
        source, device, normalize=opts.get("normalize"), classes=opts.get("classes")
    )
    classes, dataset, split = info.classes, None, None
    size = opts.get("image_size") or (
        DEFAULT_IMAGE_SIZE.get(name, CANVAS) if name is not None else info.image_size
    )
    if size is None:
        raise InputError("tkmia inspect needs --image-size (or --dataset) for this model")
    if name is not None:
        split = opts.get("split") or EVAL_SPLIT.get(name, "val")
        dataset = open_dataset(name, split, opts.get("root"), size, opts.get("csv"), seed=0)
        classes = list(dataset.classes)
        model = fit_model(model, info, classes, size, device, name)
    text = f"model {source.text!r}"
    count = None if classes is None else len(classes)
    shape = check_output(model, count, size, device=device, name=text)
    lines = {
        "model": source.text,
        "kind": _KINDS[source.kind],
        "classes": _names(classes) + (f" (in the order of {name})" if name else ""),
        "input": f"(B, {info.channels}, {size}, {size}), pixels in [0, 1]",
        "normalisation": _stats(info.normalize),
        "channels": f"{info.channels} (RGB)",
        "output": f"{shape} logits on a dummy batch of {shape[0]} images",
        "parameters": f"{sum(p.numel() for p in model.parameters()):,}",
        "device": str(device),
    }
    if dataset is not None:
        batch = opts.get("batch_size") or 64
        value = _test_map(model, dataset, samples, batch, device)
        shown = min(samples, len(dataset))
        lines["test mAP"] = f"{value:.4f} on the first {shown} images of {name} {split}"
    width = max(map(len, lines)) + 1
    print(f"tkmia inspect: {text}")
    for key, value in lines.items():
        print(f"  {key + ':':<{width}} {value}")
    return 0
