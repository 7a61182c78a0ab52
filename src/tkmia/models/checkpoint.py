"""Safe checkpoint I/O: safetensors weights plus a JSON sidecar, never pickle.

A checkpoint ``model.safetensors`` has a sidecar ``model.json`` with at least::

    {"arch": "resnet50", "classes": [...], "image_size": 300,
     "mean": [..], "std": [..], "test_map": 0.94, "dataset": "voc2012"}

The weights are the state dict of the whole :class:`~tkmia.models.wrapper.Normalized`
module (the normalisation buffers included).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from tkmia.errors import InputError, MissingFileError
from tkmia.files import atomic_path
from tkmia.models.sidecar import check_meta

REQUIRED_META = ("arch", "classes", "image_size", "mean", "std")


def sidecar_path(path: str | Path) -> Path:
    """The JSON sidecar that belongs to a ``.safetensors`` checkpoint."""
    return Path(path).with_suffix(".json")


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Write ``model``'s state dict to ``path`` (safetensors) and ``meta`` to its sidecar.

    Both files are written to temporary names first and renamed, so an interrupted save
    never leaves a half-written checkpoint under the final name.

    Args:
        path: the ``.safetensors`` file to write (the sidecar goes next to it).
        model: usually a :class:`~tkmia.models.wrapper.Normalized`.
        meta: JSON-serialisable metadata with at least the keys of :data:`REQUIRED_META`.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        InputError: ``path`` does not end in ``.safetensors``, or ``meta`` lacks a key.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise InputError(f"checkpoint path must end in .safetensors, got {str(path)!r}")
    missing = [key for key in REQUIRED_META if key not in meta]
    if missing:
        raise InputError(f"checkpoint metadata lacks {missing}")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # both written before either is renamed; the weights are renamed first
    with atomic_path(sidecar_path(path)) as side_tmp:
        side_tmp.write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")
        with atomic_path(path) as tmp:
            save_file(state, str(tmp))
    return path


def read_meta(path: str | Path) -> dict[str, Any]:
    """Read and check the JSON sidecar of the checkpoint at ``path`` (no weight is read).

    Args:
        path: the ``.safetensors`` checkpoint (its sidecar is the ``.json`` next to it).

    Returns:
        The sidecar's object, with at least valid ``arch``, ``classes``, ``image_size``,
        ``mean`` and ``std`` (see :mod:`tkmia.models.sidecar`).

    Raises:
        MissingFileError: the sidecar does not exist.
        InputError: it is not valid JSON, or it breaks a rule of :func:`check_meta`,
            with the file, the key, the value and what was expected.
    """
    side = sidecar_path(path)
    if not side.is_file():
        raise MissingFileError(
            f"checkpoint metadata {str(side)!r} not found: a tkmia checkpoint is a .safetensors "
            "file with a .json sidecar of the same name (written by `tkmia train`)"
        )
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"checkpoint metadata {str(side)!r} is not valid JSON: {err}") from None
    except OSError as err:
        raise InputError(f"cannot read checkpoint metadata {str(side)!r}: {err}") from None
    return check_meta(meta, str(side))


def refusal(path: Path, err: BaseException) -> str:
    """Why tkmia refuses a torch file that ``torch.load(weights_only=True)`` rejected, and
    the safe way out. torch's own message is not passed on: it may advise unpickling
    (``weights_only=False``), which can run any code the file holds."""
    found = re.search(r"GLOBAL ([\w.]+)", str(err))
    why = (
        f"it holds pickled Python objects (GLOBAL {found.group(1)})"
        if found
        else f"it is not a file of plain tensors (torch's weights-only reader refused it: "
        f"{type(err).__name__})"
    )
    return (
        f"refusing to load {str(path)!r}: {why}; loading a pickle can run any code it "
        "holds, so tkmia reads only safetensors files or torch files of plain tensors: "
        "convert the weights to safetensors where you trust the file (load it there and "
        "save model.state_dict() with safetensors.torch.save_file)"
    )


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict without executing any pickle.

    ``.safetensors`` files are read with safetensors; ``.pt``/``.pth`` files (for example
    torchvision's ImageNet weights) with ``torch.load(weights_only=True)``, which refuses
    anything but tensors and plain containers.

    Args:
        path: a ``.safetensors``, ``.pt``, ``.pth`` or ``.bin`` file.

    Returns:
        The state dict, tensors on the CPU.

    Raises:
        MissingFileError: ``path`` does not exist.
        InputError: an unknown suffix, an unreadable file, a file that holds pickled
            objects, or anything but a state dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"weights file {str(path)!r} not found")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise InputError(f"{str(path)!r} is not a valid safetensors file: {err}") from None
    if path.suffix in (".pt", ".pth", ".bin"):
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as err:  # any failure means: not a plain, safe weights file
            raise InputError(refusal(path, err)) from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        tensors_only = isinstance(state, dict) and all(
            isinstance(v, torch.Tensor) for v in state.values()
        )
        if not tensors_only:
            raise InputError(f"{str(path)!r} does not hold a state dict of tensors")
        return state
    raise InputError(
        f"unknown weights format {path.suffix!r} for {str(path)!r}: "
        "expected .safetensors, .pt or .pth"
    )
