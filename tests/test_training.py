"""Training: checkpoints, resume after an interruption, `tkmia train`, a ResNet end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tkmia.attacks import TkMIA
from tkmia.cli import main
from tkmia.data import Digits
from tkmia.errors import InputError
from tkmia.models import Normalized, build_net, load_model
from tkmia.training import TrainConfig, train_model

CONFIG = TrainConfig(epochs=3, batch_size=16, lr=3e-3, seed=0)


def _model() -> Normalized:
    torch.manual_seed(0)
    return Normalized(build_net("digits_cnn", 20), [0.5] * 3, [0.25] * 3)


def _meta() -> dict:
    return {
        "arch": "digits_cnn",
        "classes": Digits.classes,
        "image_size": 48,
        "mean": [0.5] * 3,
        "std": [0.25] * 3,
    }


class _Stop(Exception):
    pass


def test_checkpoints_and_resume_give_the_same_weights(tmp_path: Path) -> None:
    train, test = Digits("train", size=48), Digits("val", size=32)
    full = train_model(
        _model(),
        train,
        test,
        CONFIG,
        tmp_path / "full",
        _meta(),
        progress=False,
        log=lambda _: None,
    )
    assert [h["epoch"] for h in full["history"]] == [1, 2, 3]
    assert full["test_map"] == max(h["test_map"] for h in full["history"])
    for name in ("best", "last"):
        assert (tmp_path / "full" / f"{name}.safetensors").is_file()
        assert json.loads((tmp_path / "full" / f"{name}.json").read_text())["arch"] == "digits_cnn"

    def stop_after_two(line: str) -> None:
        if line.startswith("epoch 2/"):
            raise _Stop

    with pytest.raises(_Stop):
        train_model(
            _model(),
            train,
            test,
            CONFIG,
            tmp_path / "cut",
            _meta(),
            progress=False,
            log=stop_after_two,
        )
    lines: list[str] = []
    resumed = train_model(
        _model(), train, test, CONFIG, tmp_path / "cut", _meta(), progress=False, log=lines.append
    )
    assert lines[0].startswith("resuming") and len(lines) == 2  # only epoch 3 was trained
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    a = load_file(str(tmp_path / "full" / "last.safetensors"))
    b = load_file(str(tmp_path / "cut" / "last.safetensors"))
    assert all(torch.allclose(a[key], b[key], atol=1e-6) for key in a)


def test_resume_refuses_other_settings(tmp_path: Path) -> None:
    train, test = Digits("train", size=16), Digits("val", size=16)
    one = TrainConfig(epochs=1, batch_size=16, lr=1e-3)
    train_model(_model(), train, test, one, tmp_path, _meta(), progress=False, log=print)
    other = TrainConfig(epochs=1, batch_size=16, lr=2e-3)
    with pytest.raises(InputError, match="other settings"):
        train_model(_model(), train, test, other, tmp_path, _meta(), progress=False, log=print)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": -1}, "batch-size"),
        ({"lr": 0.0}, "lr"),
        ({"optimizer": "rmsprop"}, "optimizer"),
    ],
)
def test_bad_train_config(kwargs, match) -> None:
    base = {"epochs": 1, "batch_size": 8, "lr": 1e-3}
    with pytest.raises(InputError, match=match):
        TrainConfig(**{**base, **kwargs})


def _voc_fixture(root: Path) -> None:
    voc = root / "VOCdevkit" / "VOC2012"
    objects = {
        "a1": ["dog", "person", "car"],
        "a2": ["cat", "person"],
        "a3": ["bus"],
        "a4": ["dog", "sofa", "chair"],
        "a5": [
            "aeroplane",
            "bicycle",
            "bird",
            "boat",
            "bottle",
            "bus",
            "car",
            "cat",
            "chair",
            "cow",
            "diningtable",
            "dog",
        ],
    }
    (voc / "Annotations").mkdir(parents=True)
    (voc / "JPEGImages").mkdir(parents=True)
    for i, (name, objs) in enumerate(objects.items()):
        xml = "".join(f"<object><name>{o}</name><difficult>0</difficult></object>" for o in objs)
        (voc / "Annotations" / f"{name}.xml").write_text(f"<annotation>{xml}</annotation>")
        g = torch.Generator().manual_seed(i)
        pixels = (torch.rand(20, 24, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(voc / "JPEGImages" / f"{name}.jpg")
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "ImageSets" / "Main" / "train.txt").write_text("a1\na2\na3\n")
    (voc / "ImageSets" / "Main" / "val.txt").write_text("a4\na5\na1\n")


def test_resnet_end_to_end_train_reload_attack(tmp_path: Path, capsys) -> None:
    _voc_fixture(tmp_path / "voc")
    out = tmp_path / "ckpt"
    code = main(
        [
            "train",
            "--dataset",
            "voc2012",
            "--root",
            str(tmp_path / "voc"),
            "--arch",
            "resnet18",
            "--epochs",
            "1",
            "--batch-size",
            "2",
            "--image-size",
            "32",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr().err
    model, meta = load_model(out / "best.safetensors", num_classes=20)
    assert (
        meta["arch"] == "resnet18"
        and meta["image_size"] == 32
        and meta["classes"][0] == ("aeroplane")
    )
    assert 0.0 <= meta["test_map"] <= 1.0
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        scores = model(image)
    labels = torch.zeros(1, 20)
    labels[0, scores[0].topk(4).indices] = 1  # four relevant labels, the top one specified
    specified = torch.zeros(1, 20)
    specified[0, scores[0].argmax()] = 1
    result = TkMIA(model, k=2, lr=0.5, lam=0.0, max_iter=5)(image, labels, specified)
    assert result.adv_images.shape == image.shape and result.iterations.item() >= 0

    # the same checkpoint through `tkmia run`, as a user would attack it
    res = tmp_path / "res"
    code = main(
        [
            "run",
            "--dataset",
            "voc2012",
            "--root",
            str(tmp_path / "voc"),
            "--model",
            str(out / "best.safetensors"),
            "--image-size",
            "32",
            "--scheme",
            "random",
            "--k",
            "5",
            "--n",
            "1",
            "--samples",
            "2",
            "--methods",
            "tkmia,kfool",
            "--max-iter",
            "3",
            "--out",
            str(res),
            "--no-progress",
            "--examples",
            "1",
        ]
    )
    assert code == 0, capsys.readouterr().err
    rows = (res / "summary.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[1].startswith("voc2012,best,random,5,")
    assert capsys.readouterr().out.rstrip().endswith(f"results: {res}")


class _Recorder(torch.nn.Module):
    """A tiny net that keeps the pixel batches it was trained on."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3, 20)
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.seen.append(x.detach().clone())
        return self.lin(x.mean(dim=(2, 3)))


