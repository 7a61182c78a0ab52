"""Pieces shared by the loaders of image datasets on disk (VOC, COCO, NUS-WIDE, folders).

:class:`ImageLabels` holds the class names, one image path per sample and the ``(N, c)``
0/1 label matrix; images are read lazily with PIL when indexed. Images that end up with
no label are dropped when the dataset is built; the count is kept in ``dropped`` and
reported with :func:`warnings.warn` (category :class:`NoLabelWarning`, a
:class:`UserWarning`), never with logging, so that callers can filter or record it.

Errors: a missing root, annotation file or image folder raises
:class:`~tkmia.errors.MissingFileError` naming the exact expected path; an image that is
missing or not a valid image raises :class:`~tkmia.errors.BadImageError` naming the file
when it is read; a bad split or image size raises :class:`~tkmia.errors.InputError`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from tkmia.errors import BadImageError, InputError, MissingFileError

#: where docs/datasets.md explains every layout.
LAYOUT_HINT = "see docs/datasets.md"

_BILINEAR = getattr(Image, "Resampling", Image).BILINEAR


class LabelledDataset(Protocol):
    """What tkmia reads from a dataset: ``len``, ``ds[i] -> (image (C, H, W) in [0, 1],
    labels (c,) 0/1)`` and the ``c`` class names."""

    @property
    def classes(self) -> Sequence[str]: ...

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]: ...


class NoLabelWarning(UserWarning):
    """Images were dropped because they have no label."""


def check_image_size(image_size: object) -> int:
    """``image_size`` as an int, or :class:`InputError` unless it is a positive integer."""
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)):
        raise InputError(f"image_size must be a positive integer, got {image_size!r}")
    if image_size < 1:
        raise InputError(f"image_size must be a positive integer, got {image_size!r}")
    return int(image_size)


def check_split(split: object, valid: Sequence[str], dataset: str) -> str:
    """``split`` if it is one of ``valid``, else :class:`InputError` listing them."""
    if not isinstance(split, str) or split not in valid:
        raise InputError(f"unknown split {split!r} for {dataset}; expected one of {list(valid)}")
    return split


def check_root(root: str | Path, dataset: str, layout: str) -> Path:
    """``root`` as a Path, or :class:`MissingFileError` if it is not an existing folder."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise MissingFileError(
            f"{dataset} root folder {str(path)!r} does not exist (or is not a folder); "
            f"expected it to hold {layout}; {LAYOUT_HINT}"
        )
    return path


def require(path: Path, what: str, layout: str, *, folder: bool = False) -> Path:
    """``path`` if it exists (as a folder when ``folder``), else :class:`MissingFileError`.

    The message names the exact expected path, what it is and the layout it belongs to.
    """
    ok = path.is_dir() if folder else path.is_file()
    if not ok:
        kind = "folder" if folder else "file"
        raise MissingFileError(
            f"{what} not found: expected the {kind} {str(path)!r} ({layout}); {LAYOUT_HINT}"
        )
    return path


def read_text(path: Path) -> str:
    """The text of ``path`` (UTF-8, a BOM removed), or :class:`InputError` if unreadable."""
    try:
        return path.read_text(encoding="utf-8-sig", errors="replace")
    except OSError as err:
        raise InputError(f"cannot read {str(path)!r}: {err}") from None


def text_lines(path: Path) -> list[str]:
    """The non-empty lines of a text file, stripped (CRLF and LF line ends alike)."""
    return [line.strip() for line in read_text(path).splitlines() if line.strip()]


def load_image(path: Path, image_size: int) -> torch.Tensor:
    """Read ``path`` as RGB, resize to ``(S, S)`` (bilinear, antialiased by PIL).

    Returns:
        ``(3, S, S)`` float32 in ``[0, 1]``.

    Raises:
        BadImageError: the file is missing, unreadable or not an image PIL can decode.
    """
    fix = (
        "check that the file exists and is a complete image (re-extract or re-download the "
        "dataset, or remove the image from its list)"
    )
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if img.size != (image_size, image_size):
                img = img.resize((image_size, image_size), _BILINEAR)
            array = np.array(img, dtype=np.uint8)
    except FileNotFoundError:
        raise BadImageError(f"image file {str(path)!r} not found; {fix}") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise BadImageError(f"cannot read image {str(path)!r} ({err}); {fix}") from None
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)


class ImageLabels(Dataset):
    """Images on disk with multi-label targets: ``(image (3, S, S), labels (c,))``.

    Images are read lazily (see :func:`load_image`); labels are all held in memory.

    Attributes:
        classes: the ``c`` class names, in label-vector order.
        paths: one image path per sample, ``N`` in all.
        labels: ``(N, c)`` float32 0/1, every sample's labels (no image is read).
        image_size: ``S``, the side of the square images returned.
        dropped: how many images were dropped for having no label.
        root: the dataset's root folder; ``split``: the split (``None`` for a folder).
    """

    #: shown in messages, e.g. "VOC 2012".
    dataset_name = "dataset"

    def __init__(
        self,
        classes: Sequence[str],
        paths: Sequence[Path],
        labels: np.ndarray | torch.Tensor,
        image_size: int,
        *,
        root: Path,
        split: str | None = None,
    ) -> None:
        """Keep the samples of ``paths`` whose row of ``labels`` ``(N0, c)`` has a 1.

        Rows without any label are dropped (counted in ``dropped``, with a
        :class:`NoLabelWarning`).
        """
        self.image_size = check_image_size(image_size)
        self.classes = [str(name) for name in classes]
        self.root = root
        self.split = split
        matrix = torch.as_tensor(np.asarray(labels, dtype=np.float32)).reshape(
            len(paths), len(self.classes)
        )
        keep = matrix.sum(dim=1) > 0
        self.dropped = int((~keep).sum())
        keep_list = keep.tolist()
        self.paths = [Path(p) for p, k in zip(paths, keep_list, strict=True) if k]
        self.labels = matrix[keep].contiguous()
        where = f" ({split})" if split else ""
        if self.dropped:
            warnings.warn(
                f"{self.dataset_name}{where}: dropped {self.dropped} of {len(paths)} images "
                f"that have no label; {len(self.paths)} remain",
                NoLabelWarning,
                stacklevel=3,
            )
        if not self.paths:
            raise InputError(
                f"{self.dataset_name}{where} under {str(root)!r} has no labelled image "
                f"({len(paths)} listed, all without a label)"
            )

    @property
    def samples(self) -> list[tuple[Path, torch.Tensor]]:
        """``(image path, labels (c,))`` for every sample."""
        return list(zip(self.paths, self.labels, strict=True))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image (3, S, S) float32 in [0, 1], labels (c,) float32 0/1)``."""
        return load_image(self.paths[index], self.image_size), self.labels[index]

    def __repr__(self) -> str:
        where = f", split={self.split!r}" if self.split else ""
        return (
            f"{type(self).__name__}(root={str(self.root)!r}{where}, images={len(self)}, "
            f"classes={len(self.classes)}, image_size={self.image_size}, "
            f"dropped={self.dropped})"
        )
