"""An evaluation's tables (Markdown, CSV, LaTeX) and its figure: robust precision@k
against ε per attack and for the ensemble (SPEC §7.7)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path

from matplotlib.figure import Figure

from tkmia.experiments.evaluate import ENSEMBLE, RobustRow
from tkmia.files import write_text_atomic
from tkmia.reports.figures import _save
from tkmia.reports.tables import _latex_escape

__all__ = ["eps_text", "render_evaluation", "robust_csv", "robust_figure", "robust_markdown"]

#: (row attribute, header) of the tables, in order
COLUMNS = [
    ("eps", "ε"),
    ("attack", "attack"),
    ("precision", "robust P@k"),
    ("recall", "robust R@k"),
    ("hidden", "ê = 0"),
    ("queries", "queries"),
    ("seconds", "seconds"),
    ("images", "images"),
    ("set_by", "worst case set by"),
]


def eps_text(eps: float, norm: str) -> str:
    """ε as the tables show it: ``8/255`` for an L∞ multiple of 1/255, else ``0.5``."""
    if norm == "linf" and eps > 0 and abs(eps * 255 - round(eps * 255)) < 1e-6:
        return f"{round(eps * 255)}/255"
    return f"{eps:g}"


def _cell(row: RobustRow, column: str) -> str:
    value = getattr(row, column)
    if column == "eps":
        return eps_text(value, row.norm)
    if isinstance(value, str):
        return value
    if column == "images":
        return str(value)
    if math.isnan(value):
        return "–"
    if column in ("queries", "seconds"):
        return f"{value:.0f}" if value >= 10 else f"{value:.1f}"
    return f"{value:.3f}"


def robust_markdown(rows: Sequence[RobustRow]) -> str:
    """A Markdown table: one row per ε × attack, the ensemble after each ε's attacks."""
    lines = ["| " + " | ".join(h for _, h in COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]  # fmt: skip
    for row in rows:
        cells = [_cell(row, c) for c, _ in COLUMNS]
        if row.attack == ENSEMBLE:
            cells = [f"**{c}**" if c else c for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def robust_latex(rows: Sequence[RobustRow]) -> str:
    """The same table as a LaTeX ``tabular``."""
    head = [r"$\varepsilon$", "attack", r"robust P@$k$", r"robust R@$k$", r"$\hat e = 0$",
            "queries", "seconds", "images", "worst case set by"]  # fmt: skip
    lines = [r"\begin{tabular}{ll" + "r" * 6 + "l}", r"\toprule", " & ".join(head) + r" \\",
             r"\midrule"]  # fmt: skip
    for row in rows:
        lines.append(" & ".join(_latex_escape(_cell(row, c)) for c, _ in COLUMNS) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def robust_csv(rows: Sequence[RobustRow]) -> str:
    """Every field of every row, one CSV line each (full precision)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, [f.name for f in fields(RobustRow)], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(asdict(row))
    return buf.getvalue()


def robust_figure(rows: Sequence[RobustRow], path: Path, title: str) -> Path | None:
    """Robust precision@k against ε: one line per attack and the ensemble, each starting at
    the clean value (ε = 0). Drawn on a :class:`~matplotlib.figure.Figure`, never pyplot."""
    clean = [r for r in rows if r.attack == "clean"]
    if not clean:
        return None
    attacks = list(dict.fromkeys(r.attack for r in rows if r.attack != "clean"))
    fig = Figure(figsize=(5.2, 3.4))
    ax = fig.subplots()
    for name in attacks:
        mine = [r for r in rows if r.attack == name]
        xs = [0.0] + [r.eps for r in mine]
        ys = [clean[0].precision] + [r.precision for r in mine]
        style = {"linewidth": 2.4, "color": "black"} if name == ENSEMBLE else {"marker": "o"}
        ax.plot(xs, ys, label=name, **style)
    norm = clean[0].norm
    ax.set_xticks([0.0] + sorted({r.eps for r in rows if r.eps > 0}))
    ax.set_xticklabels([eps_text(x, norm) for x in ax.get_xticks()])
    ax.set_xlabel(f"ε ({'L∞' if norm == 'linf' else 'L2'}, pixels in [0, 1])")
    ax.set_ylabel("robust precision@k")
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path, dpi=120)
    return path


def render_evaluation(
    out: Path, rows: Sequence[RobustRow], title: str, log: Sequence[dict[str, object]] = ()
) -> str:
    """Write ``robust.md``, ``robust.csv``, ``robust.tex``, ``ensemble_log.csv`` and
    ``figures/robust_precision.png``; return the Markdown table."""
    table = robust_markdown(rows)
    intro = (
        "ê: the fewest relevant labels an attack left in the top-k of an image within the "
        "ε-ball; robust P@k = Σê/(k·n), robust R@k = Σê/Σ|Y|; ê = 0: share of images with "
        "every relevant label out of the top-k; queries: model calls per image; the "
        "ensemble takes the worst case per image (set by: the first attack, in the fixed "
        "order, that found it, counted where it is below the clean value).\n\n"
    )
    write_text_atomic(out / "robust.md", f"# tkmia evaluate: {title}\n\n{intro}{table}")
    write_text_atomic(out / "robust.csv", robust_csv(rows))
    write_text_atomic(out / "robust.tex", robust_latex(rows))
    if log:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, list(log[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(log)
        write_text_atomic(out / "ensemble_log.csv", buf.getvalue())
    robust_figure(rows, out / "figures" / "robust_precision.png", title)
    return table
