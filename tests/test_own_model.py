"""Your own model (issue 17): every ``--model`` form, every output form, clear errors.

References are independent of the code under test: the eager module's own output, the
normalisation and the column order written out by hand, and pickles that would leave a
marker on disk if they were ever executed.
"""

from __future__ import annotations

import io
import os
import warnings
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from tkmia.errors import InputError, MissingFileError
from tkmia.models import Logits, check_output, fit_model, logits_of, open_model, parse_source
from tkmia.models.sources import align_classes, parse_normalize, read_classes

from _toys import make_cnn

X = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(3))


class Shaped(nn.Module):
    """``net``'s logits handed back in one of the forms models use."""

    def __init__(self, net: nn.Module, form: str) -> None:
        super().__init__()
        self.net, self.form = net, form

    def forward(self, x: torch.Tensor) -> object:
        s = self.net(x)
        return {
            "tensor": s,
            "tuple": (s, s.detach() * 0 + 7),
            "list": [s],
            "dict-logits": {"features": s * 0 + 5, "logits": s},
            "dict-single": {"scores": s},
            "attribute": SimpleNamespace(logits=s, hidden=None),
        }[self.form]


@pytest.mark.parametrize(
    "form", ["tensor", "tuple", "list", "dict-logits", "dict-single", "attribute"]
)
def test_each_output_form_gives_the_logits(form: str) -> None:
    net = make_cnn(c=6)
    torch.testing.assert_close(Logits(Shaped(net, form))(X), net(X), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("output", "match"),
    [
        ({"a": torch.zeros(2, 3), "b": torch.zeros(2, 3)}, r"dict with keys \['a', 'b'\]"),
        ("scores", "returned a str"),
        ((), "returned an empty tuple"),
        ([None], "returned a list of a NoneType"),
        (SimpleNamespace(logits=[1.0]), "returned a SimpleNamespace"),
    ],
)
def test_an_output_without_a_tensor_is_an_input_error(output: object, match: str) -> None:
    with pytest.raises(InputError, match=match):
        logits_of(output)


def test_a_wrong_class_count_is_found_on_one_dummy_batch() -> None:
    with pytest.raises(InputError, match=r"shape \(2, 6\).*expected \(2, 20\)"):
        check_output(make_cnn(c=6), 20, 16, name="model 'm'")
    flat = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 6))  # for 16-pixel images only
    with pytest.raises(InputError, match=r"model 'm' fails on a dummy batch of shape .*8, 8"):
        check_output(flat, 6, 8, name="model 'm'")
    assert check_output(Logits(Shaped(make_cnn(c=6), "tuple")), 6, 16) == (2, 6)


def test_forms_are_told_apart(tmp_path: Path) -> None:
    for name in ("a.safetensors", "b.pt", "c.ts", "d.pt2", "e.py"):
        (tmp_path / name).write_bytes(b"")
    kinds = {
        "builtin": "builtin",
        f"{tmp_path}/a.safetensors": "checkpoint",
        f"{tmp_path}/b.pt": "torchscript",
        f"{tmp_path}/c.ts": "torchscript",
        f"{tmp_path}/d.pt2": "export",
        f"{tmp_path}/e.py:make": "factory",
        "my_pkg.models:build_net": "factory",
    }
    assert {text: parse_source(text).kind for text in kinds} == kinds
    assert parse_source(f"{tmp_path}/e.py:make").name == "e-make"
    with pytest.raises(MissingFileError, match="nowhere.pt"):
        parse_source(f"{tmp_path}/nowhere.pt")
    with pytest.raises(MissingFileError, match="gone.py"):
        parse_source(f"{tmp_path}/gone.py:make")
    for bad in ("model.pth", "model", "pkg.mod:", "a-b:make", "x.py:1f"):
        with pytest.raises(InputError, match="is not a model"):
            parse_source(bad)


def test_torchscript_gives_the_eager_models_scores_and_never_unpickles(tmp_path: Path) -> None:
    net = make_cnn(c=5)
    path = tmp_path / "net.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.trace(net, X), str(path))
    model, info = open_model(path)
    assert info.source.kind == "torchscript" and info.normalize is None
    torch.testing.assert_close(model(X), net(X), rtol=0, atol=0)
    marker = tmp_path / "pickle-ran"
    bad = tmp_path / "pickled.pt"
    torch.save({"model": _Payload(marker)}, bad)
    with pytest.raises(InputError, match="is not a TorchScript archive.*torch.save.*refused"):
        open_model(bad)
    assert not marker.exists()


