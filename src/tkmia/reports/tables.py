"""Summary rows (one per setting × method) as the paper's tables: Markdown and LaTeX."""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable

from tkmia.experiments.summary import SummaryRow
from tkmia.reports.labels import config_label

#: (summary column, table header) in the paper's order, then our extra columns.
TABLE_COLUMNS = [
    ("d_tkacc", "ΔTkAcc"),
    ("d_p_at_k", "ΔP@k"),
    ("d_map_at_k", "ΔmAP@k"),
    ("d_ndcg_at_k", "ΔNDCG@k"),
    ("delta_n", "ΔN"),
    ("aper", "APer"),
    ("linf", "L∞"),
    ("psnr", "PSNR"),
    ("ssim", "SSIM"),
    ("success_rate", "success"),
    ("success_uint8", "success 8-bit"),
    ("mean_iterations", "iters"),
    ("attacked", "attacked"),
    ("skipped", "skipped"),
]
LATEX_HEADERS = {
    "ΔTkAcc": r"$\Delta$TkAcc",
    "ΔP@k": r"$\Delta$P@$k$",
    "ΔmAP@k": r"$\Delta$mAP@$k$",
    "ΔNDCG@k": r"$\Delta$NDCG@$k$",
    "ΔN": r"$\Delta N$",
    "L∞": r"$L_\infty$",
}


def _cell(column: str, value: float) -> str:
    if column in ("attacked", "skipped"):
        return str(int(value))
    if math.isnan(value):
        return "–"
    return f"{value:.2f}" if column in ("mean_iterations", "psnr") else f"{value:.4f}"


def _grouped(rows: Iterable[SummaryRow]) -> dict[str, list[SummaryRow]]:
    groups: dict[str, list[SummaryRow]] = {}
    for row in rows:
        groups.setdefault(row.setting_title, []).append(row)
    return groups


def _method_label(row: SummaryRow, rows: list[SummaryRow]) -> str:
    """The method's title; with its hyper-parameters when the setting has it more than once."""
    same = [r for r in rows if r.config.family == row.config.family]
    return config_label(row.config, detailed=len(same) > 1)


def _marked(row: SummaryRow, marked: Collection[int] | None) -> bool:
    return marked is not None and id(row) in marked


def _measures(row: SummaryRow) -> list[str]:
    return [_cell(column, getattr(row, column)) for column, _ in TABLE_COLUMNS]


def markdown_tables(rows: Iterable[SummaryRow], marked: Iterable[SummaryRow] | None = None) -> str:
    """One Markdown table per setting: methods as rows, the paper's measures as columns.

    Drops (Δ) are clean minus adversarial: smaller drops mean a less noticeable attack.

    Args:
        rows: the summary rows, grouped by setting in the order of their first row.
        marked: rows (the same objects) set in bold with a ✓ (the selected
            configurations); None: no marks.

    Returns:
        The tables, separated by blank lines, ending with a newline.
    """
    ids = None if marked is None else {id(r) for r in marked}
    parts = []
    for title, group in _grouped(rows).items():
        header = "| method | " + " | ".join(h for _, h in TABLE_COLUMNS) + " |"
        rule = "|---|" + "---:|" * len(TABLE_COLUMNS)
        lines = [f"### {title}", "", header, rule]
        for row in group:
            cells = " | ".join(_measures(row))
            label = _method_label(row, group)
            if _marked(row, ids):
                label = f"**{label}** ✓"
            lines.append(f"| {label} | {cells} |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def latex_tables(rows: Iterable[SummaryRow], marked: Iterable[SummaryRow] | None = None) -> str:
    """The same tables in LaTeX with booktabs rules (``\\usepackage{booktabs}``).

    Args:
        rows: the summary rows, as for :func:`markdown_tables`.
        marked: rows whose method name is set in bold.

    Returns:
        One ``table`` environment per setting.
    """
    ids = None if marked is None else {id(r) for r in marked}
    parts = []
    for title, group in _grouped(rows).items():
        headers = [LATEX_HEADERS.get(h, h) for _, h in TABLE_COLUMNS]
        lines = [
            "\\begin{table}[t]",
            "\\centering",
            f"\\caption{{{_latex_escape(title)}}}",
            "\\begin{tabular}{l" + "r" * len(TABLE_COLUMNS) + "}",
            "\\toprule",
            "Method & " + " & ".join(headers) + " \\\\",
            "\\midrule",
        ]
        for row in group:
            cells = " & ".join(cell.replace("–", "--") for cell in _measures(row))
            label = _latex_escape(_method_label(row, group))
            if _marked(row, ids):
                label = f"\\textbf{{{label}}}"
            lines.append(f"{label} & {cells} \\\\")
        lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def _latex_escape(text: str) -> str:
    for char, repl in (
        ("&", r"\&"),
        ("_", r"\_"),
        ("%", r"\%"),
        ("#", r"\#"),
        ("λ", r"$\lambda$"),
        ("∞", r"$\infty$"),
    ):
        text = text.replace(char, repl)
    return text.replace("·", r"$\cdot$")
