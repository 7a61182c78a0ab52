r"""NUS-WIDE (the 81 ground-truth concepts of the official release).

Layout (the official files extracted under ``root``)::

    root/
        Concepts81.txt                     one concept name per line
        ImageList/TrainImagelist.txt       one image per line, e.g. actor\0002_174174086.jpg
        ImageList/TestImagelist.txt
        Groundtruth/TrainTestLabels/Labels_<concept>_Train.txt   one 0/1 per line
        Groundtruth/TrainTestLabels/Labels_<concept>_Test.txt
        Flickr/actor/0002_174174086.jpg    the images, under the paths of the image lists

Image-list paths are Windows-style (backslashes) and relative to ``Flickr/``; a path
that names a ``Flickr`` folder itself (``C:\ImageData\Flickr\actor\...``) is taken from
after it. Line ends may be CRLF. The label file of concept ``j`` has one ``0``/``1`` per
line, aligned with the image list; its length must match the list's. ``classes`` are the
concepts in the order of ``Concepts81.txt`` (:data:`NUSWIDE_CONCEPTS`, alphabetical, for
the official file). Images tagged with none of the concepts are dropped, as in the
reference code.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np

from tkmia.data.common import (
    ImageLabels,
    check_image_size,
    check_root,
    check_split,
    read_text,
    require,
    text_lines,
)
from tkmia.errors import InputError

#: the 81 concepts of the official ``Concepts81.txt``, in its (alphabetical) order.
NUSWIDE_CONCEPTS = [
    "airport", "animal", "beach", "bear", "birds", "boats", "book", "bridge", "buildings",
    "cars", "castle", "cat", "cityscape", "clouds", "computer", "coral", "cow", "dancing",
    "dog", "earthquake", "elk", "fire", "fish", "flags", "flowers", "food", "fox", "frost",
    "garden", "glacier", "grass", "harbor", "horses", "house", "lake", "leaf", "map",
    "military", "moon", "mountain", "nighttime", "ocean", "person", "plane", "plants",
    "police", "protest", "railroad", "rainbow", "reflection", "road", "rocks", "running",
    "sand", "sign", "sky", "snow", "soccer", "sports", "statue", "street", "sun", "sunset",
    "surf", "swimmers", "tattoo", "temple", "tiger", "tower", "town", "toys", "train", "tree",
    "valley", "vehicle", "water", "waterfall", "wedding", "whales", "window", "zebra",
]  # fmt: skip
SPLITS = ("train", "test")
LAYOUT = (
    "Concepts81.txt, ImageList/{Train,Test}Imagelist.txt, "
    "Groundtruth/TrainTestLabels/Labels_<concept>_{Train,Test}.txt, Flickr/<image paths>"
)


def image_relpath(line: str) -> PurePosixPath:
    r"""The path under ``Flickr/`` of an image-list line such as ``actor\0002_1.jpg``."""
    parts = [p for p in line.strip().replace("\\", "/").split("/") if p and p != "."]
    if parts and parts[0].endswith(":"):  # a drive letter, C:
        parts = parts[1:]
    lowered = [p.lower() for p in parts]
    if "flickr" in lowered:
        parts = parts[len(lowered) - lowered[::-1].index("flickr") :]
    return PurePosixPath(*parts)


def read_label_file(path: Path, n: int) -> np.ndarray:
    """The ``(n,)`` 0/1 column of one ``Labels_<concept>_<Split>.txt`` file."""
    tokens = read_text(path).split()
    if len(tokens) != n:
        raise InputError(
            f"NUS-WIDE label file {str(path)!r} has {len(tokens)} lines, but the image list "
            f"has {n}; each label file must have one 0/1 per image of the list"
        )
    column = np.array(tokens)
    bad = ~np.isin(column, ["0", "1"])
    if bad.any():
        line = int(np.argmax(bad)) + 1
        raise InputError(
            f"NUS-WIDE label file {str(path)!r} line {line} is {tokens[line - 1]!r}; "
            "expected 0 or 1"
        )
    return (column == "1").astype(np.float32)


class NUSWIDE(ImageLabels):
    """NUS-WIDE: ``(image (3, S, S) float32 in [0, 1], labels (81,) float32 0/1)``.

    Args:
        root: the folder of the official release (see the module docstring).
        split: ``"train"`` or ``"test"``.
        image_size: ``S``; images are resized to ``S × S`` (the paper uses 224).

    Attributes: see :class:`~tkmia.data.common.ImageLabels`.
    """

    dataset_name = "NUS-WIDE"

    def __init__(self, root: str | Path, split: str = "train", image_size: int = 224) -> None:
        size = check_image_size(image_size)
        check_split(split, SPLITS, "NUS-WIDE")
        base = check_root(root, "NUS-WIDE", LAYOUT)
        layout = f"NUS-WIDE layout {LAYOUT}"
        tag = split.capitalize()
        concepts_file = require(base / "Concepts81.txt", "NUS-WIDE concept list", layout)
        list_file = require(
            base / "ImageList" / f"{tag}Imagelist.txt", "NUS-WIDE image list", layout
        )
        label_dir = require(
            base / "Groundtruth" / "TrainTestLabels", "NUS-WIDE labels", layout, folder=True
        )
        img_dir = require(base / "Flickr", "NUS-WIDE images", layout, folder=True)
        concepts = text_lines(concepts_file)
        if not concepts:
            raise InputError(f"NUS-WIDE concept list {str(concepts_file)!r} is empty")
        if len(set(concepts)) != len(concepts):
            raise InputError(f"NUS-WIDE concept list {str(concepts_file)!r} repeats a concept")
        rel = [image_relpath(line) for line in text_lines(list_file)]
        labels = np.zeros((len(rel), len(concepts)), dtype=np.float32)
        for j, concept in enumerate(concepts):
            path = require(
                label_dir / f"Labels_{concept}_{tag}.txt", f"labels of concept {concept!r}", layout
            )
            labels[:, j] = read_label_file(path, len(rel))
        paths = [img_dir.joinpath(*p.parts) for p in rel]
        super().__init__(concepts, paths, labels, size, root=base, split=split)
