"""``--model``, told apart by its form: every kind of model tkmia can attack.

============================  ==============  =========================================
form                          kind            loaded with
============================  ==============  =========================================
``builtin``                   ``builtin``     the shipped digits model
``PATH.safetensors``          ``checkpoint``  safetensors + the JSON sidecar
``PATH.pt``, ``PATH.ts``      ``torchscript`` ``torch.jit.load``
``PATH.pt2``                  ``export``      ``torch.export.load`` (weights only)
``pkg.module:function``,      ``factory``     import, then ``function()`` (your code)
``path/file.py:function``
``timm:<name>@PATH``          ``timm``        timm, ``pretrained=False``, + the local
                                              weights ``PATH`` (safetensors or a
                                              weights-only ``.pth``)
============================  ==============  =========================================

A checkpoint says in its sidecar what it expects (classes, image size, normalisation);
a timm model is normalised as timm's ``pretrained_cfg`` says (ImageNet's when it says
nothing) unless ``normalize`` says otherwise; the other three take pixels in [0, 1]
unless told otherwise (``normalize``); all four output the dataset's classes in the
dataset's order unless told otherwise (``classes``), and are
seen through :class:`~tkmia.models.outputs.Logits`, so that their output may come as a
tensor, a tuple, a dict or an object with ``.logits``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tkmia.errors import InputError, MissingFileError
from tkmia.models.checkpoint import read_meta
from tkmia.models.outputs import Logits, check_output
from tkmia.models.resnet import IMAGENET_MEAN, IMAGENET_STD
from tkmia.models.wrapper import Normalized

__all__ = [
    "ModelInfo",
    "ModelSource",
    "align_classes",
    "check_convention",
    "fit_model",
    "open_model",
    "parse_normalize",
    "parse_source",
    "read_classes",
]

KINDS = ("builtin", "checkpoint", "torchscript", "export", "factory", "timm")
#: the kinds whose input convention comes from the caller (not from a sidecar)
EXTERNAL = ("torchscript", "export", "factory", "timm")
_SUFFIXES = {".safetensors": "checkpoint", ".pt": "torchscript", ".ts": "torchscript"}
_SUFFIXES[".pt2"] = "export"
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
FORMS = (
    "'builtin', a tkmia checkpoint PATH.safetensors (with its .json sidecar), a TorchScript "
    "archive PATH.pt or PATH.ts, a torch.export archive PATH.pt2, or a Python factory "
    "package.module:function or path/to/file.py:function, or a timm model with local "
    "weights timm:<name>@PATH.safetensors (or a weights-only .pth)"
)

Stats = tuple[tuple[float, ...], tuple[float, ...]]


@dataclass(frozen=True)
class ModelSource:
    """A ``--model`` value, read by its form (nothing loaded yet).

    Attributes:
        text: the value as given.
        kind: one of :data:`KINDS`.
        name: a short name, for the results folder and the tables.
        path: the file (checkpoint, TorchScript, export; the factory's ``.py`` file).
        module, function: a factory's module (dotted name or ``.py`` path) and function.
    """

    text: str
    kind: str
    name: str
    path: Path | None = None
    module: str = ""
    function: str = ""

    @property
    def external(self) -> bool:
        """Whether the input convention comes from the caller, not from a sidecar."""
        return self.kind in EXTERNAL


def parse_source(text: str | Path) -> ModelSource:
    """Read a ``--model`` value by its form, and check that its file exists.

    Raises:
        MissingFileError: the file (or a factory's ``.py`` file) does not exist.
        InputError: the value has none of the forms of :data:`FORMS`.
    """
    text = str(text)
    if text == "builtin":
        return ModelSource(text, "builtin", "builtin")
    if text.startswith("timm:"):
        return _parse_timm(text)
    path = Path(text)
    kind = _SUFFIXES.get(path.suffix)
    if kind is not None:
        if not path.is_file():
            raise MissingFileError(f"model file {text!r} not found")
        return ModelSource(text, kind, path.stem, path=path)
    module, _, function = text.rpartition(":")
    if module and function.isidentifier() and (module.endswith(".py") or _DOTTED.fullmatch(module)):
        file = Path(module) if module.endswith(".py") else None
        if file is not None and not file.is_file():
            raise MissingFileError(f"model factory file {module!r} (in {text!r}) not found")
        name = f"{file.stem if file is not None else module}-{function}"
        return ModelSource(text, "factory", name, path=file, module=module, function=function)
    refused = " (pickled models are refused)" if path.suffix in (".pth", ".pkl", ".bin") else ""
    raise InputError(f"--model {text!r} is not a model{refused}; expected {FORMS}")


def _parse_timm(text: str) -> ModelSource:
    """``timm:<name>@PATH``: the architecture (checked later, when timm is imported) and
    its local weights file, which must exist."""
    arch, at, weights = text.partition("@")
    if not at or not weights or len(arch) <= len("timm:"):
        raise InputError(
            f"--model {text!r}: a timm model needs its local weights, "
            "timm:<name>@PATH.safetensors (or a weights-only .pth); nothing is downloaded "
            "(a model trained by tkmia train --arch timm:<name> is its best.safetensors)"
        )
    path = Path(weights)
    if not path.is_file():
        raise MissingFileError(f"weights file {weights!r} (in --model {text!r}) not found")
    return ModelSource(text, "timm", f"{arch[len('timm:') :]}-{path.stem}", path, module=arch)


def parse_normalize(text: str | None) -> Stats | None:
    """``--normalize``: ``none`` (or None) → None; ``imagenet`` → ImageNet's statistics;
    ``MEAN,STD`` → one mean and one std for all three channels; six numbers → three means
    then three stds.

    Raises:
        InputError: anything else, or a std that is not a positive finite number.
    """
    if text is None or text.strip().lower() == "none":
        return None
    if text.strip().lower() == "imagenet":
        return tuple(IMAGENET_MEAN), tuple(IMAGENET_STD)
    expected = "imagenet, none, MEAN,STD or 3 means and 3 stds (6 numbers)"
    try:
        numbers = [float(item) for item in text.split(",")]
    except ValueError:
        raise InputError(f"--normalize must be {expected}, got {text!r}") from None
    if len(numbers) not in (2, 6) or not all(math.isfinite(v) for v in numbers):
        raise InputError(f"--normalize must be {expected} (finite numbers), got {text!r}")
    half = len(numbers) // 2
    mean, std = numbers[:half] * (3 // half), numbers[half:] * (3 // half)
    if min(std) <= 0:
        raise InputError(f"--normalize: every std must be > 0, got {text!r}")
    return tuple(mean), tuple(std)


def read_classes(path: str | Path) -> list[str]:
    """The label names of ``--classes FILE``: one per line, blank lines skipped.

    Raises:
        MissingFileError: no such file.
        InputError: fewer than 2 names, or a name given twice.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"--classes file {str(path)!r} not found")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read --classes file {str(path)!r}: {err}") from None
    names = [line.strip() for line in lines if line.strip()]
    twice = sorted({name for name in names if names.count(name) > 1})
    if len(names) < 2 or twice:
        why = f"{twice} appear more than once" if twice else f"it names {len(names)}"
        raise InputError(
            f"--classes file {str(path)!r} must name at least 2 distinct classes, one per "
            f"line; {why}"
        )
    return names


def align_classes(
    model_classes: Sequence[str], classes: Sequence[str], where: str
) -> list[int] | None:
    """The column of the model's output for each of the dataset's ``classes``.

    Returns:
        None when the model's classes are the dataset's in its order, else the order that
        :class:`~tkmia.models.outputs.Logits` applies.

    Raises:
        InputError: the two lists do not hold the same names.
    """
    if list(model_classes) == list(classes):
        return None
    missing = [name for name in classes if name not in model_classes]
    extra = [name for name in model_classes if name not in classes]
    if missing or extra or len(model_classes) != len(classes):
        raise InputError(
            f"the classes of {where} are not the dataset's: the model lacks {missing[:5]} "
            f"and has {extra[:5]} besides ({len(model_classes)} vs {len(classes)} classes)"
        )
    return [list(model_classes).index(name) for name in classes]


@dataclass(frozen=True)
class ModelInfo:
    """What tkmia understood of a model (``tkmia inspect`` prints it).

    Attributes:
        source: the parsed ``--model``.
        classes: the label names the model outputs, in order (None: the dataset's).
        image_size: the input side it expects (None: the dataset's).
        normalize: ``(mean, std)`` applied before the model (None: pixels in [0, 1]).
        channels: colour channels of its input.
    """

    source: ModelSource
    classes: list[str] | None
    image_size: int | None
    normalize: Stats | None
    channels: int = 3


def check_convention(
    source: ModelSource, normalize: str | None, classes: str | Path | None
) -> None:
    """Check ``normalize`` and a ``classes`` file for ``source`` (nothing is loaded).

    Raises:
        InputError, MissingFileError: either given for a checkpoint or the built-in model
            (they bring their own, in the sidecar), a bad ``normalize``, or a bad file.
    """
    given = [flag for flag, v in (("--normalize", normalize), ("--classes", classes)) if v]
    if given and not source.external:
        raise InputError(
            f"{' and '.join(given)} {'is' if len(given) == 1 else 'are'} only for "
            "TorchScript, torch.export, factory and timm models; "
            f"the {source.kind} model {source.text!r} brings its own (in its sidecar)"
        )
    parse_normalize(normalize)
    if classes is not None:
        read_classes(classes)


def _load_external(source: ModelSource) -> nn.Module:
    from tkmia.models.external import call_factory, load_exported, load_torchscript

    assert source.path is not None or source.kind == "factory"
    if source.kind == "timm" and source.path is not None:
        from tkmia.models.registry import load_timm_weights

        return load_timm_weights(source.module, source.path)
    if source.kind == "torchscript" and source.path is not None:
        return load_torchscript(source.path)
    if source.kind == "export" and source.path is not None:
        return load_exported(source.path)
    return call_factory(source.text, source.module, source.function)


def open_model(
    source: str | Path | ModelSource,
    device: str | torch.device = "cpu",
    *,
    normalize: str | None = None,
    classes: str | Path | None = None,
    image_size: int | None = None,
    num_classes: int | None = None,
) -> tuple[nn.Module, ModelInfo]:
    """Load any model of :data:`FORMS`, in eval mode on ``device``: images ``(B, 3, S, S)``
    in [0, 1] in, logits ``(B, c)`` out (for the outside kinds, once their output is
    checked with :func:`~tkmia.models.outputs.check_output`).

    Args:
        source: the ``--model`` value (or its :func:`parse_source`).
        device: where to put the model.
        normalize: outside kinds: ``--normalize`` (see :func:`parse_normalize`).
        classes: outside kinds: a ``--classes`` file, the label names it outputs.
        image_size: outside kinds: the input side it expects (kept in the info).
        num_classes: checkpoints: the dataset's class count (another is refused).

    Raises:
        MissingFileError, InputError: see :func:`parse_source` and the loaders; also
            ``normalize`` or ``classes`` for a checkpoint or the built-in model.
    """
    from tkmia.models.builtin import builtin_checkpoint_path, builtin_model
    from tkmia.models.registry import load_model

    src = source if isinstance(source, ModelSource) else parse_source(source)
    check_convention(src, normalize, classes)
    if not src.external:
        if src.kind == "builtin":
            model: nn.Module = builtin_model(device)
            meta = read_meta(builtin_checkpoint_path())
        else:
            assert src.path is not None
            model, meta = load_model(src.path, device, num_classes=num_classes)
        stats = (tuple(meta["mean"]), tuple(meta["std"]))
        info = ModelInfo(src, list(meta["classes"]), int(meta["image_size"]), stats)
        return model, info
    given = parse_normalize(normalize)
    if src.kind == "timm" and normalize is None:
        given = _timm_stats(src.module)
    names = None if classes is None else read_classes(classes)
    net = Logits(_load_external(src))
    model = net if given is None else Normalized(net, *given)
    info = ModelInfo(src, names, image_size, given)
    return model.to(device).eval(), info


def _timm_stats(arch: str) -> Stats:
    """What a timm model expects when ``--normalize`` is not given: its ``pretrained_cfg``'s
    statistics, ImageNet's when it names none (as ``tkmia train --arch timm:`` records)."""
    from tkmia.models.timm_nets import input_stats

    stats = input_stats(arch) or (list(IMAGENET_MEAN), list(IMAGENET_STD))
    return tuple(stats[0]), tuple(stats[1])


def fit_model(
    model: nn.Module,
    info: ModelInfo,
    classes: list[str],
    image_size: int,
    device: str | torch.device = "cpu",
    dataset: str = "the dataset",
) -> nn.Module:
    """The model of :func:`open_model` checked against a dataset, before any attack.

    A checkpoint's sidecar must name the dataset's ``classes``; an outside model's
    ``--classes`` must name them (in any order: its output is then put in the dataset's
    order), and one dummy batch ``(2, 3, image_size, image_size)`` must give ``(2, c)``
    scores (:func:`~tkmia.models.outputs.check_output`).

    Returns:
        The model to attack (the outside kinds' possibly reordered).

    Raises:
        InputError: other classes, or an output that is not ``(B, c)`` logits.
    """
    name = f"model {info.source.text!r}"
    trained = info.classes
    if not info.source.external:
        if trained is not None and list(trained) != list(classes):
            raise InputError(
                f"checkpoint {info.source.text!r} was trained on {len(trained)} other "
                f"classes than the {len(classes)} of {dataset!r} ({trained[:3]}... vs "
                f"{classes[:3]}...)"
            )
        return model
    if info.classes is not None:
        order = align_classes(info.classes, classes, f"{name} (--classes)")
        if order is not None:
            model = Logits(model, order).eval()
    check_output(model, len(classes), image_size, device=device, name=name)
    return model
