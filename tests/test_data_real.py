"""Loaders of VOC 2012, COCO 2014, NUS-WIDE and label folders on tiny fixtures in the
official layouts, and the S1 label groups."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tkmia.data import factory
from tkmia.data.coco import COCO2014, COCO_CLASSES, COCO_IDS
from tkmia.data.common import NoLabelWarning
from tkmia.data.folder import LabelFolder
from tkmia.data.groups import GROUPS, resolve_group
from tkmia.data.nuswide import NUSWIDE, NUSWIDE_CONCEPTS, image_relpath
from tkmia.data.voc import VOC2012, VOC_CLASSES
from tkmia.errors import BadImageError, InputError, MissingFileError

DIGITS_CLASSES = [f"{colour}_{d}" for colour in ("red", "blue") for d in range(10)]


def _image(path: Path, seed: int, size: tuple[int, int] = (12, 10)) -> None:
    """A tiny random RGB image (width, height) at ``path`` (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def _vec(classes: list[str], *names: str) -> list[float]:
    return [1.0 if c in names else 0.0 for c in classes]


# ----------------------------------------------------------------------------- VOC


def _voc_xml(objects: list[tuple[str, int | None]]) -> str:
    parts = []
    for name, difficult in objects:
        diff = "" if difficult is None else f"<difficult>{difficult}</difficult>"
        parts.append(f"<object><name>{name}</name><pose>Left</pose>{diff}</object>")
    return f"<annotation><folder>VOC2012</folder>{''.join(parts)}</annotation>"


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    images = {
        # several dogs and a difficult cat: dog only
        "2008_000001": [("dog", 0), ("dog", 0), ("cat", 1)],
        # only a difficult object: dropped
        "2008_000002": [("bottle", 1)],
        # no <difficult> tag counts as not difficult
        "2008_000003": [("person", None), ("tvmonitor", 0), ("aeroplane", 0)],
        "2008_000004": [("sheep", 0)],
    }
    (voc / "Annotations").mkdir(parents=True)
    for i, (image_id, objects) in enumerate(images.items()):
        (voc / "Annotations" / f"{image_id}.xml").write_text(_voc_xml(objects))
        _image(voc / "JPEGImages" / f"{image_id}.jpg", i)
    main = voc / "ImageSets" / "Main"
    main.mkdir(parents=True)
    (main / "train.txt").write_text("2008_000001\n2008_000002\n2008_000003\n")
    (main / "val.txt").write_text("2008_000004\n")
    return tmp_path


def test_voc_labels_and_images(voc_root: Path) -> None:
    with pytest.warns(NoLabelWarning, match="dropped 1 of 3"):
        ds = VOC2012(voc_root, split="train", image_size=8)
    assert ds.classes == VOC_CLASSES
    assert VOC_CLASSES == sorted(VOC_CLASSES) and len(VOC_CLASSES) == 20
    assert len(ds) == 2 and ds.dropped == 1
    assert ds.labels.shape == (2, 20) and ds.labels.dtype == torch.float32
    assert ds.labels[0].tolist() == _vec(VOC_CLASSES, "dog")
    assert ds.labels[1].tolist() == _vec(VOC_CLASSES, "aeroplane", "person", "tvmonitor")
    image, labels = ds[1]
    assert image.shape == (3, 8, 8) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0 and image.max() > 0.0
    assert torch.equal(labels, ds.labels[1])
    assert [p.name for p in ds.paths] == ["2008_000001.jpg", "2008_000003.jpg"]


def test_voc_val_and_other_roots(voc_root: Path) -> None:
    ds = VOC2012(voc_root, split="val", image_size=8)
    assert len(ds) == 1 and ds.dropped == 0
    # root may also be the VOCdevkit or VOC2012 folder
    for root in (voc_root / "VOCdevkit", voc_root / "VOCdevkit" / "VOC2012"):
        assert len(VOC2012(root, split="val", image_size=8)) == 1


def test_voc_missing_files(voc_root: Path, tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match="does_not_exist"):
        VOC2012(tmp_path / "does_not_exist", split="val")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MissingFileError, match="VOCdevkit/VOC2012/ImageSets/Main/val.txt"):
        VOC2012(empty, split="val")
    voc = voc_root / "VOCdevkit" / "VOC2012"
    (voc / "Annotations" / "2008_000004.xml").unlink()
    with pytest.raises(MissingFileError, match="2008_000004.xml"):
        VOC2012(voc_root, split="val")


def test_voc_bad_split_and_size(voc_root: Path) -> None:
    with pytest.raises(InputError, match="'train', 'val'"):
        VOC2012(voc_root, split="test")
    for size in (0, -3, 2.5, True, "8"):
        with pytest.raises(InputError, match="image_size"):
            VOC2012(voc_root, split="val", image_size=size)  # type: ignore[arg-type]


