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