class _Payload:
    """Unpickling this makes the folder ``marker``: the trace of an executed pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (self.marker,)


class _Flat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 16 * 16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    """A small model and its ``torch.export`` archive with a dynamic batch dimension
    (exporting costs seconds: once for the module)."""
    torch.manual_seed(0)
    net = _Flat().eval()
    path = tmp_path_factory.mktemp("export") / "net.pt2"
    shapes = ({0: torch.export.Dim("batch", min=1, max=1024)},)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.save(torch.export.export(net, (X,), dynamic_shapes=shapes), str(path))
    return net, path


def test_torch_export_archive_runs_in_any_batch_and_in_eval(
    exported: tuple[nn.Module, Path],
) -> None:
    net, path = exported
    model, info = open_model(path)
    assert info.source.kind == "export" and not model.training  # eval() reached the wrapper
    for batch in (X, X[:1]):
        torch.testing.assert_close(model(batch), net(batch), rtol=0, atol=0)


def test_a_static_batch_gets_the_hint_to_export_a_dynamic_one() -> None:
    class Static(nn.Module):  # what an archive exported without dynamic_shapes raises
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise AssertionError("Guard failed: x.size()[0] == 8")

    with pytest.raises(InputError, match="needs a dynamic batch dimension"):
        check_output(Static(), 5, 16)


def test_torch_export_archive_with_pickled_objects_is_refused(
    exported: tuple[nn.Module, Path], tmp_path: Path
) -> None:
    path = tmp_path / "net.pt2"
    path.write_bytes(exported[1].read_bytes())
    with zipfile.ZipFile(path, "a") as archive:
        root = archive.namelist()[0].split("/")[0]
        archive.writestr(f"{root}/data/constants/opaque_obj_0", b"not read")
    with pytest.raises(InputError, match="holds pickled Python objects.*opaque_obj_0"):
        open_model(path)
    (tmp_path / "junk.pt2").write_bytes(b"junk")
    with pytest.raises(InputError, match="junk.pt2.*not a torch.export archive"):
        open_model(tmp_path / "junk.pt2")


def test_every_torch_load_inside_torch_export_load_is_weights_only(
    exported: tuple[nn.Module, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.export.load falls back to ``torch.load(weights_only=False)`` on what it cannot
    read otherwise; inside :func:`open_model` that pickle must still not run."""
    marker = tmp_path / "pickle-ran"

    def load_with_a_pickle(path: str) -> object:
        buffer = io.BytesIO()
        torch.save(_Payload(marker), buffer)
        buffer.seek(0)
        return torch.load(buffer, weights_only=False)  # what torch's own fallback does

    monkeypatch.delenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", raising=False)
    monkeypatch.setattr(torch.export, "load", load_with_a_pickle)
    with pytest.raises(InputError, match="not a torch.export archive.*UnpicklingError"):
        open_model(exported[1])
    assert not marker.exists()
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ  # the switch is put back


FACTORY = """
import torch
from torch import nn


def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4))


def broken():
    raise RuntimeError("no weights here")


def not_a_model():
    return 42
"""


def test_factory_from_a_file_or_a_module_runs_only_when_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "net_factory.py").write_text(FACTORY)
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4))
    model, info = open_model(f"{tmp_path}/net_factory.py:make")
    assert info.source.kind == "factory"
    torch.testing.assert_close(model(X), reference(X), rtol=0, atol=0)
    monkeypatch.syspath_prepend(str(tmp_path))
    by_module, _ = open_model("net_factory:make")
    torch.testing.assert_close(by_module(X), reference(X), rtol=0, atol=0)
    cases = {
        "broken": r"broken\(\) failed: RuntimeError: no weights here",
        "not_a_model": r"not_a_model\(\) returned a int; expected a torch.nn.Module",
        "missing": "has no function 'missing'",
    }
    for function, match in cases.items():
        with pytest.raises(InputError, match=match):
            open_model(f"{tmp_path}/net_factory.py:{function}")
    (tmp_path / "syntax.py").write_text("def make(:\n")
    with pytest.raises(InputError, match="importing .*syntax.py' failed: SyntaxError"):
        open_model(f"{tmp_path}/syntax.py:make")


def test_normalize_values_and_the_normalised_model(tmp_path: Path) -> None:
    assert parse_normalize(None) is None and parse_normalize("none") is None
    assert parse_normalize("imagenet") == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert parse_normalize("0.5,0.25") == ((0.5,) * 3, (0.25,) * 3)
    assert parse_normalize("1,2,3,4,5,6") == ((1.0, 2.0, 3.0), (4.0, 5.0, 6.0))
    for bad in ("imagnet", "0.5", "1,2,3", "0.5,0", "0.5,-1", "nan,1", "a,b"):
        with pytest.raises(InputError, match="--normalize"):
            parse_normalize(bad)
    (tmp_path / "f.py").write_text(FACTORY)
    raw, _ = open_model(f"{tmp_path}/f.py:make")
    model, info = open_model(f"{tmp_path}/f.py:make", normalize="0.5,0.25")
    assert info.normalize == ((0.5,) * 3, (0.25,) * 3)
    torch.testing.assert_close(model(X), raw((X - 0.5) / 0.25))


def test_classes_file_puts_the_output_in_the_datasets_order(tmp_path: Path) -> None:
    (tmp_path / "f.py").write_text(FACTORY)
    names = tmp_path / "classes.txt"
    names.write_text("cat\ndog\n\nbird\nfish\n")
    assert read_classes(names) == ["cat", "dog", "bird", "fish"]
    raw, _ = open_model(f"{tmp_path}/f.py:make")
    model, info = open_model(f"{tmp_path}/f.py:make", classes=names)
    fitted = fit_model(model, info, ["fish", "cat", "dog", "bird"], 16)
    torch.testing.assert_close(fitted(X), raw(X)[:, [3, 0, 1, 2]], rtol=0, atol=0)
    with pytest.raises(InputError, match=r"lacks \['cow'\] and has \['bird'\]"):
        align_classes(["cat", "dog", "bird", "fish"], ["cat", "dog", "cow", "fish"], "m")
    names.write_text("cat\ncat\ndog\n")
    with pytest.raises(InputError, match=r"\['cat'\] appear more than once"):
        read_classes(names)


def test_normalize_and_classes_are_refused_for_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "c.txt").write_text("a\nb\n")
    with pytest.raises(InputError, match="--normalize is only for TorchScript"):
        open_model("builtin", normalize="imagenet")
    with pytest.raises(InputError, match="--classes is only for"):
        open_model("builtin", classes=tmp_path / "c.txt")
