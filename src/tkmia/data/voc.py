"""PASCAL VOC 2012 (classification labels from the detection annotations).

Layout (the official ``VOCtrainval_11-May-2012.tar`` extracted under ``root``)::

    root/VOCdevkit/VOC2012/
        Annotations/<id>.xml
        ImageSets/Main/{train,val,trainval}.txt
        JPEGImages/<id>.jpg

``root`` may also be the ``VOCdevkit`` folder or the ``VOC2012`` folder itself.

Labels: the 20 classes in alphabetical order (:data:`VOC_CLASSES`); a class is present
when the image's XML has an ``<object>`` of that name not marked
``<difficult>1</difficult>`` (several objects of one class give one label). Images whose
objects are all difficult have no label and are dropped, as in the reference code.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from tkmia.data.common import (
    ImageLabels,
    check_image_size,
    check_root,
    check_split,
    require,
    text_lines,
)
from tkmia.errors import InputError

VOC_CLASSES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
]  # fmt: skip
SPLITS = ("train", "val", "trainval")
LAYOUT = "VOCdevkit/VOC2012/{Annotations,JPEGImages,ImageSets/Main/{train,val}.txt}"


def find_voc_dir(root: Path) -> Path:
    """The ``VOC2012`` folder: ``root/VOCdevkit/VOC2012``, ``root/VOC2012`` or ``root``."""
    for candidate in (root / "VOCdevkit" / "VOC2012", root / "VOC2012", root):
        if (candidate / "Annotations").is_dir() or (candidate / "ImageSets").is_dir():
            return candidate
    return root / "VOCdevkit" / "VOC2012"


def parse_annotation(path: Path) -> set[str]:
    """The class names of the non-difficult objects in one VOC XML file."""
    try:
        tree = ET.parse(path)
    except ET.ParseError as err:
        raise InputError(f"VOC annotation {str(path)!r} is not valid XML: {err}") from None
    except OSError as err:
        raise InputError(f"cannot read VOC annotation {str(path)!r}: {err}") from None
    names = set()
    for obj in tree.getroot().iter("object"):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise InputError(f"VOC annotation {str(path)!r} has an <object> without a <name>")
        if (obj.findtext("difficult") or "0").strip() == "1":
            continue
        if name not in VOC_CLASSES:
            raise InputError(
                f"VOC annotation {str(path)!r} has an object named {name!r}, not one of the "
                f"20 VOC classes {VOC_CLASSES}"
            )
        names.add(name)
    return names


class VOC2012(ImageLabels):
    """PASCAL VOC 2012: ``(image (3, S, S) float32 in [0, 1], labels (20,) float32 0/1)``.

    Args:
        root: the folder holding ``VOCdevkit/VOC2012`` (see the module docstring).
        split: ``"train"``, ``"val"`` or ``"trainval"`` (``ImageSets/Main/<split>.txt``).
        image_size: ``S``; images are resized to ``S × S`` (the paper uses 300).

    Attributes: see :class:`~tkmia.data.common.ImageLabels` (``labels`` is ``(N, 20)``).
    """

    dataset_name = "VOC 2012"

    def __init__(self, root: str | Path, split: str = "train", image_size: int = 300) -> None:
        size = check_image_size(image_size)
        check_split(split, SPLITS, "VOC 2012")
        base = check_root(root, "VOC 2012", LAYOUT)
        voc = find_voc_dir(base)
        layout = f"VOC 2012 layout {LAYOUT}"
        list_file = require(voc / "ImageSets" / "Main" / f"{split}.txt", "VOC split list", layout)
        ann_dir = require(voc / "Annotations", "VOC annotations", layout, folder=True)
        img_dir = require(voc / "JPEGImages", "VOC images", layout, folder=True)
        ids = [line.split()[0] for line in text_lines(list_file)]
        index = {name: i for i, name in enumerate(VOC_CLASSES)}
        labels = np.zeros((len(ids), len(VOC_CLASSES)), dtype=np.float32)
        for row, image_id in enumerate(ids):
            xml = require(ann_dir / f"{image_id}.xml", f"annotation of image {image_id!r}", layout)
            for name in parse_annotation(xml):
                labels[row, index[name]] = 1.0
        paths = [img_dir / f"{image_id}.jpg" for image_id in ids]
        super().__init__(VOC_CLASSES, paths, labels, size, root=base, split=split)
