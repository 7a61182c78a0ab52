"""A results folder's tables (Markdown, CSV, LaTeX) and figures, from its summary rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tkmia.errors import InputError
from tkmia.experiments.selection import has_grid, load_rule, rule_text, select_rows
from tkmia.experiments.settings import MethodConfig
from tkmia.experiments.summary import SummaryRow, collect_rows, read_summary, write_summary
from tkmia.files import write_text_atomic
from tkmia.reports.figures import example_figure, measure_bars
from tkmia.reports.tables import latex_tables, markdown_tables

INTRO = (
    "Drops (Δ) are clean minus adversarial, averaged over the attacked images; "
    "ΔN is the mean number of specified labels removed from the top-k; APer is the "
    "mean L2 norm of the perturbation (pixels in [0, 1]) over the successful images, "
    "and so are L∞, PSNR (dB) and SSIM; success 8-bit is the success rate after the "
    "adversarial images are quantised to 8 bits (saved as PNG and read back). "
    "attacked: the first eligible images of the split (at most --samples); skipped: the "
    "ineligible images met before the last attacked one (every ineligible image when fewer "
    "were eligible), by the setting's rule (S1: |Y| >= k + |S| and some label of S in the "
    "clean top-k; S2: at least n relevant labels in the clean top-k and |Y| >= k + n)."
)


def load_rows(out: Path) -> tuple[list[SummaryRow], dict[str, Any]]:
    """The rows of a results folder and its configuration.

    Rows are re-derived from the records (and ``summary.csv`` rewritten), or, for a
    folder that holds only a ``summary.csv``, read from it (the configuration then has
    just ``dataset`` and ``model``, ``"?"`` when the file has no rows).

    Raises:
        InputError: ``out`` has neither ``config.json`` nor ``summary.csv``, or the
            ``summary.csv`` is malformed.
    """
    if (out / "config.json").is_file():
        rows = collect_rows(out)
        write_summary(out, rows)
        return rows, json.loads((out / "config.json").read_text())
    if (out / "summary.csv").is_file():
        rows = read_summary(out / "summary.csv")
        first = rows[0] if rows else None
        return rows, {
            "dataset": first.dataset if first else "?",
            "model": first.model if first else "?",
        }
    raise InputError(
        f"{str(out)!r} is not a tkmia results folder (no config.json and no summary.csv)"
    )


def render(
    out: Path,
    rows: list[SummaryRow] | None = None,
    classes: list[str] | None = None,
    *,
    tol: float | None = None,
    scope: str | None = None,
) -> str:
    """Write the tables and figures of ``out``; return the Markdown tables (to print).

    Writes ``summary.md`` and ``summary.tex`` (one table per setting, methods as rows),
    ``selected.csv`` when some method was run with several configurations (the rows the
    selection rule picks, same columns as ``summary.csv``; they are in bold in the
    tables), ``figures/bars-<measure>.png`` (one grouped bar chart per measure, the
    selected configurations) and ``figures/examples-<setting>.png`` (example images).

    Args:
        out: a results folder.
        rows: its summary rows (default: see :func:`load_rows`).
        classes: the label names for the example figures (default: ``config.json``'s;
            none: no example figures).
        tol, scope: override the selection rule stored in ``out/selection.json``.

    Returns:
        The Markdown tables (without the heading and introduction of ``summary.md``).

    Raises:
        InputError: see :func:`load_rows`; an invalid ``tol`` or ``scope``.
    """
    if rows is None:
        rows, config = load_rows(out)
    else:
        config = json.loads((out / "config.json").read_text())
    rule = load_rule(out)
    tol = rule["tol"] if tol is None else tol
    scope = rule["scope"] if scope is None else scope
    selected = select_rows(rows, rule["rule"], tol, scope)
    if has_grid(rows):
        stated = f"selected by rule: {rule_text(rule['rule'], tol, scope)}"
        write_summary(out, selected, name="selected.csv")
        text = (
            f"{stated}\n\n## Selected configurations\n\n{markdown_tables(selected)}\n"
            f"## All configurations (selected in bold)\n\n{markdown_tables(rows, selected)}"
        )
        tex = (
            f"% {stated}\n% selected configurations\n{latex_tables(selected)}\n"
            f"% all configurations (selected in bold)\n{latex_tables(rows, selected)}"
        )
    else:
        stale = out / "selected.csv"
        if stale.is_file():
            stale.unlink()
        text = markdown_tables(rows)
        tex = latex_tables(rows)
    heading = f"# tkmia results: {config['dataset']}, model {config['model']}\n\n"
    write_text_atomic(out / "summary.md", heading + INTRO + "\n\n" + text)
    write_text_atomic(out / "summary.tex", tex)
    measure_bars(selected, out / "figures")
    classes = classes or config.get("classes")
    if classes:
        _example_figures(out, selected, classes)
    return text


def _example_figures(out: Path, rows: list[SummaryRow], classes: list[str]) -> None:
    """``figures/examples-<setting>.png`` for every setting of ``rows``, their methods."""
    configs: dict[str, list[MethodConfig]] = {}
    first: dict[str, SummaryRow] = {}
    for row in rows:
        configs.setdefault(row.setting_key, []).append(row.config)
        first.setdefault(row.setting_key, row)
    for key, methods in configs.items():
        example_figure(
            out / "examples" / key,
            classes,
            first[key].setting.k,
            out / "figures" / f"examples-{key}.png",
            methods,
            title=first[key].setting_title,
        )
