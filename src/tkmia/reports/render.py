"""`tkmia report DIR`: tables (Markdown, CSV, LaTeX) and figures of a results folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tkmia.errors import InputError


def render(
    out: Path, rows: list[dict[str, Any]] | None = None, classes: list[str] | None = None
) -> str:
    """Write ``summary.md``, ``summary.tex`` and the figures; return the Markdown tables."""
    from tkmia.experiments.runner import collect_rows, write_summary
    from tkmia.reports.figures import example_figure
    from tkmia.reports.tables import latex_tables, markdown_tables, setting_title

    if rows is None:
        rows = collect_rows(out)
        write_summary(out, rows)
    config = json.loads((out / "config.json").read_text())
    classes = classes or config.get("classes")
    text = markdown_tables(rows)
    intro = (
        f"# tkmia results: {config['dataset']}, model {config['model']}\n\n"
        "Drops (Δ) are clean minus adversarial, averaged over the attacked images; "
        "ΔN is the mean number of specified labels removed from the top-k; APer is the "
        "mean L2 norm of the perturbation (pixels in [0, 1]) over the successful images.\n\n"
    )
    _write(out / "summary.md", intro + text)
    _write(out / "summary.tex", latex_tables(rows))
    if classes:
        seen = set()
        for row in rows:
            key = _setting_key(row)
            if key in seen:
                continue
            seen.add(key)
            example_figure(
                out / "examples" / key,
                classes,
                int(row["k"]),
                out / "figures" / f"examples-{key}.png",
                title=setting_title(row),
            )
    return text


def _setting_key(row: dict[str, Any]) -> str:
    from tkmia.experiments.settings import Setting

    if row["scheme"] == "global":
        return Setting("global", int(row["k"]), group=row["group"]).key
    return Setting("random", int(row["k"]), n=int(row["n"]), threshold=int(row["threshold"])).key


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def report_command(args: argparse.Namespace) -> int:
    out = args.dir
    if not (out / "config.json").is_file():
        raise InputError(f"{str(out)!r} is not a tkmia results folder (no config.json)")
    print(render(out))
    print(f"results: {out}")
    return 0
