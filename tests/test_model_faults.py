"""Faults of the model and of a universal run's δ (issue 29): a model without gradients,
NaN scores, factories that exit, sizes beyond memory, a sidecar normalisation the weights
do not carry, the weights-only refusal, a tampered δ — each one clean error, never a
traceback and never a reported number."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from _cli import one_error
from tkmia.cli import main
from tkmia.errors import InputError
from tkmia.experiments.runner import RunConfig, run
from tkmia.experiments.settings import MethodConfig, Setting
from tkmia.experiments.universal import UniversalConfig, run_universal

from _toys import TopKDataset, make_cnn


def _config() -> RunConfig:
    return RunConfig(
        "toy", "cnn", [Setting("random", 3, n=1)],
        [MethodConfig("tkmia", max_iter=5, lr=5.0, lam=1e-3)],
        samples=4, seed=0, batch_size=2, examples=0,
    )  # fmt: skip


@pytest.fixture(scope="module")
def toy() -> tuple[nn.Module, TopKDataset]:
    model = make_cnn()
    return model, TopKDataset(model, n=16, seed=2)


# ---------------------------------------------------------------- model faults
class _NoGrad(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class _NaNFor(nn.Module):
    """``model``, with NaN scores for images whose first pixel is below ``below``."""

    def __init__(self, model: nn.Module, below: float) -> None:
        super().__init__()
        self.model, self.below = model, below

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.model(x)
        nan = (x[:, 0, 0, 0] < self.below)[:, None]
        return torch.where(nan, torch.full_like(scores, math.nan), scores)


def test_a_model_without_gradients_is_refused_before_any_attack(toy, tmp_path) -> None:
    model, data = toy
    with pytest.raises(InputError, match="does not depend on the input with gradients: is its "
                       "forward under torch.no_grad"):  # fmt: skip
        run(_config(), _NoGrad(model), data, tmp_path / "out", progress=False)
    assert not list((tmp_path / "out").glob("records/*/*.jsonl"))


def test_nan_scores_are_refused_at_the_first_batch_naming_how_many(toy, tmp_path) -> None:
    model, data = toy
    first = data.images[:2, 0, 0, 0]
    below = float(first.max()) + 1e-6 if first.max() < 0.99 else float(first.min()) + 1e-6
    nan_count = int((first < below).sum())
    with pytest.raises(InputError, match=f"NaN or infinite scores for {nan_count} of 2 images"):
        run(_config(), _NaNFor(model, below), data, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "records").exists()


FACTORIES = """
import sys

def leaves():
    sys.exit(0)

def raises():
    raise BaseException("not an Exception")
