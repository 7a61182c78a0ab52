"""The library boundary rejects bad input with ValueError (issue 8, point 2).

Every public function raises :class:`~tkmia.errors.InputError`, a :class:`ValueError`,
whose message names the problem. What ``test_attacks.py`` (TkMIA), ``test_metrics.py``,
``test_protocol.py``, ``test_digits.py`` and ``test_data_real.py`` already check is not
repeated here: this file covers the other three attacks, checkpoints and models, and the
cases those files leave out.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from tkmia.attacks import MLCWU, KFool, TkMIA, TkMLAPU
from tkmia.data.digits import CLASSES as DIGITS_CLASSES
from tkmia.data.digits import Digits
from tkmia.data.groups import resolve_group
from tkmia.errors import InputError, MissingFileError
from tkmia.models import (
    Normalized,
    build_model,
    build_net,
    load_model,
    load_state,
    read_meta,
    save_checkpoint,
    uses_channels_last,
)
from tkmia.protocol import check_scheme

from _toys import make_cnn, make_problem

K = 3


def _make(cls, model, **kwargs):
    if cls is KFool:
        kwargs = {key: value for key, value in kwargs.items() if key not in ("lr", "lam")}
        return KFool(model, **({"k": K, "max_iter": 2} | kwargs))
    return cls(model, **({"k": K, "lr": 1.0, "lam": 0.0, "max_iter": 2} | kwargs))


def test_input_error_is_a_value_error() -> None:
    assert issubclass(InputError, ValueError) and issubclass(MissingFileError, ValueError)
    assert issubclass(MissingFileError, FileNotFoundError)


# ------------------------------------------------------------------ attacks
OTHER_ATTACKS = [TkMLAPU, MLCWU, KFool]  # TkMIA: see test_attacks.py
LOSS_ATTACKS = [TkMLAPU, MLCWU]


@pytest.mark.parametrize("cls", OTHER_ATTACKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 0}, "k must be an integer >= 1, got 0"),
        ({"k": 2.0}, "k must be an integer >= 1, got 2.0"),
        ({"k": True}, "k must be an integer >= 1, got True"),
        ({"max_iter": 0}, "max_iter must be an integer >= 1, got 0"),
        ({"max_iter": 1.5}, "max_iter must be an integer >= 1, got 1.5"),
        ({"normalize": ([0.5] * 3, [0.25, 0.0, 0.25])}, "normalize std must be positive"),
        ({"normalize": ([0.5] * 3,)}, "normalize must be a pair"),
        ({"baseline_targets": "all"}, "baseline_targets must be one of"),
    ],
)
def test_bad_constructor_arguments(cls, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        _make(cls, make_cnn(), **kwargs)


@pytest.mark.parametrize("cls", LOSS_ATTACKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": 0.0}, r"lr must be a number > 0, got 0.0"),
        ({"lr": -1e-3}, r"lr must be a number > 0, got -0.001"),
        ({"lr": float("nan")}, r"lr must be a number > 0, got nan"),
        ({"lr": "fast"}, r"lr must be a number > 0, got 'fast'"),
        ({"lam": -1.0}, r"lam must be a number >= 0, got -1.0"),
        ({"penalty": "l1"}, "penalty must be 'w' or 'pixel'"),
    ],
)
def test_bad_loss_attack_hyper_parameters(cls, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        _make(cls, make_cnn(), **kwargs)


@pytest.mark.parametrize("cls", [TkMIA, *LOSS_ATTACKS], ids=lambda c: c.__name__)
def test_lam_zero_is_allowed(cls) -> None:
    assert _make(cls, make_cnn(), lam=0.0).lam == 0.0


def test_mlcwu_eps_and_kfool_overshoot() -> None:
    with pytest.raises(ValueError, match="eps must be a number > 0, got 0.0"):
        MLCWU(make_cnn(), K, 1.0, 0.0, 2, eps=0.0)
    with pytest.raises(ValueError, match="overshoot must be a number >= 0, got -0.1"):
        KFool(make_cnn(), K, 2, overshoot=-0.1)


def _inf(x, y, s):
    x = x.clone()
    x[0, 0, 0, 0] = float("inf")
    return x, y, s


@pytest.mark.parametrize("cls", OTHER_ATTACKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda x, y, s: (x[0], y, s), r"images must be a tensor of shape \(B, C, H, W\)"),
        (lambda x, y, s: (x - 0.5, y, s), r"images must lie in \[0, 1\], got values in \[-"),
        (lambda x, y, s: (x + 0.5, y, s), r"images must lie in \[0, 1\]"),
        (_inf, "NaN or infinite"),
        (lambda x, y, s: (x.masked_fill(x > 0.5, float("nan")), y, s), "NaN or infinite"),
        (lambda x, y, s: ((x * 255).to(torch.uint8), y, s), "floating point"),
        (lambda x, y, s: (x, y * 0.5, s), "labels must contain only 0 and 1"),
        (lambda x, y, s: (x, y, s - 1), "specified must contain only 0 and 1"),
        (lambda x, y, s: (x, y[:, :3], s[:, :3]), r"k must satisfy 1 <= k < c = 3, got k = 3"),
        (lambda x, y, s: (x, y[:2], s), r"labels must have shape \(B, c\) with B = 4"),
        (lambda x, y, s: (x, y, s[:, :5]), "same shape"),
        (lambda x, y, s: (x, y, torch.zeros_like(s)), "specified must be non-empty"),
        (lambda x, y, s: (x, y, 1 - y), "specified must be a subset of labels"),
    ],
    ids=[
        "3d-images",
        "below-0",
        "above-1",
        "inf",
        "nan",
        "uint8",
        "labels-not-0-1",
        "specified-not-0-1",
        "k-equals-c",
        "labels-batch",
        "specified-shape",
        "empty-specified",
        "specified-not-subset",
    ],
)
def test_bad_attack_inputs(cls, mutate, match) -> None:
    model = make_cnn()
    x, y, s = mutate(*make_problem(model, 4, K))
    with pytest.raises(ValueError, match=match):
        _make(cls, model)(x, y, s)


@pytest.mark.parametrize("cls", OTHER_ATTACKS, ids=lambda c: c.__name__)
def test_bad_threshold(cls) -> None:
    model = make_cnn()
    x, y, s = make_problem(model, 4, K, n_specified=1)
    with pytest.raises(ValueError, match="threshold must be an integer >= 1, got 0"):
        _make(cls, model)(x, y, s, threshold=0)
    with pytest.raises(ValueError, match="lower the threshold"):
        _make(cls, model)(x, y, s, threshold=2)


# ------------------------------------------------------------------ protocol
@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("global", 2.0, 20, None, None), "k must be an integer .* got 2.0"),
        (("global", True, 20, None, None), "k must be an integer .* got True"),
        (("global", -1, 20, None, None), "k must be an integer with 1 <= k < c = 20, got -1"),
        (("random", 2, 20, None, None), r"n \(labels drawn per image\) .* got None"),
        (("random", 3, 20, 2, 0), "threshold must satisfy 1 <= t <= n = 2, got 0"),
        (("S1", 2, 20, None, None), "scheme must be one of .* got 'S1'"),
    ],
)
def test_check_scheme_more_errors(args, match) -> None:
    with pytest.raises(ValueError, match=match):
        check_scheme(*args)


def test_check_scheme_accepts_the_edges() -> None:
    """Each edge is accepted (returns None, raises nothing) and the value just past it is
    refused: k = c − 1 but not c, n = k and n = 1 but not k + 1 or 0, t = n but not n + 1."""
    accepted = [
        ("global", 19, 20, None, None),
        ("global", 1, 20, None, None),
        ("random", 3, 20, 3, 3),
        ("random", 3, 20, 3, 1),
        ("random", 3, 20, 1, None),
        ("targeted", 3, 20, 3, None),
    ]
    assert [check_scheme(*args) for args in accepted] == [None] * len(accepted)
    refused = [
        ("global", 20, 20, None, None),
        ("global", 0, 20, None, None),
        ("random", 3, 20, 4, None),
        ("random", 3, 20, 0, None),
        ("random", 3, 20, 3, 4),
        ("targeted", 3, 20, 4, None),
    ]
    for args in refused:
        with pytest.raises(InputError):
            check_scheme(*args)


def test_check_scheme_without_the_class_count_leaves_k_below_c_for_later() -> None:
    check_scheme("global", 1000, None, None, None)
    check_scheme("random", 3, None, 3, 2)
    with pytest.raises(ValueError, match="k must be an integer with 1 <= k, got 0"):
        check_scheme("global", 0, None, None, None)
    with pytest.raises(ValueError, match="1 <= n <= k = 3, got 4"):
        check_scheme("random", 3, None, 4, None)


# ------------------------------------------------------------------ data
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"split": "dev"}, r"digits split must be one of \['train', 'val', 'test'\], got 'dev'"),
        ({"seed": -1}, "seed must be a non-negative integer, got -1"),
        ({"size": 0}, "size must be a positive integer, got 0"),
    ],
)
def test_digits_bad_arguments_name_the_problem(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        Digits(**kwargs)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("unicorns", r"unknown label or group 'unicorns' .* built-in groups: \['sevens'"),
        ("red_7+purple_3", "unknown label or group 'purple_3'.*did you mean 'red_3'"),
        ("sevens+", "empty label name"),
    ],
)
def test_resolve_group_on_digits(spec, match) -> None:
    with pytest.raises(ValueError, match=match):
        resolve_group(spec, DIGITS_CLASSES, "digits")


# ------------------------------------------------------------------ models and checkpoints
def _meta(classes: int = 5) -> dict:
    return {
        "arch": "digits_cnn",
        "classes": [f"c{i}" for i in range(classes)],
        "image_size": 48,
        "mean": [0.5] * 3,
        "std": [0.25] * 3,
    }


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    return save_checkpoint(tmp_path / "five.safetensors", build_model(_meta()), _meta())


@pytest.fixture
def pickle_file(tmp_path: Path) -> Path:
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": _Exploit(tmp_path / "PWNED")}, path)
    return path


def test_checkpoint_round_trip(checkpoint: Path) -> None:
    model, meta = load_model(checkpoint, num_classes=5)
    assert meta["classes"] == _meta()["classes"] and not model.training


def test_load_model_refuses_pickle_files(pickle_file: Path, tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match="must be a .safetensors file.*pickle checkpoints are refused"
    ):
        load_model(pickle_file)
    disguised = tmp_path / "evil.safetensors"  # a pickle renamed, with a valid sidecar
    disguised.write_bytes(pickle_file.read_bytes())
    disguised.with_suffix(".json").write_text(
        '{"arch": "digits_cnn", "classes": ["a", "b"], '
        '"image_size": 48, "mean": [0, 0, 0], '
        '"std": [1, 1, 1]}'
    )
    with pytest.raises(ValueError, match="evil.safetensors' is not a valid safetensors file"):
        load_model(disguised)
    with pytest.raises(ValueError, match="refusing to load .*evil.pth.*pickled Python objects"):
        load_state(pickle_file)
    assert not (tmp_path / "PWNED").exists()


def test_load_model_errors(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match="nope.safetensors' not found"):
        load_model(tmp_path / "nope.safetensors")
    with pytest.raises(ValueError, match="is for 5 classes but the dataset has 20"):
        load_model(checkpoint, num_classes=20)
    checkpoint.with_suffix(".json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="must be a JSON object"):
        load_model(checkpoint)
    checkpoint.with_suffix(".json").write_text('{"arch": "digits_cnn"}')
    with pytest.raises(ValueError, match=r"lacks the keys \['classes'"):
        read_meta(checkpoint)
    checkpoint.with_suffix(".json").write_text(
        '{"arch": "digits_cnn", "classes": 5, "image_size": 48, "mean": [], "std": []}'
    )
    with pytest.raises(ValueError, match="'classes' must be a list of label names"):
        read_meta(checkpoint)
    checkpoint.with_suffix(".json").write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        read_meta(checkpoint)
    checkpoint.with_suffix(".json").unlink()
    with pytest.raises(MissingFileError, match="five.json' not found"):
        load_model(checkpoint)


def test_checkpoint_of_another_architecture_is_refused(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.safetensors", build_model(_meta()), _meta())
    path.with_suffix(".json").write_text(
        (tmp_path / "m.json").read_text().replace('"digits_cnn"', '"resnet18"')
    )
    with pytest.raises(ValueError, match="does not match architecture 'resnet18'"):
        load_model(path)


def test_load_state_errors(tmp_path: Path) -> None:
    plain = tmp_path / "plain.pth"
    torch.save({"w": torch.zeros(2), "step": 3}, plain)
    with pytest.raises(ValueError, match="does not hold a state dict of tensors"):
        load_state(plain)
    other = tmp_path / "weights.npz"
    other.write_bytes(b"")
    with pytest.raises(ValueError, match="unknown weights format '.npz'"):
        load_state(other)
    with pytest.raises(MissingFileError, match="gone.pth' not found"):
        load_state(tmp_path / "gone.pth")


def test_save_checkpoint_and_build_net_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must end in .safetensors, got .*m.pt'"):
        save_checkpoint(tmp_path / "m.pt", build_model(_meta()), _meta())
    with pytest.raises(ValueError, match="unknown architecture 'resnet9000'; expected one of"):
        build_net("resnet9000", 5)
    with pytest.raises(ValueError, match="at least 2 classes, got 1"):
        build_net("digits_cnn", 1)
    assert not list(tmp_path.iterdir())


def test_channels_last_wrapper_keeps_the_function_and_the_caller_tensors() -> None:
    """Normalized.to_channels_last: same scores and input gradients up to rounding; the
    caller's images stay in their layout; a checkpoint of it loads into a plain model."""
    plain = Normalized(make_cnn(), (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)).eval()
    last = copy.deepcopy(plain).to_channels_last()
    x = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    grads = []
    for model in (plain, last):
        xx = x.clone().requires_grad_(True)
        out = model(xx)
        (g,) = torch.autograd.grad(out[:, 2].sum(), xx)
        grads.append((out.detach(), g))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-5, atol=1e-6)
    assert x.is_contiguous()
    restored = Normalized(make_cnn(seed=5), (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    restored.load_state_dict({k: v.contiguous() for k, v in last.state_dict().items()})
    with torch.no_grad():
        torch.testing.assert_close(restored.eval()(x), plain(x), rtol=1e-5, atol=1e-6)


def test_the_built_in_architecture_runs_channels_last_and_the_resnets_do_not() -> None:
    meta = {"arch": "digits_cnn", "classes": ["a", "b", "c"], "mean": [0.5] * 3, "std": [0.25] * 3}
    assert build_model(meta).channels_last
    assert uses_channels_last("digits_cnn")
    assert not uses_channels_last("resnet50") and not uses_channels_last("resnet101")
