"""The defender's audit of a results folder, written out: ``audit.csv``, ``audit.md``,
``audit.tex`` and its figures (see :mod:`tkmia.experiments.audit` for what is computed)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from tkmia.experiments.audit import (
    ALPHA,
    BATCH_SIZES,
    DRAWS,
    LABEL_FREE_MONITOR,
    P_GRID,
    REPORTED_P,
    STATISTICS,
    TARGET_POWER,
    AuditGroup,
    AuditRow,
    audit,
    skipped_batches,
)
from tkmia.experiments.learned_monitor import LEARNED_MONITOR, LearnedAudit, learned_audit
from tkmia.experiments.settings import Setting
from tkmia.files import write_text_atomic
from tkmia.reports.figures import _save as save_figure
from tkmia.reports.labels import config_label, method_rank

CSV_COLUMNS = [
    "setting", "method", "configuration", "monitor", "statistic", "N", "images", "p80",
    "power_p0", *(f"power_p{p}" for p in REPORTED_P), "auroc",
]  # fmt: skip
#: the batch size of the Markdown/LaTeX tables and the power figures, when audited
HEADLINE_N = 100

INTRO = (
    "A monitor watches the mean of a statistic over a batch of N images and alarms at a "
    f"{ALPHA:.0%} false-alarm rate on clean batches (one-sided for the measures, which need "
    "the labels; two-sided for the label-free statistics of the scores). p80: the smallest "
    f"fraction p of attacked images in the batch (grid step 0.01) at which it alarms in "
    f"{TARGET_POWER:.0%} of bootstrap batches (>1: never). AUROC: per image, clean against "
    "adversarial, as max(AUC, 1 - AUC). Batches are drawn with replacement from the attacked "
    "images of the setting (clean versions for the reference); failed attacks count as "
    "attacked."
)


LEARNED_INTRO = (
    "Learned: a logistic regression on the sorted top min(c, 2k+2) sigmoid scores, fitted "
    "on half of the images (seeded split by image) and scored on the other half (its p80 "
    "and AUROC come from that half); its coefficients are in audit-learned.csv."
)


def learned_csv(learned: LearnedAudit) -> str:
    """``audit-learned.csv``: per group, the halves' sizes, the AUROC, the intercept and
    the coefficient of each standardised sorted score (``coef_1``: the largest)."""
    width = max(fit.coef.size for fit in learned.fits.values())
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    head = ["setting", "configuration", "fit_images", "scored_images", "auroc", "intercept"]
    writer.writerow(head + [f"coef_{j + 1}" for j in range(width)])
    for (setting, config), fit in learned.fits.items():
        coef = [_num(float(v)) for v in fit.coef] + [""] * (width - fit.coef.size)
        sizes = [fit.fit_images, fit.clean.size, _num(fit.auroc), _num(fit.intercept)]
        writer.writerow([setting, config, *sizes, *coef])
    return buffer.getvalue()


def setting_title(setting: Setting) -> str:
    """``S1 sevens · k=2`` or ``S2 n=1 t=1 · k=2``."""
    if setting.scheme == "global":
        return f"S1 {setting.group} · k={setting.k}"
    return f"S2 n={setting.n} t={setting.effective_threshold} · k={setting.k}"


def _num(value: float, digits: int = 4) -> str:
    if math.isnan(value):
        return ""
    return "inf" if math.isinf(value) else f"{value:.{digits}g}"


def audit_csv(rows: Sequence[AuditRow]) -> str:
    """The rows as ``audit.csv`` text (:data:`CSV_COLUMNS`; ``p80`` ``inf`` when never
    reached, ``auroc`` empty for the measures)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        powers = [_num(r.power_at(p)) for p in (0.0, *REPORTED_P)]
        writer.writerow(
            [r.setting.key, r.config.method, r.config.key, r.statistic.monitor,
             r.statistic.name, r.batch, r.images, _num(r.p80), *powers, _num(r.auroc)]
        )  # fmt: skip
    return buffer.getvalue()


def _p80_text(value: float) -> str:
    return ">1" if math.isinf(value) else f"{value:.2f}"