def _pixels_trained_on(tmp_path: Path, noise: float) -> tuple[torch.Tensor, dict]:
    train, test = Digits("train", size=32), Digits("val", size=16)
    config = TrainConfig(epochs=1, batch_size=16, lr=1e-3, noise=noise)
    net = _Recorder()
    train_model(
        Normalized(net, [0.0] * 3, [1.0] * 3), train, test, config, tmp_path, _meta(),
        progress=False, log=lambda _: None,
    )  # fmt: skip
    return torch.cat(net.seen), json.loads((tmp_path / "best.json").read_text())["train"]


def test_noise_training_adds_clipped_gaussian_noise_to_the_pixels(tmp_path: Path) -> None:
    clean, saved_clean = _pixels_trained_on(tmp_path / "clean", 0.0)
    noisy, saved_noisy = _pixels_trained_on(tmp_path / "noisy", 0.5)
    # without noise, the batches are the dataset's images (the option adds no draw)
    dataset = Digits("train", size=32)
    flat = torch.stack([dataset[i][0] for i in range(32)]).flatten(1)
    assert sorted(clean.flatten(1).tolist()) == sorted(flat.tolist())
    # with noise: the same shuffle, pixels clipped to [0, 1], N(0, σ²) away from the clip
    assert noisy.min() >= 0.0 and noisy.max() <= 1.0
    assert not torch.equal(noisy, clean)
    middle = (clean > 0.3) & (clean < 0.7)
    assert int(middle.sum()) > 1000
    inside = middle & (noisy > 0.0) & (noisy < 1.0)
    assert float((noisy - clean)[middle].std()) == pytest.approx(0.5, rel=0.3)
    assert float((noisy - clean)[inside].abs().max()) > 0.5
    assert "noise" not in saved_clean and saved_noisy["noise"] == 0.5
