"""MS-COCO 2014 (classification labels from the instance annotations).

Layout (the official ``train2014.zip``, ``val2014.zip`` and
``annotations_trainval2014.zip`` extracted under ``root``)::

    root/
        annotations/instances_{train,val}2014.json
        train2014/COCO_train2014_<id>.jpg
        val2014/COCO_val2014_<id>.jpg

Labels: the categories of the JSON (80 for the official files) mapped to ``0 .. c-1`` in
ascending category id (COCO ids are not contiguous: 1 .. 90 with gaps); ``classes`` are
their names in that order, read from the JSON. A category is present when the image has
at least one annotation of it. Images without annotations are dropped, as in the
reference code. :data:`COCO_CLASSES` holds the 80 official names in ascending-id order
(used to check the built-in label groups; the loader always reads the names from the
JSON).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tkmia.data.common import ImageLabels, check_image_size, check_root, check_split, require
from tkmia.errors import InputError

#: the 80 official COCO 2014 category names, in ascending category id.
COCO_CLASSES = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush",
]  # fmt: skip
#: the official category ids of :data:`COCO_CLASSES` (1 .. 90 without 10 unused ids).
COCO_IDS = [i for i in range(1, 91) if i not in {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}]
SPLITS = ("train", "val")
LAYOUT = "annotations/instances_{train,val}2014.json and {train,val}2014/<file_name>"


def _load_json(path: Path) -> dict:
    try:
        with path.open("r", encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise InputError(f"COCO annotation file {str(path)!r} is not valid JSON: {err}") from None
    except OSError as err:
        raise InputError(f"cannot read COCO annotation file {str(path)!r}: {err}") from None
    if not isinstance(data, dict) or not all(
        isinstance(data.get(key), list) for key in ("images", "annotations", "categories")
    ):
        raise InputError(
            f"COCO annotation file {str(path)!r} must be an object with the lists 'images', "
            "'annotations' and 'categories' (an instances_*.json file)"
        )
    return data


class COCO2014(ImageLabels):
    """MS-COCO 2014: ``(image (3, S, S) float32 in [0, 1], labels (80,) float32 0/1)``.

    Args:
        root: the folder holding ``annotations/`` and ``{train,val}2014/``.
        split: ``"train"`` or ``"val"``.
        image_size: ``S``; images are resized to ``S × S`` (the paper uses 448).

    Attributes: see :class:`~tkmia.data.common.ImageLabels`; also ``category_ids``, the
    COCO category id of each class.
    """

    dataset_name = "COCO 2014"

    def __init__(self, root: str | Path, split: str = "train", image_size: int = 448) -> None:
        size = check_image_size(image_size)
        check_split(split, SPLITS, "COCO 2014")
        base = check_root(root, "COCO 2014", LAYOUT)
        layout = f"COCO 2014 layout {LAYOUT}"
        ann_file = require(
            base / "annotations" / f"instances_{split}2014.json", "COCO annotations", layout
        )
        img_dir = require(base / f"{split}2014", "COCO images", layout, folder=True)
        data = _load_json(ann_file)
        try:
            categories = sorted(
                ((int(c["id"]), str(c["name"])) for c in data["categories"]),
                key=lambda pair: pair[0],
            )
            images = [(int(im["id"]), str(im["file_name"])) for im in data["images"]]
            pairs = [(int(a["image_id"]), int(a["category_id"])) for a in data["annotations"]]
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(
                f"COCO annotation file {str(ann_file)!r} has a malformed entry ({err!r}); "
                "expected categories with 'id' and 'name', images with 'id' and 'file_name', "
                "annotations with 'image_id' and 'category_id'"
            ) from None
        if not categories:
            raise InputError(f"COCO annotation file {str(ann_file)!r} lists no categories")
        self.category_ids = [cid for cid, _ in categories]
        column = {cid: j for j, cid in enumerate(self.category_ids)}
        row = {image_id: i for i, (image_id, _) in enumerate(images)}
        labels = np.zeros((len(images), len(categories)), dtype=np.float32)
        for image_id, category_id in pairs:
            if category_id not in column:
                raise InputError(
                    f"COCO annotation file {str(ann_file)!r} has an annotation of category "
                    f"id {category_id}, which is not in its 'categories'"
                )
            if image_id not in row:
                raise InputError(
                    f"COCO annotation file {str(ann_file)!r} has an annotation of image id "
                    f"{image_id}, which is not in its 'images'"
                )
            labels[row[image_id], column[category_id]] = 1.0
        paths = [img_dir / file_name for _, file_name in images]
        names = [name for _, name in categories]
        super().__init__(names, paths, labels, size, root=base, split=split)