def _table_cells(rows: Sequence[AuditRow], batch: int) -> dict[str, list[list[str]]]:
    """``{setting title: [[method, p80 per statistic..., AUROC per label-free...,
    (p80 and AUROC of the learned monitor, when audited)]]}``."""
    grid = len({(r.setting.key, r.config.key) for r in rows}) > len(
        {(r.setting.key, r.config.method) for r in rows}
    )
    picked = sorted(
        (r for r in rows if r.batch == batch), key=lambda r: (method_rank(r.config), r.config.key)
    )
    fixed = [r for r in picked if r.statistic.monitor != LEARNED_MONITOR]
    cells: dict[str, dict[str, list[str]]] = {}
    for r in fixed:
        by_config = cells.setdefault(setting_title(r.setting), {})
        line = by_config.setdefault(r.config.key, [config_label(r.config, detailed=grid)])
        line.append(_p80_text(r.p80))
    for r in fixed:  # AUROC columns after every p80 column
        if r.statistic.monitor == LABEL_FREE_MONITOR:
            cells[setting_title(r.setting)][r.config.key].append(f"{r.auroc:.2f}")
    learned = {
        (setting_title(r.setting), r.config.key): r
        for r in picked
        if r.statistic.monitor == LEARNED_MONITOR
    }
    if learned:
        for title, lines in cells.items():
            for key, line in lines.items():
                got = learned.get((title, key))
                line += [_p80_text(got.p80), f"{got.auroc:.2f}"] if got else ["n/a", "n/a"]
    return {title: list(lines.values()) for title, lines in cells.items()}


def _headers(rows: Sequence[AuditRow] = ()) -> list[str]:
    """The tables' header; the learned monitor's two columns when ``rows`` hold it."""
    free = [s.title for s in STATISTICS if s.monitor == LABEL_FREE_MONITOR]
    head = ["method", *(f"p80 {s.title}" for s in STATISTICS), *(f"AUROC {t}" for t in free)]
    if any(r.statistic.monitor == LEARNED_MONITOR for r in rows):
        head += ["p80 learned", "AUROC learned"]
    return head


def audit_markdown(rows: Sequence[AuditRow], batch: int) -> str:
    """One Markdown table per setting: p80 of every monitor at batch size ``batch``, and
    the AUROC of the label-free statistics."""
    parts = []
    head = _headers([r for r in rows if r.batch == batch])
    for title, lines in _table_cells(rows, batch).items():
        text = [f"### {title} (N = {batch})", "", "| " + " | ".join(head) + " |"]
        text.append("|" + "---|" * len(head))
        text += ["| " + " | ".join(line) + " |" for line in lines]
        parts.append("\n".join(text) + "\n")
    return "\n".join(parts)


def audit_latex(rows: Sequence[AuditRow], batch: int) -> str:
    """The tables of :func:`audit_markdown` as LaTeX ``tabular`` environments."""

    def esc(text: str) -> str:
        return text.replace("#", r"\#").replace(">", r"$>$").replace("λ", r"$\lambda$")

    parts = []
    head = _headers([r for r in rows if r.batch == batch])
    for title, lines in _table_cells(rows, batch).items():
        body = [f"% {title}, N = {batch}", r"\begin{tabular}{l" + "r" * (len(head) - 1) + "}"]
        body += [r"\toprule", " & ".join(esc(h) for h in head) + r" \\", r"\midrule"]
        body += [" & ".join(esc(c) for c in line) + r" \\" for line in lines]
        body += [r"\bottomrule", r"\end{tabular}", ""]
        parts.append("\n".join(body))
    return "\n".join(parts)


def _by_setting(rows: Sequence[AuditRow]) -> dict[str, list[AuditRow]]:
    out: dict[str, list[AuditRow]] = {}
    for r in rows:
        out.setdefault(r.setting.key, []).append(r)
    return out


def _light_axes(axes: np.ndarray, xticks: list[float], yticks: list[float] | None) -> None:
    """Few fixed ticks (drawing many ticks dominates the time of these figures)."""
    for ax in axes.flat:
        ax.set_xticks(xticks)
        ax.set_yticks(yticks or [])
        ax.tick_params(labelsize=7)
        ax.set_xlim(xticks[0], xticks[-1])
        if yticks:
            ax.set_ylim(yticks[0], yticks[-1] * 1.02)


def power_figure(rows: Sequence[AuditRow], batch: int, path: Path) -> Path:
    """Power against the attacked fraction p, one panel per statistic, one line per
    method configuration, for one setting at batch size ``batch``."""
    picked = sorted(
        (r for r in rows if r.batch == batch), key=lambda r: (method_rank(r.config), r.config.key)
    )
    grid = len({r.config.key for r in picked}) > len({r.config.method for r in picked})
    fig = Figure(figsize=(12, 5.6))
    axes = fig.subplots(2, 4, sharex=True, sharey=True)
    for ax, stat in zip(axes.flat, STATISTICS, strict=True):
        for r in (r for r in picked if r.statistic == stat):
            ax.plot(P_GRID, r.power, label=config_label(r.config, detailed=grid), linewidth=1.2)
        ax.axhline(TARGET_POWER, color="grey", linestyle="--", linewidth=0.7)
        ax.axhline(ALPHA, color="grey", linestyle=":", linewidth=0.7)
        side = "no labels" if stat.two_sided else "labels"
        ax.set_title(f"{stat.title} ({side})", fontsize=9)
    _light_axes(axes, [0, 0.5, 1], [0, 0.5, 1])
    for ax in axes[1]:
        ax.set_xlabel("fraction of the batch attacked, p", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("power (alarm rate)", fontsize=8)
    axes[0, 0].legend(fontsize=7, frameon=False)
    fig.suptitle(f"{setting_title(picked[0].setting)}: monitor of the batch mean, N = {batch}")
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.1, top=0.88, wspace=0.08, hspace=0.25)
    save_figure(fig, path, dpi=100)
    return path


