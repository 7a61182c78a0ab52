"""Summary rows (one per setting × method) as the paper's tables: Markdown and LaTeX."""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from typing import Any

from tkmia.experiments.settings import METHOD_TITLES

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


def setting_title(row: dict[str, Any]) -> str:
    """A heading for the setting a summary row belongs to."""
    k = row["k"]
    if row["scheme"] == "global":
        return f"{row['dataset']} · S1 global · group {row['group']} · k={k}"
    return f"{row['dataset']} · S2 random · n={row['n']} · t={row['threshold']} · k={k}"


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _cell(column: str, value: Any) -> str:
    if column in ("attacked", "skipped"):
        return str(int(_number(value)))
    number = _number(value)
    if math.isnan(number):
        return "–"
    return f"{number:.2f}" if column in ("mean_iterations", "psnr") else f"{number:.4f}"


def _grouped(rows: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(setting_title(row), []).append(row)
    return groups


def _method_label(row: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    title = METHOD_TITLES.get(row["method"], row["method"])
    same = [r for r in rows if r["method"] == row["method"]]
    if len(same) > 1:  # a grid: say which hyper-parameters this row used
        if row["method"] == "kfool":
            return f"{title} (it={row['max_iter']})"
        return f"{title} (lr={row['lr']}, λ={row['lam']}, it={row['max_iter']})"
    return title


def _marked(row: dict[str, Any], marked: Collection[int] | None) -> bool:
    return marked is not None and id(row) in marked


def markdown_tables(
    rows: Iterable[dict[str, Any]], marked: Iterable[dict[str, Any]] | None = None
) -> str:
    """One Markdown table per setting: methods as rows, the paper's measures as columns.

    Drops (Δ) are clean minus adversarial: smaller drops mean a less noticeable attack.
    Rows that are in ``marked`` (the selected configurations) are set in bold.
    """
    ids = None if marked is None else {id(r) for r in marked}
    parts = []
    for title, group in _grouped(rows).items():
        header = "| method | " + " | ".join(h for _, h in TABLE_COLUMNS) + " |"
        rule = "|---|" + "---:|" * len(TABLE_COLUMNS)
        lines = [f"### {title}", "", header, rule]
        for row in group:
            cells = " | ".join(_cell(c, row.get(c)) for c, _ in TABLE_COLUMNS)
            label = _method_label(row, group)
            if _marked(row, ids):
                label = f"**{label}** ✓"
            lines.append(f"| {label} | {cells} |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def latex_tables(
    rows: Iterable[dict[str, Any]], marked: Iterable[dict[str, Any]] | None = None
) -> str:
    """The same tables in LaTeX with booktabs rules (``\\usepackage{booktabs}``);
    rows in ``marked`` have their method name in bold."""
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
            cells = " & ".join(_cell(c, row.get(c)).replace("–", "--") for c, _ in TABLE_COLUMNS)
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
