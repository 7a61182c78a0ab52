"""Figures like the paper's Fig. 2 and 3: clean image, perturbation, adversarial image,
and each method's top-k labels with the four measures before and after."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from tkmia.experiments.records import MEASURES  # noqa: E402
from tkmia.experiments.settings import METHOD_TITLES  # noqa: E402

SHORT = {"tkacc": "TkAcc", "p_at_k": "P@k", "map_at_k": "AP@k", "ndcg_at_k": "NDCG@k"}


def _img(t: torch.Tensor):
    return t.permute(1, 2, 0).clamp(0, 1).numpy()


def _topk_text(scores: torch.Tensor, labels: torch.Tensor, spec: torch.Tensor, k: int,
               classes: list[str]) -> str:
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
    setting_dir: Path, classes: list[str], k: int, out_png: Path, title: str = ""
) -> Path | None:
    """Draw the saved examples of one setting (all methods side by side) to ``out_png``.

    Each row is one image: the clean image with its top-k, then for every method the
    perturbation (amplified to the full range) and the adversarial image with its top-k.
    Returns None when the setting has no saved examples.
    """
    files = sorted(setting_dir.glob("*.safetensors"))
    if not files:
        return None
    order = list(METHOD_TITLES)
    files.sort(key=lambda p: order.index(p.stem.split("-")[0]) if p.stem.split("-")[0] in order
               else len(order))
    data = [(p.stem.split("-")[0], load_file(str(p))) for p in files]
    n_img = min(d["clean"].shape[0] for _, d in data)
    cols = 1 + 2 * len(data)
    fig, axes = plt.subplots(n_img, cols, figsize=(2.3 * cols, 2.9 * n_img), squeeze=False)
    for i in range(n_img):
        first = data[0][1]
        labels, spec = first["labels"][i], first["specified"][i].bool()
        ax = axes[i, 0]
        ax.imshow(_img(first["clean"][i]))
        ax.set_title(
            "clean\n" + _topk_text(first["clean_scores"][i], labels, spec, k, classes),
            fontsize=7,
        )
        ax.set_xlabel(_measure_text(first["clean_scores"][i], labels, k), fontsize=7)
        for m, (method, d) in enumerate(data):
            delta = d["adv"][i] - d["clean"][i]
            amp = delta.abs().max().clamp(min=1e-12)
            ax = axes[i, 1 + 2 * m]
            ax.imshow(_img(delta / (2 * amp) + 0.5))
            ax.set_title(
                f"{METHOD_TITLES.get(method, method)}\nperturbation ×{0.5 / float(amp):.0f}",
                fontsize=7,
            )
            ax.set_xlabel(f"L2 {float(delta.norm()):.3f}", fontsize=7)
            ax = axes[i, 2 + 2 * m]
            ax.imshow(_img(d["adv"][i]))
            status = "success" if bool(d["success"][i]) else "failed"
            ax.set_title(
                f"adversarial ({status})\n"
                + _topk_text(d["adv_scores"][i], labels, spec, k, classes),
                fontsize=7,
            )
            ax.set_xlabel(_measure_text(d["adv_scores"][i], labels, k), fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title + "   (★ specified, ✓ relevant, ✗ irrelevant)", fontsize=9)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
