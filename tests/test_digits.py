"""The built-in dataset and the shipped built-in model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tkmia.data import Digits
from tkmia.data.digits import CLASSES, _sources
from tkmia.errors import InputError
from tkmia.metrics import mean_average_precision
from tkmia.models import builtin_model
from tkmia.models.builtin import builtin_checkpoint_path


def test_items_shapes_ranges_and_classes() -> None:
    data = Digits("val", size=40)
    assert len(data) == 40
    assert data.classes == [f"red_{d}" for d in range(10)] + [f"blue_{d}" for d in range(10)]
    image, labels = data[3]
    assert image.shape == (3, 48, 48) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert labels.shape == (20,) and set(labels.tolist()) <= {0.0, 1.0}
    counts = data.labels.sum(dim=1)
    assert bool(((counts >= 1) & (counts <= 6)).all())


def test_deterministic_for_a_seed_and_different_across_seeds() -> None:
    a, b = Digits("test", seed=0, size=30), Digits("test", seed=0, size=30)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    c = Digits("test", seed=1, size=30)
    assert not torch.equal(a.images, c.images)
    # the first images of a split do not depend on how many are generated
    d = Digits("test", seed=0, size=10)
    assert torch.equal(d.images, a.images[:10])


def test_splits_use_disjoint_source_digits() -> None:
    _, targets, sources = _sources()
    train, val, test = (set(sources[s].tolist()) for s in ("train", "val", "test"))
    assert not (train & val) and not (train & test) and not (val & test)
    assert len(train | val | test) == len(targets)
    for split in sources.values():  # every digit can be drawn in every split
        assert set(np.unique(targets[split]).tolist()) == set(range(10))


def test_cardinality_covers_one_to_six() -> None:
    counts = Digits("val", size=400).labels.sum(dim=1).int()
    hist = torch.bincount(counts, minlength=7)
    assert hist[0] == 0 and bool((hist[1:] > 0).all())
    assert float((counts >= 5).float().mean()) > 0.3  # enough images for k = 3, n = 2


@pytest.mark.parametrize("kwargs", [{"split": "dev"}, {"seed": -1}, {"size": 0}])
def test_bad_arguments(kwargs) -> None:
    with pytest.raises(InputError):
        Digits(**kwargs)


def test_shipped_model_reaches_its_recorded_test_map() -> None:
    meta = json.loads(builtin_checkpoint_path().with_suffix(".json").read_text())
    assert meta["classes"] == CLASSES and meta["arch"] == "digits_cnn"
    model = builtin_model()
    data = Digits("test")
    with torch.no_grad():
        scores = torch.cat(
            [model(data.images[i : i + 500].float() / 255) for i in range(0, len(data), 500)]
        )
    assert scores.shape == (2000, 20)
    test_map = float(mean_average_precision(scores, data.labels))
    assert test_map == pytest.approx(meta["test_map"], abs=1e-4)
    assert 0.85 <= test_map <= 0.95


def test_builtin_model_folds_batchnorm_and_goes_channels_last_without_changing_scores() -> None:
    from tkmia.models import load_model

    unfolded, _ = load_model(builtin_checkpoint_path(), "cpu")
    folded = builtin_model()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in unfolded.modules())
    assert folded.channels_last and unfolded.channels_last  # the architecture's layout
    conv = folded.net[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    images = torch.rand(16, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(folded(images), unfolded(images), atol=1e-4)