def test_voc_bad_xml_and_unknown_class(voc_root: Path) -> None:
    xml = voc_root / "VOCdevkit" / "VOC2012" / "Annotations" / "2008_000004.xml"
    xml.write_text("<annotation><object>")
    with pytest.raises(InputError, match="2008_000004.xml"):
        VOC2012(voc_root, split="val")
    xml.write_text(_voc_xml([("unicorn", 0)]))
    with pytest.raises(InputError, match="unicorn"):
        VOC2012(voc_root, split="val")


def test_corrupt_and_missing_image(voc_root: Path) -> None:
    images = voc_root / "VOCdevkit" / "VOC2012" / "JPEGImages"
    (images / "2008_000004.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    ds = VOC2012(voc_root, split="val", image_size=8)
    with pytest.raises(BadImageError, match="2008_000004.jpg"):
        ds[0]
    (images / "2008_000004.jpg").unlink()
    with pytest.raises(BadImageError, match="2008_000004.jpg.*not found"):
        ds[0]


# ----------------------------------------------------------------------------- COCO


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    categories = [
        {"id": i, "name": n, "supercategory": "x"}
        for i, n in zip(COCO_IDS, COCO_CLASSES, strict=True)
    ]
    categories = categories[::-1]  # the loader must sort by id, not trust the file order
    images = [
        {"id": 42, "file_name": "COCO_val2014_000000000042.jpg", "width": 12, "height": 10},
        {"id": 7, "file_name": "COCO_val2014_000000000007.png", "width": 12, "height": 10},
        {"id": 9, "file_name": "COCO_val2014_000000000009.jpg", "width": 12, "height": 10},
    ]
    annotations = [
        {"id": 1, "image_id": 42, "category_id": 1, "iscrowd": 0},  # person
        {"id": 2, "image_id": 42, "category_id": 90, "iscrowd": 0},  # toothbrush
        {"id": 3, "image_id": 42, "category_id": 1, "iscrowd": 1},
        {"id": 4, "image_id": 7, "category_id": 3, "iscrowd": 0},  # car
        {"id": 5, "image_id": 7, "category_id": 67, "iscrowd": 0},  # dining table
    ]  # image 9 has none: dropped
    (tmp_path / "annotations").mkdir()
    data = {"images": images, "annotations": annotations, "categories": categories}
    (tmp_path / "annotations" / "instances_val2014.json").write_text(json.dumps(data))
    for i, im in enumerate(images):
        _image(tmp_path / "val2014" / im["file_name"], 10 + i)
    return tmp_path


def test_coco_labels(coco_root: Path) -> None:
    assert len(COCO_CLASSES) == len(COCO_IDS) == 80
    with pytest.warns(NoLabelWarning, match="dropped 1 of 3"):
        ds = COCO2014(coco_root, split="val", image_size=16)
    assert ds.classes == COCO_CLASSES
    assert ds.category_ids == COCO_IDS
    assert len(ds) == 2 and ds.dropped == 1 and ds.labels.shape == (2, 80)
    assert ds.labels[0].tolist() == _vec(COCO_CLASSES, "person", "toothbrush")
    assert ds.labels[0, 79] == 1.0 and ds.labels[0, 0] == 1.0
    assert ds.labels[1].tolist() == _vec(COCO_CLASSES, "car", "dining table")
    assert ds.labels[1, 2] == 1.0 and ds.labels[1, COCO_CLASSES.index("dining table")] == 1.0
    image, labels = ds[1]
    assert image.shape == (3, 16, 16) and 0.0 <= image.min() and image.max() <= 1.0
    assert labels.shape == (80,)


def test_coco_errors(coco_root: Path) -> None:
    with pytest.raises(MissingFileError, match="instances_train2014.json"):
        COCO2014(coco_root, split="train")
    with pytest.raises(InputError, match="'train', 'val'"):
        COCO2014(coco_root, split="test")
    path = coco_root / "annotations" / "instances_val2014.json"
    data = json.loads(path.read_text())
    data["annotations"].append({"id": 9, "image_id": 42, "category_id": 12})
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match="category id 12"):
        COCO2014(coco_root, split="val")
    path.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        COCO2014(coco_root, split="val")


# ----------------------------------------------------------------------------- NUS-WIDE


