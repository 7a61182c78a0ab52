"""The README's Python example runs as written and says what it claims."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs() -> None:
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "the README has no Python example"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(blocks[0], "README.md", "exec"), {})  # noqa: S102
    match = re.fullmatch(r"success ([\d.]+), ΔN ([\d.-]+), ΔNDCG@2 ([\d.-]+)\n", out.getvalue())
    assert match, out.getvalue()
    success, removed, ndcg_drop = (float(g) for g in match.groups())
    assert success >= 0.9 and removed >= 0.9 and ndcg_drop < 0.3


def test_readme_custom_attack_runs_through_the_engine() -> None:
    """ "Write your own attack": at most 20 lines, runs as written, batched and early-exiting."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Write your own attack") :]
    block = re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]
    assert len(block.strip().splitlines()) <= 20
    out, namespace = io.StringIO(), {}
    with contextlib.redirect_stdout(out):
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
    match = re.fullmatch(r"success ([\d.]+), mean iterations ([\d.]+)\n", out.getvalue())
    assert match, out.getvalue()
    assert float(match.group(1)) >= 0.9
    res = namespace["res"]
    assert res.success.shape[0] > 16  # more images than the working set: refilled slots
    # every image stopped at its own first success (early exit), not at max_iter
    assert int(res.iterations.min()) < int(res.iterations.max()) < 300


def test_readme_code_layout_lists_every_module() -> None:
    """The module map under "Code layout" names exactly the modules of ``src/tkmia``."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Code layout") :]
    block = re.findall(r"```\n(.*?)```", section, flags=re.S)[0]
    listed: set[str] = set()
    folder = ""
    for line in block.splitlines()[1:]:
        head = re.match(r"  (\w+)/\s", line)
        if head:
            folder = head.group(1) + "/"
        elif not line.startswith("    "):
            folder = ""
        listed |= {folder + name for name in re.findall(r"\b(\w+\.py)\b", line)}
    package = README.parent / "src" / "tkmia"
    actual = {
        str(p.relative_to(package))
        for p in package.rglob("*.py")
        if p.name not in ("__init__.py", "__main__.py") or p.parent.name == "cli"
    }
    assert listed == actual
