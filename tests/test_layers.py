"""Imports run one way, down the layers (issue 16, point 3).

Every module under ``src/tkmia`` is read with :mod:`ast`; every import, at any depth
(function-local ones included, and a string passed to ``importlib.import_module``), must
name a unit that :data:`MAY_IMPORT` allows. A unit is a top-level module or package of
tkmia (``metrics``, ``attacks``, ...); a unit may always import itself.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

#: the package under test: this repository's source tree
PACKAGE = Path(__file__).resolve().parents[1] / "src" / "tkmia"

# ------------------------------------------------------------------ the allowed directions
FOUNDATION = {"errors", "files", "runtime", "normalize", "outputs"}
MATH = FOUNDATION | {"metrics", "losses", "score_stats", "certificate"}
CORE = MATH | {"protocol"}
LIBRARY = CORE | {"attacks", "data", "models", "training"}

#: unit → the units it may import, bottom layer first.
MAY_IMPORT: dict[str, set[str]] = {
    "errors": FOUNDATION,
    "files": FOUNDATION,
    "runtime": FOUNDATION,
    "normalize": FOUNDATION,
    "outputs": FOUNDATION,
    "metrics": MATH,
    "losses": MATH,
    "score_stats": MATH,
    "certificate": MATH,
    "protocol": CORE,
    "attacks": CORE,
    "data": CORE,  # not attacks or models: datasets know nothing of them
    "models": CORE,  # not attacks or data
    "training": CORE | {"data", "models"},
    "experiments": LIBRARY,  # never reports or cli
    "reports": LIBRARY | {"experiments"},  # never cli
    "cli": LIBRARY | {"experiments", "reports"},
}
#: ``tkmia/__init__.py`` and ``tkmia/__main__.py`` may import anything.
ANYTHING = {"__init__", "__main__"}

#: (importing module, imported module) pairs that break the rule while code is being moved;
#: none today. The test fails on a stale pair.
ALLOWED_FOR_NOW: set[tuple[str, str]] = set()

_MODULE_NAME = re.compile(r"tkmia(\.\w+)+")


@dataclass(frozen=True)
class Violation:
    """``module`` (dotted) imports ``imported`` at ``line``: a unit its unit may not use."""

    module: str
    line: int
    imported: str

    def __str__(self) -> str:
        return f"{self.module} line {self.line} imports {self.imported}"


def unit_of(module: str) -> str:
    """``tkmia.attacks.base`` → ``attacks``; ``tkmia`` (the package itself) → ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute dotted name a (possibly relative) ``from ... import`` reads from."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imported_modules(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """Every tkmia module that ``source`` (the text of ``module``) imports, with its line.

    ``from tkmia import metrics`` counts as importing ``tkmia.metrics``; a string constant
    that is exactly a tkmia module name (what ``importlib.import_module`` takes) counts too.
    """
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            origin = _resolve(node, module, is_package)
            if origin == "tkmia":
                found += [(node.lineno, f"tkmia.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, origin))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if _MODULE_NAME.fullmatch(node.value):
                found.append((node.lineno, node.value))
    return [(line, name) for line, name in found if name.split(".")[0] == "tkmia"]


def violations(source: str, module: str, is_package: bool = False) -> list[Violation]:
    """The imports of ``module`` (dotted name, text ``source``) that run up the layers."""
    unit = unit_of(module)
    if unit in ANYTHING:
        return []
    allowed = MAY_IMPORT[unit] | {unit}
    found = []
    for line, name in imported_modules(source, module, is_package):
        target = unit_of(name)
        if target != "__init__" and target not in allowed:
            found.append(Violation(module, line, name))
    return sorted(found, key=lambda v: (v.line, v.imported))


def _modules() -> list[tuple[str, Path]]:
    modules = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules.append((".".join(parts), path))
    return modules


# ------------------------------------------------------------------ the tests
def test_every_unit_is_in_the_table() -> None:
    units = {unit_of(module) for module, _ in _modules()}
    assert units - ANYTHING <= set(MAY_IMPORT), sorted(units - ANYTHING - set(MAY_IMPORT))
    for unit, allowed in MAY_IMPORT.items():
        assert allowed <= set(MAY_IMPORT), (unit, sorted(allowed - set(MAY_IMPORT)))


def test_no_import_runs_back_up_the_layers() -> None:
    found = []
    for module, path in _modules():
        is_package = path.name == "__init__.py"
        name = module.removesuffix(".__init__")
        found += violations(path.read_text(encoding="utf-8"), name, is_package)
    unexpected = [v for v in found if (v.module, v.imported) not in ALLOWED_FOR_NOW]
    assert not unexpected, "imports that run back up the layers:\n" + "\n".join(
        map(str, unexpected)
    )
    stale = ALLOWED_FOR_NOW - {(v.module, v.imported) for v in found}
    assert not stale, f"ALLOWED_FOR_NOW lists pairs that no longer occur: {sorted(stale)}"


def test_the_checker_finds_upward_imports_at_any_depth() -> None:
    source = (
        "import torch\n"
        "from tkmia.errors import InputError\n"
        "from tkmia import losses\n"
        "def f():\n"
        "    from tkmia.experiments.runner import run\n"
        "    if True:\n"
        "        import tkmia.cli\n"
        "    return importlib.import_module('tkmia.reports.render')\n"
        "from ..models import builtin\n"
        "from . import pixels\n"
    )
    found = violations(source, "tkmia.attacks.engine")
    assert [str(v) for v in found] == [
        "tkmia.attacks.engine line 5 imports tkmia.experiments.runner",
        "tkmia.attacks.engine line 7 imports tkmia.cli",
        "tkmia.attacks.engine line 8 imports tkmia.reports.render",
        "tkmia.attacks.engine line 9 imports tkmia.models",
    ]


def test_the_checker_allows_downward_and_same_unit_imports() -> None:
    source = "from tkmia.attacks.base import Attack\nfrom tkmia import metrics, data\n"
    assert violations(source, "tkmia.experiments.runner") == []
    assert [str(v) for v in violations(source, "tkmia.models.builtin")] == [
        "tkmia.models.builtin line 1 imports tkmia.attacks.base",
        "tkmia.models.builtin line 2 imports tkmia.data",
    ]
    assert violations("from tkmia.reports import tables\n", "tkmia.experiments.x") != []
    assert violations("from tkmia.cli import main\n", "tkmia.reports.render") != []
    assert violations("from tkmia.cli import main\n", "tkmia.__main__") == []