"""


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("sys:exit", "exit() failed: it called sys.exit() (SystemExit)"),
        ("{f}:leaves", "leaves() failed: it called sys.exit(0) (SystemExit)"),
        ("{f}:raises", "raises() failed: BaseException: not an Exception"),
    ],
)
def test_a_factory_that_exits_or_raises_base_exception_is_one_error_line(
    tmp_path, capsys, spec, expected
) -> None:
    factory = tmp_path / "factories.py"
    factory.write_text(FACTORIES)
    argv = [
        "run",
        "--model",
        spec.format(f=factory),
        "--samples",
        "2",
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(argv) == 2
    one_error(capsys, expected)
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- universal δ
@pytest.fixture(scope="module")
def universal(toy, tmp_path_factory):
    model, data = toy
    with torch.no_grad():  # the group: the label most often in the clean top-2
        top2 = model(data.images).topk(2, dim=1).indices.flatten()
    label = int(torch.bincount(top2).argmax())
    setting = Setting("global", 2, group="g", group_indices=(label,))
    config = UniversalConfig("toys", "cnn", [setting], ["tkmia"], [1.0], epochs=2, examples=0)
    out = tmp_path_factory.mktemp("universal") / "u"
    (row,) = run_universal(config, model, data, data, out)
    delta = out / "deltas" / setting.key / "tkmia-eps1.safetensors"
    return config, out, delta, row


def _tamper(delta_path: Path, kind: str) -> None:
    from safetensors.torch import load_file

    delta = load_file(str(delta_path))["delta"]
    epoch = "2"
    if kind == "scaled":
        delta = delta * (100 / float(delta.norm()))
    elif kind == "nan":
        delta[0, 0, 0] = math.nan
    elif kind == "int":
        delta = delta.round().to(torch.int32)
    elif kind == "shape":
        delta = delta[:, :8]
    elif kind == "epoch text":
        epoch = "abc"
    elif kind == "epoch beyond":
        epoch = "7"
    tensors = {"other": delta} if kind == "no tensor" else {"delta": delta.contiguous()}
    save_file(tensors, str(delta_path), {"epoch": epoch})
    if kind == "sidecar":
        delta_path.with_suffix(".json").write_text("{not json")


@pytest.mark.parametrize(
    ("kind", "problem"),
    [
        ("scaled", "its L2 norm 100 exceeds eps = 1"),
        ("nan", "it holds NaN or infinite values"),
        ("int", "not floating point"),
        ("shape", "is not the images'"),
        ("no tensor", "holds no 'delta' tensor"),
        ("epoch text", "its epoch 'abc' is not an integer"),
        ("epoch beyond", "its epoch 7 is not an integer in 0..2"),
        ("sidecar", "is not a JSON object"),
    ],
)
@pytest.mark.parametrize("records", ["kept", "removed"])
def test_a_tampered_delta_is_refused_never_reported(
    universal, toy, tmp_path, kind, problem, records
) -> None:
    import shutil

    config, folder, delta, _ = universal
    out = tmp_path / "u"
    shutil.copytree(folder, out)
    path = out / delta.relative_to(folder)
    _tamper(path, kind)
    if records == "removed":  # the fit is redone from the saved δ, then evaluated
        for rec in (out / "records").rglob("*.jsonl"):
            rec.unlink()
    with pytest.raises(InputError, match=problem.replace("(", r"\(")) as caught:
        run_universal(config, toy[0], toy[1], toy[1], out)
    assert str(path) in str(caught.value) and "to fit δ again" in str(caught.value)


def test_an_untouched_universal_folder_reads_back_and_audit_refuses_it(
    universal, toy, capsys
) -> None:
    config, out, _, row = universal
    assert run_universal(config, toy[0], toy[1], toy[1], out) == [row]
    assert main(["audit", str(out)]) == 2
    one_error(capsys, "holds tkmia universal results", "per-image attack records")


# ------------------------------------------------------------ model files and sizes
def test_nan_scores_on_the_dummy_batch_and_sizes_beyond_memory_are_named(toy) -> None:
    from tkmia.models.outputs import check_output

    model = toy[0]
    with pytest.raises(InputError, match="NaN or infinite scores for 2 of the 2 images"):
        check_output(_NaNFor(model, 2.0), 10, 16)
    with pytest.raises(InputError, match=r"dummy batch of shape \(2, 3, 1000000, 1000000\)"):
        check_output(model, 10, 10**6)


def _checkpoint(tmp_path: Path) -> Path:
    from tkmia.models import build_model, save_checkpoint

    meta = {"arch": "digits_cnn", "classes": [f"l{i}" for i in range(5)], "image_size": 48,
            "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}  # fmt: skip
    return save_checkpoint(tmp_path / "net.safetensors", build_model(meta), meta)


def test_a_sidecar_normalisation_the_weights_do_not_carry_is_refused(tmp_path) -> None:
    from tkmia.models import load_model

    path = _checkpoint(tmp_path)
    load_model(path)  # as written: accepted
    sidecar = path.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps(meta | {"std": [0.2, 0.25, 0.25]}))
    with pytest.raises(InputError, match=r"says std \[0.2, 0.25, 0.25\], but the weights .* "
                       r"carry std \[0.25, 0.25, 0.25\]"):  # fmt: skip
        load_model(path)


class _Payload:
    def __reduce__(self):
        return (print, ("never printed",))


def test_the_refusal_of_a_pickle_never_advises_unpickling(tmp_path) -> None:
    from tkmia.models.checkpoint import load_state

    path = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(1), "p": _Payload()}, path)
    with pytest.raises(InputError) as caught:
        load_state(path)
    message = str(caught.value)
    assert "pickled Python objects (GLOBAL" in message and "safetensors" in message
    assert "weights_only" not in message and "will likely succeed" not in message
    with pytest.raises(Exception) as from_torch:  # noqa: PT011 (whatever torch raises)
        torch.load(path, weights_only=True)
    for line in str(from_torch.value).splitlines():  # none of torch's advice passed on
        assert len(line.strip()) < 20 or line.strip()[:40] not in message
    assert "\n" not in message
