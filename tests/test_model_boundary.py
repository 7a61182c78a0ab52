"""Malformed model files end in one InputError, never a traceback (issue 16, point 6).

A checkpoint's JSON sidecar is checked once, when it is read, before any weight is
loaded; the message names the file, the key, the value and what was expected. The same
files through ``tkmia run --model`` give one ``tkmia: error:`` line and exit code 2.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import tkmia.models.registry
from tkmia.cli import main
from tkmia.errors import InputError
from tkmia.models import Normalized, load_imagenet_weights, load_model, read_meta
from tkmia.models.builtin import builtin_checkpoint_path
from tkmia.training import TrainConfig, train_model

NAN = float("nan")

# (case id, key, bad value, a phrase of what is expected)
BAD_SIDECARS: list[tuple[str, str, Any, str]] = [
    ("std-zero", "std", [0, 0, 0], "finite numbers > 0"),
    ("std-negative", "std", [0.2, -0.1, 0.2], "finite numbers > 0"),
    ("mean-string", "mean", "abc", "a list of 3 finite numbers"),
    ("mean-non-number", "mean", ["a", 0.5, 0.5], "a list of 3 finite numbers"),
    ("mean-bool", "mean", [True, 0.5, 0.5], "a list of 3 finite numbers"),
    ("mean-null", "mean", None, "a list of 3 finite numbers"),
    ("mean-nan", "mean", [NAN, 0.5, 0.5], "a list of 3 finite numbers"),
    ("std-infinite", "std", [float("inf"), 0.2, 0.2], "finite numbers > 0"),
    ("mean-two-channels", "mean", [0.5, 0.5], "a list of 3 finite numbers"),
    ("std-four-channels", "std", [0.2] * 4, "a list of 3 finite numbers > 0"),
    ("std-nested", "std", [[0.2], [0.2], [0.2]], "a list of 3 finite numbers > 0"),
    ("image-size-zero", "image_size", 0, "a positive integer"),
    ("image-size-float", "image_size", 48.0, "a positive integer"),
    ("image-size-string", "image_size", "48", "a positive integer"),
    ("image-size-bool", "image_size", True, "a positive integer"),
    ("arch-number", "arch", 5, "the name of an architecture"),
    ("arch-unknown", "arch", "resnet9000", "the name of an architecture, one of"),
    ("classes-empty", "classes", [], "a list of label names"),
    ("classes-one", "classes", ["cat"], "a list of label names"),
    ("classes-duplicated", "classes", ["cat", "dog", "cat"], "distinct strings"),
    ("classes-numbers", "classes", [1, 2, 3], "a list of label names"),
    ("classes-string", "classes", "cat,dog", "a list of label names"),
]


def _copy_builtin(folder: Path, name: str = "model") -> Path:
    """A copy of the built-in checkpoint and its sidecar under ``folder``."""
    source = builtin_checkpoint_path()
    target = folder / f"{name}.safetensors"
    shutil.copyfile(source, target)
    shutil.copyfile(source.with_suffix(".json"), target.with_suffix(".json"))
    return target


def _break(path: Path, key: str, value: Any) -> None:
    side = path.with_suffix(".json")
    meta = json.loads(side.read_text())
    meta[key] = value
    side.write_text(json.dumps(meta))  # NaN and Infinity are written as JSON allows


def test_the_copied_built_in_checkpoint_is_valid(tmp_path: Path) -> None:
    model, meta = load_model(_copy_builtin(tmp_path))
    assert meta["arch"] == "digits_cnn" and isinstance(model, Normalized)


@pytest.mark.parametrize(
    ("key", "value", "expected"), [c[1:] for c in BAD_SIDECARS], ids=[c[0] for c in BAD_SIDECARS]
)
def test_a_bad_sidecar_is_refused_before_any_weight_loads(
    key: str, value: Any, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _copy_builtin(tmp_path)
    _break(path, key, value)

    def no_weights(*args: object, **kwargs: object) -> None:
        raise AssertionError("weights were read before the sidecar was checked")

    monkeypatch.setattr(tkmia.models.registry, "load_state", no_weights)
    for call in (read_meta, load_model):
        with pytest.raises(InputError) as caught:
            call(path)
        message = str(caught.value)
        assert "model.json" in message and repr(key) in message
        assert expected in message
        assert "got " in message and "\n" not in message


@pytest.mark.parametrize(
    ("key", "value", "expected"), [c[1:] for c in BAD_SIDECARS], ids=[c[0] for c in BAD_SIDECARS]
)
def test_a_bad_sidecar_through_the_cli_is_one_line_and_exit_2(
    key: str, value: Any, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _copy_builtin(tmp_path)
    _break(path, key, value)
    argv = ["run", "--model", str(path), "--samples", "1", "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tkmia: error: "), err
    assert "Traceback" not in err and repr(key) in lines[0] and expected in lines[0]
    assert not (tmp_path / "out").exists()


def test_a_sidecar_that_is_a_list_or_lacks_keys(tmp_path: Path) -> None:
    path = _copy_builtin(tmp_path)
    path.with_suffix(".json").write_text("[1, 2]")
    with pytest.raises(InputError, match="must be a JSON object"):
        read_meta(path)
    path.with_suffix(".json").write_text('{"arch": "digits_cnn", "classes": ["a", "b"]}')
    with pytest.raises(InputError, match=r"lacks the keys \['image_size', 'mean', 'std'\]"):
        read_meta(path)


@pytest.mark.parametrize(
    ("mean", "std", "match"),
    [
        ([0.5] * 3, [0, 0, 0], "std must be positive"),
        ("abc", [0.2] * 3, "mean must be a list of finite numbers"),
        ([0.5] * 3, ["x", 0.2, 0.2], "std must be a list of finite numbers"),
        ([NAN] * 3, [0.2] * 3, "mean must be a list of finite numbers"),
        ([0.5] * 2, [0.2] * 3, "mean and std must have the same length, got 2 and 3"),
    ],
)
def test_normalized_raises_input_error(mean: Any, std: Any, match: str) -> None:
    with pytest.raises(InputError, match=match):
        Normalized(nn.Identity(), mean, std)


def test_normalized_accepts_tuples_tensors_and_integers() -> None:
    """Each form is read as the numbers it holds: ``(x − mean) / std`` per channel."""
    x = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    mixed = Normalized(nn.Identity(), (0.5, 0.25, 0.0), torch.tensor([0.2, 0.5, 4.0]))
    assert mixed.mean.flatten().tolist() == [0.5, 0.25, 0.0]
    assert mixed.std.flatten().tolist() == pytest.approx([0.2, 0.5, 4.0])
    want = (x - torch.tensor([0.5, 0.25, 0.0]).view(1, 3, 1, 1)) / torch.tensor(
        [0.2, 0.5, 4.0]
    ).view(1, 3, 1, 1)
    torch.testing.assert_close(mixed(x), want)
    ints = Normalized(nn.Identity(), [0, 1, 0], [1, 2, 1])
    assert ints.mean.dtype == ints.std.dtype == torch.float32
    torch.testing.assert_close(ints(x), torch.stack([x[:, 0], (x[:, 1] - 1) / 2, x[:, 2]], 1))


def test_imagenet_weights_of_another_shape_are_an_input_error(tmp_path: Path) -> None:
    weights = tmp_path / "w.pth"
    torch.save({"0.weight": torch.zeros(3, 3), "0.bias": torch.zeros(3)}, weights)
    with pytest.raises(InputError, match=r"w.pth' does not match this architecture.*0.weight"):
        load_imagenet_weights(nn.Sequential(nn.Linear(2, 2)), weights)


@pytest.mark.parametrize("content", [b"not a torch file", None], ids=["garbage", "a-list"])
def test_an_unreadable_training_state_is_an_input_error(
    content: bytes | None, tmp_path: Path
) -> None:
    state = tmp_path / "train_state.pt"
    if content is None:
        torch.save([1, 2], state)
    else:
        state.write_bytes(content)
    shutil.copyfile(builtin_checkpoint_path(), tmp_path / "last.safetensors")
    model = Normalized(nn.Linear(2, 2), [0.5], [0.2])
    config = TrainConfig(epochs=1, batch_size=2, lr=1e-3)
    with pytest.raises(InputError, match="training state .*train_state.pt"):
        train_model(model, [], [], config, tmp_path, {"classes": ["a", "b"]}, progress=False)


def _rewrite_weights(path: Path, change: Any) -> None:
    """Apply ``change(state)`` to the checkpoint's tensors and save them back."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(path))
    change(state)
    save_file(state, str(path))