@pytest.fixture
def nus_root(tmp_path: Path) -> Path:
    (tmp_path / "Concepts81.txt").write_bytes(("\r\n".join(NUSWIDE_CONCEPTS) + "\r\n").encode())
    files = ["actor\\0002_174174086.jpg", "beach\\0010_9999.jpg", "zoo\\0003_1.jpg"]
    tags = [{"person", "dancing"}, {"beach", "sky", "zebra"}, set()]  # the last is dropped
    (tmp_path / "ImageList").mkdir()
    (tmp_path / "ImageList" / "TrainImagelist.txt").write_bytes(
        ("\r\n".join(files) + "\r\n").encode()
    )
    (tmp_path / "ImageList" / "TestImagelist.txt").write_bytes(b"actor\\0002_174174086.jpg\r\n")
    labels = tmp_path / "Groundtruth" / "TrainTestLabels"
    labels.mkdir(parents=True)
    for concept in NUSWIDE_CONCEPTS:
        column = "".join(f"{int(concept in t)}\r\n" for t in tags)
        (labels / f"Labels_{concept}_Train.txt").write_bytes(column.encode())
        (labels / f"Labels_{concept}_Test.txt").write_bytes(
            b"1\r\n" if concept == "sky" else b"0\r\n"
        )
    for i, f in enumerate(files):
        _image(tmp_path / "Flickr" / f.replace("\\", "/"), 20 + i)
    return tmp_path


def test_nuswide_labels(nus_root: Path) -> None:
    assert len(NUSWIDE_CONCEPTS) == 81 == len(set(NUSWIDE_CONCEPTS))
    assert NUSWIDE_CONCEPTS == sorted(NUSWIDE_CONCEPTS)
    with pytest.warns(NoLabelWarning, match="dropped 1 of 3"):
        ds = NUSWIDE(nus_root, split="train", image_size=8)
    assert ds.classes == NUSWIDE_CONCEPTS
    assert len(ds) == 2 and ds.dropped == 1 and ds.labels.shape == (2, 81)
    assert ds.labels[0].tolist() == _vec(NUSWIDE_CONCEPTS, "person", "dancing")
    assert ds.labels[1].tolist() == _vec(NUSWIDE_CONCEPTS, "beach", "sky", "zebra")
    assert ds.paths[0] == nus_root / "Flickr" / "actor" / "0002_174174086.jpg"
    image, _ = ds[0]
    assert image.shape == (3, 8, 8) and 0.0 <= image.min() and image.max() <= 1.0
    test = NUSWIDE(nus_root, split="test", image_size=8)
    assert len(test) == 1 and test.labels[0].tolist() == _vec(NUSWIDE_CONCEPTS, "sky")


def test_nuswide_paths() -> None:
    assert str(image_relpath("actor\\0002_1.jpg")) == "actor/0002_1.jpg"
    assert str(image_relpath("C:\\ImageData\\Flickr\\actor\\0002_1.jpg\r")) == "actor/0002_1.jpg"


def test_nuswide_errors(nus_root: Path) -> None:
    with pytest.raises(InputError, match="'train', 'test'"):
        NUSWIDE(nus_root, split="val")
    short = nus_root / "Groundtruth" / "TrainTestLabels" / "Labels_sky_Train.txt"
    short.write_text("0\n1\n")
    with pytest.raises(InputError, match="Labels_sky_Train.txt.*2 lines.*3"):
        NUSWIDE(nus_root, split="train")
    short.unlink()
    with pytest.raises(MissingFileError, match="Labels_sky_Train.txt"):
        NUSWIDE(nus_root, split="train")
    (nus_root / "Concepts81.txt").unlink()
    with pytest.raises(MissingFileError, match="Concepts81.txt"):
        NUSWIDE(nus_root, split="train")


# ----------------------------------------------------------------------------- folder


