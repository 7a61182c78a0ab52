"""Your own model through the command line (issue 17): `tkmia run --model` with the
built-in model exported to TorchScript and written as a factory file gives the built-in
model's `summary.csv`; a wrong class count is one error line; `tkmia inspect` prints what
was understood and the test mAP (checked against scikit-learn)."""

from __future__ import annotations

import csv
import re
import warnings
from pathlib import Path

import pytest
import torch
from torch.utils.data import Subset

from tkmia.cli import main
from tkmia.data.digits import Digits
from tkmia.models import builtin_model

RUN = ["run", "--dataset", "digits", "--samples", "3", "--methods", "tkmia", "--k", "2"]
RUN += ["--scheme", "global", "--groups", "sevens", "--max-iter", "25", "--examples", "0"]
RUN += ["--no-progress"]

FACTORY = """
from tkmia.models import builtin_model


def make():
    return builtin_model()


def five_classes():
    import torch

    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(5))
"""


@pytest.fixture(scope="module")
def test_split() -> Digits:
    """The built-in test split, generated once for the module (2000 images: seconds)."""
    return Digits("test")


@pytest.fixture
def digits_once(test_split: Digits, monkeypatch: pytest.MonkeyPatch) -> Digits:
    """Every `Digits("test")` the commands open is the module's one copy."""
    import tkmia.data.digits

    def opened(split: str = "train", seed: int = 0, size: int | None = None) -> Digits:
        assert (split, seed, size) == ("test", 0, None)
        return test_split

    monkeypatch.setattr(tkmia.data.digits, "Digits", opened)
    return test_split


def _rows(path: Path) -> list[dict[str, str]]:
    with (path / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        del row["model"], row["seconds"]
    return rows


def test_torchscript_and_factory_give_the_builtin_models_summary(
    tmp_path: Path, digits_once: Digits
) -> None:
    scripted = tmp_path / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(builtin_model()), str(scripted))
    (tmp_path / "my_model.py").write_text(FACTORY)
    outs = {}
    for model in ("builtin", str(scripted), f"{tmp_path}/my_model.py:make"):
        outs[model] = tmp_path / f"out-{len(outs)}"
        assert main([*RUN, "--model", model, "--out", str(outs[model])]) in (0, 3)
    rows = [_rows(out) for out in outs.values()]
    assert rows[0] and int(rows[0][0]["attacked"]) == 3
    assert rows[1] == rows[0] and rows[2] == rows[0]
    models = [next(csv.DictReader((out / "summary.csv").open()))["model"] for out in outs.values()]
    assert models == ["builtin", "scripted", "my_model-make"]


def test_a_model_with_another_class_count_is_one_line_before_any_attack(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "my_model.py").write_text(FACTORY)
    out = tmp_path / "out"
    argv = [*RUN, "--model", f"{tmp_path}/my_model.py:five_classes", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tkmia: error: model ")
    assert "shape (2, 5)" in err[0] and "expected (2, 20)" in err[0]
    assert not out.exists()


def test_inspect_prints_what_was_understood_and_the_test_map(
    digits_once: Digits, capsys: pytest.CaptureFixture[str]
) -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    assert main(["inspect", "--model", "builtin", "--dataset", "digits", "--samples", "64"]) == 0
    text = capsys.readouterr().out
    fields = dict(re.findall(r"^  ([\w ]+): +(.*)$", text, flags=re.M))
    assert fields["kind"] == "the built-in model"
    assert fields["classes"].startswith("20 (red_0, red_1, red_2, red_3, ..., blue_9)")
    assert fields["input"] == "(B, 3, 48, 48), pixels in [0, 1]"
    assert fields["output"].startswith("(2, 20) logits")
    model = builtin_model()
    assert fields["parameters"] == f"{sum(p.numel() for p in model.parameters()):,}"
    assert fields["device"] == "cpu"
    images, labels = zip(*Subset(digits_once, range(64)), strict=True)
    with torch.no_grad():
        scores = model(torch.stack(images)).numpy()
    truth = torch.stack(labels).numpy()
    has = truth.sum(axis=0) > 0
    expected = metrics.average_precision_score(truth[:, has], scores[:, has], average="macro")
    value, rest = fields["test mAP"].split(" ", 1)
    assert float(value) == pytest.approx(expected, abs=1e-4)
    assert rest == "on the first 64 images of digits test"
    assert main(["inspect", "--model", "builtin", "--normalize", "imagenet"]) == 2
    assert "--normalize is only for" in capsys.readouterr().err


def test_the_config_file_takes_model_normalize_and_classes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "names.txt").write_text("a\nb\n")
    config = tmp_path / "run.toml"
    config.write_text(
        f'model = "builtin"\nnormalize = "imagenet"\nclasses = "{tmp_path}/names.txt"\n'
    )
    assert main(["run", "--config", str(config), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "--normalize and --classes are only for TorchScript" in err
    config.write_text('model = "nowhere.py:make"\n')
    assert main(["inspect", "--config", str(config)]) == 2
    assert "model factory file 'nowhere.py'" in capsys.readouterr().err
