"""Figures: the paper's Fig. 2 and 3 (clean image, perturbation, adversarial image, and
each method's top-k labels with the four measures before and after), and one grouped bar
chart per measure comparing the methods across settings."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from safetensors.torch import load_file

from tkmia.experiments.records import MEASURES
from tkmia.experiments.settings import MethodConfig
from tkmia.experiments.summary import SummaryRow
from tkmia.files import atomic_path
from tkmia.reports.labels import config_label, method_rank

SHORT = {"tkacc": "TkAcc", "p_at_k": "P@k", "map_at_k": "AP@k", "ndcg_at_k": "NDCG@k"}


def _img(t: torch.Tensor):
    return t.permute(1, 2, 0).clamp(0, 1).numpy()


def _topk_text(
    scores: torch.Tensor, labels: torch.Tensor, spec: torch.Tensor, k: int, classes: list[str]
) -> str:
    """Top-k labels, marked ✓ relevant, ✗ irrelevant, ★ specified."""
    names = []
    for j in scores.topk(k).indices.tolist():
        mark = "★" if spec[j] else ("✓" if labels[j] else "✗")
        names.append(f"{mark}{classes[j]}")
    return " ".join(names)


def _measure_text(scores: torch.Tensor, labels: torch.Tensor, k: int) -> str:
    vals = [
        f"{SHORT[name]} {float(fn(scores[None], labels[None], k)[0]):.2f}"
        for name, fn in MEASURES.items()
    ]
    return " ".join(vals[:2]) + "\n" + " ".join(vals[2:])


def example_figure(
    setting_dir: Path,
    classes: list[str],
    k: int,
    out_png: Path,
    configs: Sequence[MethodConfig],
    title: str = "",
) -> Path | None:
    """Draw the saved examples of one setting (the methods side by side) to ``out_png``.

    Each row is one image: the clean image with its top-k, then for every method the
    perturbation (amplified to the full range) and the adversarial image with its top-k.

    Args:
        setting_dir: ``examples/<setting>`` of a results folder.
        classes: the ``c`` label names.
        k: the setting's k.
        out_png: where to write the figure.
        configs: the method configurations to draw (those with saved examples are drawn,
            in registry order).
        title: the figure's title.

    Returns:
        ``out_png``, or None when none of ``configs`` has saved examples.
    """
    saved = [c for c in configs if (setting_dir / f"{c.key}.safetensors").is_file()]
    if not saved:
        return None
    saved.sort(key=lambda c: (method_rank(c), c.key))
    data = [(c.title, load_file(str(setting_dir / f"{c.key}.safetensors"))) for c in saved]
    n_img = min(d["clean"].shape[0] for _, d in data)
    cols = 1 + 2 * len(data)
    fig = Figure(figsize=(2.3 * cols, 2.9 * n_img))
    axes = fig.subplots(n_img, cols, squeeze=False)
    for i in range(n_img):
        _draw_image_row(axes[i], data, i, k, classes)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title + "   (★ specified, ✓ relevant, ✗ irrelevant)", fontsize=9)
    fig.tight_layout()
    _save(fig, out_png, dpi=110)
    return out_png


def _draw_image_row(
    axes: Any, data: list[tuple[str, dict[str, torch.Tensor]]], i: int, k: int, classes: list[str]
) -> None:
    """Image ``i``: its clean image, then each method's perturbation and adversarial image.

    ``axes``: the row's ``1 + 2 * len(data)`` axes; ``data``: ``(title, saved examples)``.
    """
    first = data[0][1]
    labels, spec = first["labels"][i], first["specified"][i].bool()
    ax = axes[0]
    ax.imshow(_img(first["clean"][i]))
    ax.set_title(
        "clean\n" + _topk_text(first["clean_scores"][i], labels, spec, k, classes), fontsize=7
    )
    ax.set_xlabel(_measure_text(first["clean_scores"][i], labels, k), fontsize=7)
    for m, (method, d) in enumerate(data):
        delta = d["adv"][i] - d["clean"][i]
        amp = delta.abs().max().clamp(min=1e-12)
        ax = axes[1 + 2 * m]
        ax.imshow(_img(delta / (2 * amp) + 0.5))
        ax.set_title(f"{method}\nperturbation ×{0.5 / float(amp):.0f}", fontsize=7)
        ax.set_xlabel(f"L2 {float(delta.norm()):.3f}", fontsize=7)
        ax = axes[2 + 2 * m]
        ax.imshow(_img(d["adv"][i]))
        status = "success" if bool(d["success"][i]) else "failed"
        ax.set_title(
            f"adversarial ({status})\n" + _topk_text(d["adv_scores"][i], labels, spec, k, classes),
            fontsize=7,
        )
        ax.set_xlabel(_measure_text(d["adv_scores"][i], labels, k), fontsize=7)


def _save(fig: Figure, out_png: Path, dpi: int) -> None:
    """Save atomically (a temporary file, then a rename). Figures are drawn on
    :class:`matplotlib.figure.Figure` objects with their own Agg canvas, never through
    pyplot, so drawing them leaves the caller's matplotlib backend and open figures alone."""
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")


