"""A universal run's tables (Markdown, LaTeX) and figure (δ and images before/after)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure
from safetensors.torch import load_file

from tkmia.experiments.universal import UniversalRow, fit_key
from tkmia.files import write_text_atomic
from tkmia.reports.figures import _draw_image_row, _img, _save
from tkmia.reports.tables import LATEX_HEADERS, _latex_escape

TITLES = {"tkmia": "TkMIA", "tkmlapu": "TkML-AP-U"}
#: (row attribute, header) of a table, in order
COLUMNS = [
    ("eps", "ε"),
    ("universal_success", "success"),
    ("d_tkacc", "ΔTkAcc"),
    ("d_p_at_k", "ΔP@k"),
    ("d_map_at_k", "ΔmAP@k"),
    ("d_ndcg_at_k", "ΔNDCG@k"),
    ("delta_n", "ΔN"),
    ("aper", "APer"),
    ("n_fit", "fitted on"),
    ("attacked", "evaluated"),
    ("fit_seconds", "fit s"),
]


def _cell(column: str, value: float) -> str:
    if column in ("n_fit", "attacked"):
        return str(int(value))
    if math.isnan(value):
        return "–"
    if column == "eps":
        return f"{value:g}"
    return f"{value:.0f}" if column == "fit_seconds" else f"{value:.3f}"


def _by_setting(rows: Sequence[UniversalRow]) -> dict[str, list[UniversalRow]]:
    groups: dict[str, list[UniversalRow]] = {}
    for row in rows:
        title = f"{row.dataset} · universal · S1 group {row.group} · k={row.k}"
        groups.setdefault(title, []).append(row)
    return groups


def _cells(row: UniversalRow) -> list[str]:
    return [TITLES[row.objective]] + [_cell(c, getattr(row, c)) for c, _ in COLUMNS]


def markdown_table(rows: Sequence[UniversalRow]) -> str:
    """One Markdown table per (group, k): a row per objective and ε."""
    parts = []
    for title, group in _by_setting(rows).items():
        lines = [
            f"### {title}",
            "",
            "| objective | " + " | ".join(h for _, h in COLUMNS) + " |",
            "|---|" + "---:|" * len(COLUMNS),
            *("| " + " | ".join(_cells(row)) + " |" for row in group),
        ]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def latex_table(rows: Sequence[UniversalRow]) -> str:
    """The same tables in LaTeX (booktabs)."""
    parts = []
    for title, group in _by_setting(rows).items():
        headers = [LATEX_HEADERS.get(h, h).replace("ε", r"$\varepsilon$") for _, h in COLUMNS]
        lines = [
            "\\begin{table}[t]",
            "\\centering",
            f"\\caption{{{_latex_escape(title)}}}",
            "\\begin{tabular}{l" + "r" * len(COLUMNS) + "}",
            "\\toprule",
            "Objective & " + " & ".join(headers) + " \\\\",
            "\\midrule",
            *(" & ".join(_cells(row)).replace("–", "--") + " \\\\" for row in group),
            "\\bottomrule",
            "\\end{tabular}",
            "\\end{table}",
        ]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def universal_figure(
    examples: Path, setting_key: str, rows: Sequence[UniversalRow], classes: list[str],
    out_png: Path,
) -> Path | None:  # fmt: skip
    """δ of every objective at the largest ε of a setting (amplified to the full range), then
    the saved images: clean, and for each objective ``clip(x + δ) − x`` and the
    adversarial image, with their top-k labels and measures.

    Args:
        examples: the run's ``examples`` folder.
        setting_key: the setting's folder in it.
        rows: the setting's rows.
        classes: the label names.
        out_png: where to write the figure.

    Returns:
        ``out_png``, or None when nothing was saved.
    """
    eps = max(row.eps for row in rows)
    objectives = list(dict.fromkeys(row.objective for row in rows if row.eps == eps))
    paths = [examples / setting_key / f"{fit_key(o, eps)}.safetensors" for o in objectives]
    data = [(TITLES[o], load_file(str(p))) for o, p in zip(objectives, paths, strict=True)
            if p.is_file()]  # fmt: skip
    if not data:
        return None
    n_img = min(d["clean"].shape[0] for _, d in data)
    cols = 1 + 2 * len(data)
    fig = Figure(figsize=(2.3 * cols, 2.9 * (n_img + 1)))
    axes = fig.subplots(n_img + 1, cols, squeeze=False)
    for m, (title, d) in enumerate(data):
        delta = d["delta"]
        amp = delta.abs().max().clamp(min=1e-12)
        ax = axes[0][2 + 2 * m]
        ax.imshow(_img(delta / (2 * amp) + 0.5))
        ax.set_title(f"{title}: universal δ\n×{0.5 / float(amp):.0f}", fontsize=7)
        ax.set_xlabel(f"L2 {float(delta.norm()):.2f} (ε = {eps:g})", fontsize=7)
    k = rows[0].k
    for i in range(n_img):
        _draw_image_row(axes[i + 1], data, i, k, classes)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in [axes[0][0]] + [axes[0][1 + 2 * m] for m in range(len(data))]:
        ax.set_axis_off()
    title = f"{rows[0].dataset} · universal · group {rows[0].group} · k={k} · ε={eps:g}"
    fig.suptitle(title + "   (★ specified, ✓ relevant, ✗ irrelevant)", fontsize=9)
    fig.tight_layout()
    _save(fig, out_png, dpi=110)
    return out_png


def render_universal(out: Path, rows: Sequence[UniversalRow], classes: list[str]) -> str:
    """Write ``summary.md``, ``summary.tex`` and ``figures/universal-<setting>.png``;
    return the Markdown tables."""
    text = markdown_table(rows)
    intro = (
        "One perturbation δ per row, fitted on the eligible images of the fitting split and "
        "applied to every eligible image of the evaluation split as clip(x + δ, 0, 1). "
        "success: the S1 rule per image; drops are clean minus adversarial, averaged over "
        "the evaluated images; APer: mean L2 of clip(x + δ) − x over the fooled images; "
        "fit s: wall seconds of the fit.\n\n"
    )
    write_text_atomic(out / "summary.md", f"# tkmia universal: {rows[0].dataset if rows else '?'}"
                      f"\n\n{intro}{text}")  # fmt: skip
    write_text_atomic(out / "summary.tex", latex_table(rows))
    keys: dict[str, list[UniversalRow]] = {}
    for row in rows:
        keys.setdefault(row.setting_key, []).append(row)
    for key, group in keys.items():
        universal_figure(out / "examples", key, group, classes,
                         out / "figures" / f"universal-{key}.png")  # fmt: skip
    return text
