"""Checks and loading the commands share: the output folder, the device, the dataset and
the model options, and opening the model and the dataset together."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

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


def check_model_options(opts: dict[str, Any]) -> Any:
    """The parsed ``--model`` (default ``builtin``), with ``--normalize`` and ``--classes``
    checked against it; nothing is loaded.

    Raises:
        InputError, MissingFileError: a bad form, a missing file, a bad ``--normalize``,
            or ``--normalize``/``--classes`` with a checkpoint or the built-in model.
    """
    from tkmia.models.sources import check_convention, parse_source

    source = parse_source(opts.get("model") or "builtin")
    check_convention(source, opts.get("normalize"), opts.get("classes"))
    return source


def check_data_and_model(opts: dict[str, Any]) -> Any:
    """``--dataset`` known, ``--device`` usable, ``--model`` parsed (the built-in model
    only with the built-in dataset); returns the parsed ``--model``, nothing is loaded.

    Raises:
        InputError, MissingFileError: the first mistake found.
    """
    from tkmia.data.factory import DATASETS

    dataset = opts["dataset"]
    if dataset not in DATASETS:
        raise InputError(f"unknown dataset {dataset!r}; expected one of {list(DATASETS)}")
    check_device(opts["device"])
    source = check_model_options(opts)
    if source.kind == "builtin" and dataset != "digits":
        raise InputError(
            f"dataset {dataset!r} needs --model (the built-in model is for digits): a trained "
            "checkpoint, a TorchScript or torch.export archive, or a factory"
        )
    return source


def open_data_and_model(
    dataset: str,
    split: str,
    root: Path | None,
    image_size: int | None,
    csv: Path | None,
    source: Any,
    normalize: str | None,
    classes: Path | None,
    device: str,
) -> tuple[Any, Any]:
    """The dataset's split and the model, fitted to its classes and image size:
    ``(model, dataset)``.

    Raises:
        InputError, MissingFileError: the data or the model cannot be read, or they do not
            fit each other.
    """
    from tkmia.data.digits import CANVAS
    from tkmia.data.factory import DEFAULT_IMAGE_SIZE, open_dataset
    from tkmia.models import fit_model, open_model

    data = open_dataset(dataset, split, root, image_size, csv, seed=0)
    names = list(data.classes)
    model, info = open_model(source, device, num_classes=len(names), normalize=normalize,
                             classes=classes)  # fmt: skip
    size = image_size or DEFAULT_IMAGE_SIZE.get(dataset, CANVAS)
    return fit_model(model, info, names, size, device, dataset), data
