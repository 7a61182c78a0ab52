"""Summary rows (one per setting × method) as the paper's tables: Markdown and LaTeX."""

from __future__ import annotations

import math
from collections.abc import Iterable
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
    ("success_rate", "success"),
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
    return f"{number:.2f}" if column == "mean_iterations" else f"{number:.4f}"


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


def markdown_tables(rows: Iterable[dict[str, Any]]) -> str:
    """One Markdown table per setting: methods as rows, the paper's measures as columns.

    Drops (Δ) are clean minus adversarial: smaller drops mean a less noticeable attack.
    """
    parts = []
    for title, group in _grouped(rows).items():
        header = "| method | " + " | ".join(h for _, h in TABLE_COLUMNS) + " |"
        rule = "|---|" + "---:|" * len(TABLE_COLUMNS)
        lines = [f"### {title}", "", header, rule]
        for row in group:
            cells = " | ".join(_cell(c, row[c]) for c, _ in TABLE_COLUMNS)
            lines.append(f"| {_method_label(row, group)} | {cells} |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def latex_tables(rows: Iterable[dict[str, Any]]) -> str:
    """The same tables in LaTeX with booktabs rules (``\\usepackage{booktabs}``)."""
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
            cells = " & ".join(_cell(c, row[c]).replace("–", "--") for c, _ in TABLE_COLUMNS)
            lines.append(f"{_latex_escape(_method_label(row, group))} & {cells} \\\\")
        lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def _latex_escape(text: str) -> str:
    for char, repl in (("&", r"\&"), ("_", r"\_"), ("%", r"\%"), ("#", r"\#"), ("λ", r"$\lambda$")):
        text = text.replace(char, repl)
    return text.replace("·", r"$\cdot$")