#: (summary column, axis label, file name) of the bar charts, in the paper's order.
BAR_MEASURES = [
    ("d_tkacc", "ΔTkAcc", "d_tkacc"),
    ("d_p_at_k", "ΔP@k", "d_p_at_k"),
    ("d_map_at_k", "ΔmAP@k", "d_map_at_k"),
    ("d_ndcg_at_k", "ΔNDCG@k", "d_ndcg_at_k"),
    ("delta_n", "ΔN (specified labels removed)", "delta_n"),
    ("aper", "APer (mean L2 of successful perturbations)", "aper"),
    ("success_rate", "success rate", "success"),
]


def _series(rows: Sequence[SummaryRow]) -> dict[str, dict[str, SummaryRow]]:
    """``{bar label: {setting title: row}}``, the methods in registry order; with their
    hyper-parameters in the label when some setting has a method more than once."""
    grid = len(rows) > len({(r.setting_title, r.method) for r in rows})
    keyed = [(method_rank(r.config), config_label(r.config, detailed=grid), r) for r in rows]
    series: dict[str, dict[str, SummaryRow]] = {}
    for _, label, row in sorted(keyed, key=lambda t: (t[0], t[1])):
        series.setdefault(label, {})[row.setting_title] = row
    return series


def measure_bars(rows: Sequence[SummaryRow], out_dir: Path) -> list[Path]:
    """One grouped bar chart per measure: settings on the x axis, the methods side by side.

    Args:
        rows: summary rows with one row per (setting, method) (the selected
            configurations of a grid); a method run with several configurations gets one
            bar per configuration.
        out_dir: where to write ``bars-<measure>.png``.

    Returns:
        The paths written (none for no rows).
    """
    if not rows:
        return []
    settings: dict[str, str] = {}
    for row in rows:
        settings.setdefault(row.setting_title, row.setting_short_title)
    series = _series(rows)
    titles = list(settings)
    width = 0.8 / max(len(series), 1)
    paths = []
    for column, axis_label, name in BAR_MEASURES:
        fig = Figure(figsize=(max(4.0, 1.4 * len(titles) + 1.5), 3.4))
        ax = fig.subplots()
        for j, (label, by_setting) in enumerate(series.items()):
            xs = [i - 0.4 + width * (j + 0.5) for i in range(len(titles))]
            ys = [getattr(by_setting[t], column) if t in by_setting else math.nan for t in titles]
            ax.bar(xs, [0.0 if math.isnan(y) else y for y in ys], width, label=label)
            for x, y in zip(xs, ys, strict=True):
                if math.isnan(y):
                    ax.text(x, 0, "–", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(titles)))
        ax.set_xticklabels([settings[t] for t in titles], fontsize=8)
        ax.set_ylabel(axis_label, fontsize=8)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.legend(fontsize=7, frameon=False)
        ax.set_title(f"{axis_label} by setting", fontsize=9)
        fig.tight_layout()
        path = out_dir / f"bars-{name}.png"
        _save(fig, path, dpi=110)
        paths.append(path)
    return paths
