"""Open a dataset by name, as the command line names them."""

from __future__ import annotations

from pathlib import Path

from tkmia.data.common import LabelledDataset
from tkmia.errors import InputError

DATASETS = ("digits", "voc2012", "coco2014", "nuswide", "folder")
#: the split attacked by `tkmia run` and used as the test split by `tkmia train`.
EVAL_SPLIT = {"digits": "test", "voc2012": "val", "coco2014": "val", "nuswide": "test"}
TRAIN_SPLIT = {"digits": "train", "voc2012": "train", "coco2014": "train", "nuswide": "train"}
DEFAULT_IMAGE_SIZE = {"voc2012": 300, "coco2014": 448, "nuswide": 224, "folder": 224}


def open_dataset(
    name: str,
    split: str,
    root: str | Path | None = None,
    image_size: int | None = None,
    csv: str | Path | None = None,
    seed: int = 0,
) -> LabelledDataset:
    """The dataset ``name`` (one of :data:`DATASETS`) for ``split``.

    ``root`` is required for every dataset but the built-in ``digits``; ``csv`` is the
    label file of a ``folder`` dataset (whose ``split`` is ignored).
    """
    if name not in DATASETS:
        raise InputError(f"unknown dataset {name!r}; expected one of {list(DATASETS)}")
    if name == "digits":
        from tkmia.data.digits import Digits

        return Digits(split=split, seed=seed)
    if root is None:
        raise InputError(f"dataset {name!r} needs --root, the folder that holds its files")
    size = image_size or DEFAULT_IMAGE_SIZE[name]
    if name == "folder":
        from tkmia.data.folder import LabelFolder

        if csv is None:
            raise InputError("dataset 'folder' needs --csv, the label file of the images")
        return LabelFolder(root, csv, image_size=size)
    if name == "voc2012":
        from tkmia.data.voc import VOC2012

        return VOC2012(root, split=split, image_size=size)
    if name == "coco2014":
        from tkmia.data.coco import COCO2014

        return COCO2014(root, split=split, image_size=size)
    from tkmia.data.nuswide import NUSWIDE

    return NUSWIDE(root, split=split, image_size=size)
