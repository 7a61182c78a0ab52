"""timm backbones (issue 17): ``timm:<name>`` builds without downloading, round-trips
through a tkmia checkpoint, takes local pretrained weights with the head skipped, and
gives a clear error when timm is missing or does not know the name."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tkmia.cli import main
from tkmia.errors import InputError
from tkmia.models import build_model, build_net, load_imagenet_weights, open_model, save_checkpoint
from tkmia.models.timm_nets import head_names

timm = pytest.importorskip("timm")
ARCH = "timm:test_resnet"  # timm's own tiny test model
X = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_build_net_makes_the_timm_model_with_a_c_way_head() -> None:
    net = build_net(ARCH, 5).eval()
    assert type(net).__module__.startswith("timm.")
    assert net(X).shape == (2, 5)
    with pytest.raises(InputError, match="timm has no model 'no_such_net'"):
        build_net("timm:no_such_net", 5)
    with pytest.raises(InputError, match="at least 2 classes"):
        build_net(ARCH, 1)


def test_without_timm_a_timm_name_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` now fails
    with pytest.raises(InputError, match=r"pip install 'tkmia\[timm\]'"):
        build_net(ARCH, 5)
    assert main(["train", "--dataset", "digits", "--arch", ARCH, "--epochs", "1"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "pip install 'tkmia[timm]'" in lines[0]


def test_a_timm_checkpoint_loads_as_any_other(tmp_path: Path) -> None:
    meta = {"arch": ARCH, "classes": list("abcde"), "image_size": 32}
    meta |= {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    torch.manual_seed(0)
    model = build_model(meta).eval()
    path = save_checkpoint(tmp_path / "best.safetensors", model, meta)
    loaded, info = open_model(path)
    assert info.source.kind == "checkpoint" and info.classes == list("abcde")
    torch.testing.assert_close(loaded(X), model(X), rtol=0, atol=0)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_pretrained_weights_fill_all_but_the_head(suffix: str, tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = timm.create_model("test_resnet", pretrained=False)  # a 1000-way ImageNet head
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    path = tmp_path / f"weights{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    torch.manual_seed(2)
    net = build_net(ARCH, 5)
    fresh_head = {k: v.clone() for k, v in net.state_dict().items() if k.startswith("fc.")}
    assert head_names(net) == ("fc",)
    load_imagenet_weights(net, path, head=head_names(net))
    for key, value in net.state_dict().items():
        expected = fresh_head[key] if key.startswith("fc.") else state[key]
        assert torch.equal(value, expected), key


def test_model_timm_name_at_local_weights_in_python_and_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(1)
    net = build_net(ARCH, 20).eval()
    weights = tmp_path / "mine.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))
    model, info = open_model(f"{ARCH}@{weights}")
    assert info.source.kind == "timm" and info.normalize is not None
    mean = torch.tensor(info.normalize[0]).view(1, 3, 1, 1)
    std = torch.tensor(info.normalize[1]).view(1, 3, 1, 1)
    with torch.no_grad():  # the reference: the net itself, normalised by hand
        torch.testing.assert_close(model(X), net((X - mean) / std), rtol=1e-5, atol=1e-6)
    plain, info = open_model(f"{ARCH}@{weights}", normalize="none")
    with torch.no_grad():
        torch.testing.assert_close(plain(X), net(X), rtol=1e-5, atol=1e-6)
    assert main(["inspect", "--model", f"{ARCH}@{weights}", "--image-size", "48"]) == 0
    out = capsys.readouterr().out
    assert "timm" in out and "(2, 20)" in out
    with pytest.raises(InputError, match="needs its local weights"):
        open_model(ARCH)
    bad = tmp_path / "other.safetensors"
    save_file(
        {k: v.contiguous() for k, v in build_net("timm:resnet10t", 20).state_dict().items()},
        str(bad),
    )
    with pytest.raises(InputError, match="does not match"):
        open_model(f"{ARCH}@{bad}")
