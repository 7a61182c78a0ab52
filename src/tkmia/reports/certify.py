"""A certification run's tables (Markdown, LaTeX) and figure (certified precision@k and
recall@k against the L2 radius, one curve per σ)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

from tkmia.experiments.certify import CertifyRow, EmpiricalRow
from tkmia.files import write_text_atomic
from tkmia.reports.figures import _save

#: (row attribute, Markdown header, LaTeX header), in order
COLUMNS = [
    ("radius", "R", "$R$"),
    ("certified_precision", "certified P@k", "certified P@$k$"),
    ("certified_recall", "certified R@k", "certified R@$k$"),
    ("abstained", "e(R) = 0", "$e(R) = 0$"),
]


def _cells(row: CertifyRow) -> list[str]:
    return [f"{row.radius:g}"] + [f"{getattr(row, c):.3f}" for c, _, _ in COLUMNS[1:]]


def _by_sigma(rows: Sequence[CertifyRow]) -> dict[float, list[CertifyRow]]:
    groups: dict[float, list[CertifyRow]] = {}
    for row in rows:
        groups.setdefault(row.sigma, []).append(row)
    return groups


def _title(group: list[CertifyRow]) -> str:
    first = group[0]
    return (
        f"σ = {first.sigma:g}, k = {first.k}, {first.images} images: smoothed clean "
        f"P@k {first.smoothed_precision:.3f}, R@k {first.smoothed_recall:.3f}"
    )


def markdown_table(rows: Sequence[CertifyRow]) -> str:
    """One Markdown table per σ: a row per radius."""
    parts = []
    for group in _by_sigma(rows).values():
        parts.append("\n".join([
            f"### {_title(group)}",
            "",
            "| " + " | ".join(h for _, h, _ in COLUMNS) + " |",
            "|" + "---:|" * len(COLUMNS),
            *("| " + " | ".join(_cells(row)) + " |" for row in group),
        ]))  # fmt: skip
    return "\n\n".join(parts) + "\n"


def latex_table(rows: Sequence[CertifyRow]) -> str:
    """The same tables in LaTeX (booktabs)."""
    parts = []
    for group in _by_sigma(rows).values():
        title = _title(group).replace("σ", r"$\sigma$").replace("@", "@")
        parts.append("\n".join([
            "\\begin{table}[t]", "\\centering", f"\\caption{{{title}}}",
            "\\begin{tabular}{" + "r" * len(COLUMNS) + "}", "\\toprule",
            " & ".join(h for _, _, h in COLUMNS) + " \\\\", "\\midrule",
            *(" & ".join(_cells(row)) + " \\\\" for row in group),
            "\\bottomrule", "\\end{tabular}", "\\end{table}",
        ]))  # fmt: skip
    return "\n\n".join(parts) + "\n"


def certify_figure(rows: Sequence[CertifyRow], out_png: Path) -> Path:
    """Certified P@k and R@k against R, one curve per σ."""
    fig = Figure(figsize=(9, 3.6))
    axes = fig.subplots(1, 2)
    for sigma, group in _by_sigma(rows).items():
        radii = [row.radius for row in group]
        for ax, column in zip(axes, ("certified_precision", "certified_recall"), strict=True):
            ax.plot(radii, [getattr(row, column) for row in group], marker="o", ms=3,
                    label=f"σ = {sigma:g}")  # fmt: skip
    for ax, name in zip(axes, ("certified precision@k", "certified recall@k"), strict=True):
        ax.set_xlabel("L2 radius R (pixels in [0, 1])")
        ax.set_ylabel(name)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"tkmia certify · k = {rows[0].k}", fontsize=10)
    fig.tight_layout()
    _save(fig, out_png, dpi=110)
    return out_png


def render_certify(out: Path, rows: Sequence[CertifyRow], title: str) -> str:
    """Write ``summary.md``, ``summary.tex`` and ``figures/certify.png``; return the
    Markdown tables."""
    text = markdown_table(rows)
    intro = (
        "e(R): the number of relevant labels MultiGuard's Theorem 1 guarantees in the "
        "smoothed top-k for every L2 perturbation of norm <= R (Clopper-Pearson bounds, "
        "Bonferroni over the labels, at level alpha). certified P@k = Σ e(R) / (k·n), "
        "R@k = Σ e(R) / Σ|Y|; e(R) = 0: the share of images certified nothing.\n\n"
    )
    write_text_atomic(out / "summary.md", f"# tkmia certify: {title}\n\n{intro}{text}")
    write_text_atomic(out / "summary.tex", latex_table(rows))
    certify_figure(rows, out / "figures" / "certify.png")
    return text


def render_empirical(out: Path, rows: Sequence[EmpiricalRow]) -> str:
    """Write ``empirical.md`` and ``figures/certify-vs-attack.png`` (certified precision@k
    beside the precision@k the smoothed model keeps under attack); return the table."""
    lines = [
        "| σ | R | certified P@k (lower bound) | attacked P@k (upper bound) | violations |",
        "|---:|---:|---:|---:|---:|",
        *(f"| {r.sigma:g} | {r.radius:g} | {r.certified_precision:.3f} | "
          f"{r.empirical_precision:.3f} | {r.violations} of {r.images} |" for r in rows),
    ]  # fmt: skip
    text = "\n".join(lines) + "\n"
    write_text_atomic(out / "empirical.md", "# Certified against attacked\n\n" + text)
    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.subplots()
    for sigma in dict.fromkeys(r.sigma for r in rows):
        group = [r for r in rows if r.sigma == sigma]
        radii = [r.radius for r in group]
        line = ax.plot(radii, [r.certified_precision for r in group], marker="o", ms=3,
                       label=f"σ = {sigma:g}: certified")[0]  # fmt: skip
        ax.plot(radii, [r.empirical_precision for r in group], marker="s", ms=3, ls="--",
                color=line.get_color(), label=f"σ = {sigma:g}: under attack")  # fmt: skip
    ax.set_xlabel("L2 radius R (pixels in [0, 1])")
    ax.set_ylabel(f"precision@{rows[0].k} of the smoothed model")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, out / "figures" / "certify-vs-attack.png", dpi=110)
    return text