def test_folder_names_format(tmp_path: Path) -> None:
    for i, name in enumerate(("a.png", "sub/b.jpg", "c.png")):
        _image(tmp_path / name, 30 + i)
    (tmp_path / "labels.csv").write_text("path,labels\na.png,dog;cat\nsub/b.jpg, person \nc.png,\n")
    with pytest.warns(NoLabelWarning, match="dropped 1 of 3"):
        ds = LabelFolder(tmp_path, "labels.csv", image_size=8)  # relative to root
    assert ds.classes == ["cat", "dog", "person"]
    assert ds.labels.tolist() == [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    assert len(ds) == 2 and ds.dropped == 1
    image, labels = ds[1]
    assert image.shape == (3, 8, 8) and labels.tolist() == [0.0, 0.0, 1.0]


def test_folder_matrix_format(tmp_path: Path) -> None:
    for i, name in enumerate(("a.png", "b.png")):
        _image(tmp_path / "img" / name, 40 + i)
    csv = tmp_path / "m.csv"
    csv.write_text("path,zebra,apple,moon\nimg/a.png,1,0,1\nimg/b.png,0,1,0\n")
    ds = factory.open_dataset("folder", "train", root=tmp_path, csv=csv, image_size=8)
    assert isinstance(ds, LabelFolder)
    assert ds.classes == ["zebra", "apple", "moon"] and ds.dropped == 0
    assert ds.labels.tolist() == [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
    assert ds[0][0].shape == (3, 8, 8)
    csv.write_text("path,zebra,apple\nimg/a.png,1,2\n")
    with pytest.raises(InputError, match="line 2.*'apple'"):
        LabelFolder(tmp_path, csv)
    csv.write_text("path,zebra,apple\nimg/a.png,1\n")
    with pytest.raises(InputError, match="line 2 has 2 columns"):
        LabelFolder(tmp_path, csv)
    with pytest.raises(MissingFileError, match="nope.csv"):
        LabelFolder(tmp_path, "nope.csv")


# ----------------------------------------------------------------------------- factory


def test_factory_opens_each_layout(voc_root: Path, coco_root: Path, nus_root: Path) -> None:
    assert len(factory.open_dataset("voc2012", "val", root=voc_root, image_size=8)) == 1
    with pytest.warns(NoLabelWarning):
        assert len(factory.open_dataset("coco2014", "val", root=coco_root, image_size=8)) == 2
    assert len(factory.open_dataset("nuswide", "test", root=nus_root, image_size=8)) == 1


# ----------------------------------------------------------------------------- groups


@pytest.mark.parametrize(
    ("dataset", "classes"),
    [
        ("voc2012", VOC_CLASSES),
        ("coco2014", COCO_CLASSES),
        ("nuswide", NUSWIDE_CONCEPTS),
        ("digits", DIGITS_CLASSES),
    ],
)
def test_builtin_groups_are_real_labels(dataset: str, classes: list[str]) -> None:
    groups = GROUPS[dataset]
    assert groups
    seen: set[str] = set()
    for name, members in groups.items():
        assert members and set(members) <= set(classes), (name, set(members) - set(classes))
        if dataset != "digits":  # the digits groups overlap on purpose (sevens, blue_high)
            assert not seen & set(members), f"{name} overlaps another group"
        seen |= set(members)
        got_name, idx = resolve_group(name, classes, dataset)
        assert got_name == name
        assert idx == sorted(classes.index(m) for m in members)


def test_digits_groups_match_the_dataset() -> None:
    from tkmia.data.digits import CLASSES

    assert list(CLASSES) == DIGITS_CLASSES
    assert resolve_group("sevens", DIGITS_CLASSES, "digits") == ("sevens", [7, 17])
    assert resolve_group("red_low", DIGITS_CLASSES, "digits") == ("red_low", [0, 1, 2, 3, 4])


def test_group_specs() -> None:
    assert set(GROUPS) >= {"voc2012", "coco2014", "nuswide", "digits"}
    assert resolve_group("person+car", VOC_CLASSES, "voc2012") == ("person+car", [6, 14])
    assert resolve_group(" car + person + car ", VOC_CLASSES, "voc2012") == (
        "car + person + car",
        [6, 14],
    )
    assert resolve_group("mine=sofa+cat", VOC_CLASSES, "voc2012") == ("mine", [7, 17])
    assert resolve_group("dog", VOC_CLASSES, "voc2012") == ("dog", [11])
    assert resolve_group("pets=cat+Dog", VOC_CLASSES, "voc2012") == ("pets", [7, 11])
    assert resolve_group("x=vehicles+person", VOC_CLASSES, "voc2012")[1] == [
        0, 1, 3, 5, 6, 13, 14, 18,
    ]  # fmt: skip
    assert resolve_group("things=dining_table+tv", COCO_CLASSES, "coco2014")[1] == [60, 62]
    # a dataset without built-in groups (a folder) takes label specs
    assert resolve_group("b+a", ["a", "b", "c"], "folder") == ("b+a", [0, 1])


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("unicorn", "unknown label or group 'unicorn'.*vehicles.*joined by '\\+'"),
        ("person+unicorn", "'unicorn'"),
        ("vehicle", "did you mean"),
        ("", "empty"),
        ("   ", "empty"),
        ("person++car", "empty label name"),
        ("car+", "empty label name"),
        ("mine=", "no labels"),
        ("=car", "named group"),
    ],
)
def test_bad_group_specs(spec: str, match: str) -> None:
    with pytest.raises(InputError, match=match):
        resolve_group(spec, VOC_CLASSES, "voc2012")


def test_unknown_group_for_folder() -> None:
    with pytest.raises(InputError, match="built-in groups: none"):
        resolve_group("animals", ["a", "b"], "folder")
