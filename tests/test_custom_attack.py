"""Your own attack in ``tkmia run`` (issue 35, C): the docs/attacks.md example, saved as a
file, runs through ``tkmia run`` as written there; ``pkg.mod:Class`` works too; ``--set``
and the class's signature give its hyper-parameters; mistakes are one line.

The reference for the numbers is the same attack called in Python on the same images.
"""

from __future__ import annotations

import csv
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from tkmia.cli import main
from tkmia.errors import InputError
from tkmia.experiments import methods
from tkmia.experiments.custom import parse_sets, register_custom
from tkmia.experiments.methods import REGISTRY

DOC = Path(__file__).resolve().parents[1] / "docs" / "attacks.md"


@pytest.fixture(autouse=True)
def _registry_restored() -> Iterator[None]:
    """The registry as it was: the attacks registered here do not leak into other tests."""
    saved = dict(methods._METHODS)
    yield
    methods._METHODS.clear()
    methods._METHODS.update(saved)


def _docs_attack(folder: Path) -> Path:
    """The imports and the class of the docs' example, saved as ``hide_best.py``."""
    text = DOC.read_text(encoding="utf-8")
    code = re.search(r"```python\n(import torch.*?)```", text, re.S)
    assert code is not None
    source = code.group(1).split("\nmodel, data")[0]
    path = folder / "hide_best.py"
    path.write_text(source, encoding="utf-8")
    return path


def _docs_command() -> list[str]:
    text = DOC.read_text(encoding="utf-8")
    found = re.search(r"^(tkmia run --methods hide_best\.py:HideBest.*?)\n```", text, re.S | re.M)
    assert found is not None
    return shlex.split(found.group(1).replace("\\\n", " "))[1:]


def test_the_documented_attack_runs_through_tkmia_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _docs_attack(tmp_path)
    monkeypatch.chdir(tmp_path)
    args = _docs_command()
    args[args.index("--samples") + 1] = "4"  # a smaller run than the docs' (time)
    assert main([*args, "--out", "out"]) == 0, capsys.readouterr().err
    rows = list(csv.DictReader((tmp_path / "out" / "summary.csv").open()))
    assert [r["method"] for r in rows] == ["HideBest"]
    row = rows[0]
    assert (row["lr"], row["lam"], row["max_iter"]) == ("0.001", "0.001", "300")
    assert int(row["attacked"]) == 4 and 0.0 <= float(row["success_rate"]) <= 1.0
    assert "HideBest" in capsys.readouterr().out


def test_a_module_class_with_set_and_the_mistakes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "attacks.py").write_text(
        _docs_attack(tmp_path).read_text()
        + "\n\nclass Margin(HideBest):\n"
        + "    def __init__(self, model, k, margin=0.1, lr=1e-3, lam=0.0, max_iter=50, **kw):\n"
        + "        super().__init__(model, k, lr, lam, max_iter, **kw)\n"
        + "        self.margin = margin\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    name = register_custom("mypkg.attacks:Margin", parse_sets(["margin=0.5"]))
    assert name == "Margin-margin0.5"
    spec = REGISTRY[name]
    assert dict(spec.defaults) == {"lr": 1e-3, "lam": 0.0, "max_iter": 50}  # **kw: no more
    assert spec.loss_based and not spec.targeted
    with pytest.raises(InputError, match=r"has no default for \['lr', 'lam', 'max_iter'\]"):
        register_custom("mypkg.attacks:HideBest", {})
    with pytest.raises(InputError, match=r"--set \['nope'\]: Margin takes no such argument"):
        register_custom("mypkg.attacks:Margin", {"nope": 1})
    with pytest.raises(InputError, match="not a subclass of tkmia.attacks.Attack"):
        register_custom("mypkg.attacks:torch", {})
    with pytest.raises(InputError, match="name=value"):
        parse_sets(["lr"])


def test_set_without_a_class_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--methods", "tkmia", "--set", "lr=1", "--samples", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--set is for your own attack class" in err[0]
