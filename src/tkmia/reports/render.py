"""`tkmia report DIR`: tables (Markdown, CSV, LaTeX) and figures of a results folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tkmia.errors import InputError
from tkmia.files import write_text_atomic


def _load_rows(out: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows re-derived from the records (and ``summary.csv`` rewritten), or, for a folder
    that holds only a ``summary.csv``, the rows read from it."""
    from tkmia.experiments.runner import collect_rows, read_summary, write_summary

    if (out / "config.json").is_file():
        rows = collect_rows(out)
        write_summary(out, rows)
        return rows, json.loads((out / "config.json").read_text())
    if (out / "summary.csv").is_file():
        rows = read_summary(out / "summary.csv")
        first = rows[0] if rows else {}
        return rows, {"dataset": first.get("dataset", "?"), "model": first.get("model", "?")}
    raise InputError(
        f"{str(out)!r} is not a tkmia results folder (no config.json and no summary.csv)"
    )


def render(
    out: Path,
    rows: list[dict[str, Any]] | None = None,
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
    ``tol`` and ``scope`` override the rule stored in ``out/selection.json``.
    """
    from tkmia.experiments.runner import write_summary
    from tkmia.experiments.selection import has_grid, load_rule, rule_text, select_rows
    from tkmia.reports.figures import example_figure, measure_bars
    from tkmia.reports.tables import latex_tables, markdown_tables, setting_title

    if rows is None:
        rows, config = _load_rows(out)
    else:
        config = json.loads((out / "config.json").read_text())
    classes = classes or config.get("classes")
    rule = load_rule(out)
    tol = rule["tol"] if tol is None else tol
    scope = rule["scope"] if scope is None else scope
    grid = has_grid(rows)
    selected = select_rows(rows, rule["rule"], tol, scope)
    intro = (
        f"# tkmia results: {config['dataset']}, model {config['model']}\n\n"
        "Drops (Δ) are clean minus adversarial, averaged over the attacked images; "
        "ΔN is the mean number of specified labels removed from the top-k; APer is the "
        "mean L2 norm of the perturbation (pixels in [0, 1]) over the successful images, "
        "and so are L∞, PSNR (dB) and SSIM; success 8-bit is the success rate after the "
        "adversarial images are quantised to 8 bits (saved as PNG and read back).\n\n"
    )
    if grid:
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
    write_text_atomic(out / "summary.md", intro + text)
    write_text_atomic(out / "summary.tex", tex)
    measure_bars(selected, out / "figures")
    if classes:
        from tkmia.experiments.settings import MethodConfig

        by_setting: dict[str, list[str]] = {}
        titles: dict[str, tuple[str, int]] = {}
        for row in selected:
            key = _setting_key(row)
            method = MethodConfig.from_dict(row)
            by_setting.setdefault(key, []).append(method.key)
            titles.setdefault(key, (setting_title(row), int(row["k"])))
        for key, methods in by_setting.items():
            title, k = titles[key]
            example_figure(
                out / "examples" / key,
                classes,
                k,
                out / "figures" / f"examples-{key}.png",
                title=title,
                methods=methods,
            )
    return text


def _setting_key(row: dict[str, Any]) -> str:
    from tkmia.experiments.settings import Setting

    if row["scheme"] == "global":
        return Setting("global", int(row["k"]), group=row["group"]).key
    return Setting("random", int(row["k"]), n=int(row["n"]), threshold=int(row["threshold"])).key


def report_command(args: argparse.Namespace) -> int:
    out = args.dir
    if not (out / "config.json").is_file() and not (out / "summary.csv").is_file():
        raise InputError(
            f"{str(out)!r} is not a tkmia results folder (no config.json and no summary.csv)"
        )
    tol = getattr(args, "select_tol", None)
    scope = getattr(args, "select_scope", None)
    if tol is not None or scope is not None:
        from tkmia.experiments.selection import check_rule, load_rule

        rule = load_rule(out)
        check_rule(
            rule["rule"],
            rule["tol"] if tol is None else tol,
            rule["scope"] if scope is None else scope,
        )
    print(render(out, tol=tol, scope=scope))
    print(f"results: {out}")
    return 0