CONV = "net.0.weight"  # the built-in model's first convolution, (16, 3, 5, 5)


def _widen(state: dict[str, torch.Tensor]) -> None:
    state[CONV] = torch.zeros(16, 3, 5, 6)


def _as_int(state: dict[str, torch.Tensor]) -> None:
    state[CONV] = state[CONV].to(torch.int32)


WEIGHT_CASES: list[tuple[str, Any, str]] = [
    ("truncated", None, "is not a valid safetensors file"),
    ("missing-key", lambda s: s.pop(CONV), r"1 tensors missing \['net\.0\.weight'\]"),
    ("unexpected-key", lambda s: s.update(extra=torch.zeros(2)), r"unexpected \['extra'\]"),
    ("wrong-shape", _widen, r"'net\.0\.weight' must have shape \(16, 3, 5, 5\), got \(16, 3, 5, 6"),
    ("integer-weights", _as_int, r"'net\.0\.weight' must be floating point, got torch.int32"),
]


@pytest.mark.parametrize(
    ("change", "expected"), [c[1:] for c in WEIGHT_CASES], ids=[c[0] for c in WEIGHT_CASES]
)
def test_truncated_or_mismatched_weights_name_the_file_and_the_key(
    change: Any, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _copy_builtin(tmp_path)
    if change is None:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        _rewrite_weights(path, change)
    with pytest.raises(InputError, match=expected) as caught:
        load_model(path)
    assert "model.safetensors" in str(caught.value)
    argv = ["run", "--model", str(path), "--samples", "1", "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert (
        len(lines) == 1
        and lines[0].startswith("tkmia: error: ")
        and "model.safetensors" in lines[0]
    )
    assert not (tmp_path / "out").exists()


def test_a_timm_architecture_in_a_sidecar_is_accepted_and_needs_timm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    path = _copy_builtin(tmp_path)
    _break(path, "arch", "timm:resnet10t")
    assert read_meta(path)["arch"] == "timm:resnet10t"  # the sidecar's rule accepts it
    _break(path, "arch", "timm:")
    with pytest.raises(InputError, match="'arch' must be the name of an architecture"):
        read_meta(path)
    _break(path, "arch", "timm:resnet10t")
    monkeypatch.setitem(sys.modules, "timm", None)  # as if timm were not installed
    with pytest.raises(
        InputError, match=r"needs timm, which is not installed: pip install 'tkmia\[timm\]'"
    ):
        load_model(path)