def distribution_figure(groups: Sequence[AuditGroup], path: Path) -> Path:
    """Per-image histograms of each label-free statistic, clean against each method's
    adversarial images, for one setting."""
    free = [i for i, s in enumerate(STATISTICS) if s.monitor == LABEL_FREE_MONITOR]
    groups = sorted(groups, key=lambda g: (method_rank(g.config), g.config.key))
    grid = len({g.config.key for g in groups}) > len({g.config.method for g in groups})
    fig = Figure(figsize=(12, 3.2))
    axes = fig.subplots(1, len(free))
    for ax, s in zip(axes, free, strict=True):
        values = np.concatenate([groups[0].clean[s], *(g.adv[s] for g in groups)])
        values = values[np.isfinite(values)]  # NaN or infinite values are not drawn
        lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
        bins = np.linspace(lo, hi if hi > lo else lo + 1, 31)
        if STATISTICS[s].name == "n_above_half":
            bins = np.arange(lo - 0.5, hi + 1.5)
        clean = groups[0].clean[s]
        ax.hist(clean[np.isfinite(clean)], bins=bins, histtype="stepfilled", color="0.8",
                label="clean")  # fmt: skip
        for g in groups:
            label = config_label(g.config, detailed=grid)
            adv = g.adv[s][np.isfinite(g.adv[s])]
            ax.hist(adv, bins=bins, histtype="step", linewidth=1.2, label=label)
        ax.set_title(STATISTICS[s].title, fontsize=9)
        ax.set_xticks(np.linspace(bins[0], bins[-1], 3).round(2))
        ax.tick_params(labelsize=7)
        ax.set_yticks([])
    axes[0].legend(fontsize=7, frameon=False)
    fig.suptitle(f"{setting_title(groups[0].setting)}: per-image label-free statistics")
    fig.subplots_adjust(left=0.02, right=0.99, bottom=0.12, top=0.8, wspace=0.08)
    save_figure(fig, path, dpi=100)
    return path


def write_audit(
    out: Path,
    batch_sizes: Sequence[int] = BATCH_SIZES,
    seed: int = 0,
    draws: int = DRAWS,
    figures: bool = True,
) -> str:
    """Audit ``out`` and write ``audit.csv``, ``audit.md``, ``audit.tex`` and (``figures``)
    ``figures/audit-power-<setting>.png``, ``figures/audit-dist-<setting>.png``.

    With the learned label-free monitor (:mod:`tkmia.experiments.learned_monitor`) where
    the records hold the sorted scores: its rows in ``audit.csv``, two more table columns
    and its coefficients in ``audit-learned.csv``.

    Returns:
        The Markdown tables (at :data:`HEADLINE_N`, else the first batch size), and a note
        per group the learned monitor skipped.

    Raises:
        InputError: see :func:`~tkmia.experiments.audit.audit`.
    """
    rows, groups = audit(out, batch_sizes, seed, draws)
    learned = learned_audit(groups, batch_sizes, seed, draws, 3 * draws)
    rows = rows + learned.rows
    batch = HEADLINE_N if HEADLINE_N in batch_sizes else batch_sizes[0]
    write_text_atomic(out / "audit.csv", audit_csv(rows))
    if learned.fits:
        write_text_atomic(out / "audit-learned.csv", learned_csv(learned))
    text = audit_markdown(rows, batch) + "".join(f"\nNote: {n}" for n in learned.notes)
    settings = f"{draws} bootstrap batches per N (seed {seed}), N in {list(batch_sizes)}."
    skipped = skipped_batches(groups, batch_sizes)
    if skipped:
        text += "\n\nBatch sizes larger than the attacked images are skipped:\n" + "\n".join(
            f"- {line}" for line in skipped
        )
    intro = f"{INTRO} {LEARNED_INTRO if learned.fits else ''}"
    write_text_atomic(out / "audit.md", f"# tkmia audit\n\n{intro} {settings}\n\n{text}")
    write_text_atomic(
        out / "audit.tex", f"% tkmia audit: p80 and AUROC\n{audit_latex(rows, batch)}"
    )
    if figures:
        for key, setting_rows in _by_setting(rows).items():
            power_figure(setting_rows, batch, out / "figures" / f"audit-power-{key}.png")
            members = [g for g in groups if g.setting.key == key]
            distribution_figure(members, out / "figures" / f"audit-dist-{key}.png")
    return text
