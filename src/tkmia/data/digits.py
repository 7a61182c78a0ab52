"""The built-in multi-label dataset: coloured handwritten digits on cluttered canvases.

Made from scikit-learn's bundled handwritten digits (``sklearn.datasets.load_digits``,
1797 real 8×8 scans of the UCI set), so nothing is downloaded. Each image is an RGB
canvas of :data:`CANVAS` × :data:`CANVAS` pixels holding 1–6 digits; a label is a
(ink colour, digit) pair, giving the 20 classes ``red_0 … red_9, blue_0 … blue_9``.

What makes it hard enough for a small CNN (test mAP between 0.85 and 0.95):

* scale variation (digits 11–20 pixels tall) and overlapping digits (occlusion);
* a noisy, tinted background with clutter: strokes and blobs in any colour, fragments of
  digits in distractor inks (green, grey, purple) that are *not* labels;
* ink colours jittered towards each other (a dark red and a dark blue are close);
* random occluding bars drawn over the digits.

The split of the 1797 source scans into train/val/test is fixed (60/20/20, by a constant
seed), so the three splits never share a handwritten digit whatever ``seed`` is. ``seed``
changes the canvases only. Generation is deterministic for ``(split, seed)`` and takes
about a second per thousand images; images are kept as 8-bit RGB in memory.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch.utils.data import Dataset

from tkmia.errors import InputError

CANVAS = 48
COLOURS = ("red", "blue")
CLASSES = [f"{colour}_{digit}" for colour in COLOURS for digit in range(10)]
SPLIT_SIZES = {"train": 12000, "val": 1000, "test": 2000}
#: probability of 1, 2, …, 6 digits on a canvas
CARDINALITY_P = np.array([0.08, 0.12, 0.15, 0.19, 0.22, 0.24])
DIGIT_SIZES = tuple(range(11, 21))
_SOURCE_SEED = 20230501
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}
_INK = {"red": (0.85, 0.12, 0.12), "blue": (0.12, 0.2, 0.85)}
_DISTRACTOR_INK = ((0.15, 0.7, 0.2), (0.5, 0.5, 0.5), (0.55, 0.2, 0.6), (0.85, 0.7, 0.1))


@lru_cache(maxsize=1)
def _sources() -> tuple[dict[int, np.ndarray], np.ndarray, dict[str, np.ndarray]]:
    """Upscaled glyphs per size, digit targets, and the source indices of each split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    glyphs = torch.from_numpy(bunch.images.astype(np.float32) / 16.0)[:, None]
    scaled = {
        size: torch.nn.functional.interpolate(
            glyphs, size=(size, size), mode="bilinear", align_corners=False
        )[:, 0]
        .clamp(0, 1)
        .numpy()
        for size in DIGIT_SIZES
    }
    order = np.random.default_rng(_SOURCE_SEED).permutation(len(glyphs))
    n_train, n_val = int(0.6 * len(order)), int(0.2 * len(order))
    split_sources = {
        "train": np.sort(order[:n_train]),
        "val": np.sort(order[n_train : n_train + n_val]),
        "test": np.sort(order[n_train + n_val :]),
    }
    return scaled, bunch.target.astype(np.int64), split_sources


def _paste(canvas: np.ndarray, alpha: np.ndarray, ink: np.ndarray, y: int, x: int) -> None:
    """Alpha-blend a glyph (h, w) of one ink colour onto ``canvas`` at (y, x), clipped."""
    h, w = alpha.shape
    y0, x0 = max(y, 0), max(x, 0)
    y1, x1 = min(y + h, CANVAS), min(x + w, CANVAS)
    if y1 <= y0 or x1 <= x0:
        return
    a = alpha[y0 - y : y1 - y, x0 - x : x1 - x, None]
    region = canvas[y0:y1, x0:x1]
    region *= 1.0 - a
    region += a * ink


def _jitter(
    rng: np.random.Generator, base: tuple[float, float, float], amount: float
) -> np.ndarray:
    return np.clip(np.asarray(base) + rng.uniform(-amount, amount, 3), 0.0, 1.0)


def _render(
    rng: np.random.Generator, pools: list[np.ndarray], scaled: dict[int, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """One canvas (CANVAS, CANVAS, 3) float in [0, 1] and its labels (20,)."""
    tint = rng.uniform(0.7, 1.0, 3)
    canvas = np.broadcast_to(tint, (CANVAS, CANVAS, 3)).astype(np.float32).copy()
    canvas += rng.normal(0.0, rng.uniform(0.02, 0.08), canvas.shape).astype(np.float32)
    # clutter under the digits: strokes and fragments in distractor inks
    for _ in range(rng.integers(2, 6)):
        ink = _jitter(rng, _DISTRACTOR_INK[rng.integers(len(_DISTRACTOR_INK))], 0.15)
        size = DIGIT_SIZES[rng.integers(len(DIGIT_SIZES))]
        glyph = scaled[size][rng.integers(len(scaled[size]))]
        if rng.random() < 0.5:  # a fragment: keep a random half of a glyph
            cut = rng.integers(size // 3, 2 * size // 3)
            glyph = glyph[:cut] if rng.random() < 0.5 else glyph[:, :cut]
        _paste(canvas, glyph * rng.uniform(0.5, 0.9), ink, *rng.integers(-4, CANVAS - 4, 2))
    labels = np.zeros(len(CLASSES), dtype=np.float32)
    n_digits = rng.choice(len(CARDINALITY_P), p=CARDINALITY_P) + 1
    for cls in rng.choice(len(CLASSES), size=n_digits, replace=False):
        colour, digit = COLOURS[cls // 10], cls % 10
        pool = pools[digit]
        size = DIGIT_SIZES[rng.integers(len(DIGIT_SIZES))]
        glyph = scaled[size][pool[rng.integers(len(pool))]]
        ink = _jitter(rng, _INK[colour], 0.2)
        y, x = rng.integers(-2, CANVAS - size + 3, 2)
        _paste(canvas, np.clip(glyph * rng.uniform(0.75, 1.1), 0, 1), ink, y, x)
        labels[cls] = 1.0
    # occluding bars over the digits
    for _ in range(rng.integers(0, 3)):
        ink = rng.uniform(0.0, 1.0, 3)
        horizontal = rng.random() < 0.5
        length, width = rng.integers(8, 24), rng.integers(2, 4)
        bar = np.full((width, length) if horizontal else (length, width), 0.9, np.float32)
        _paste(canvas, bar, ink, *rng.integers(0, CANVAS - 4, 2))
    return np.clip(canvas, 0.0, 1.0), labels


class Digits(Dataset):
    """The built-in dataset: ``(image (3, 48, 48) float32 in [0, 1], labels (20,) float32)``.

    Args:
        split: ``"train"`` (12000 images), ``"val"`` (1000) or ``"test"`` (2000).
        seed: changes the canvases (not the split of the source scans).
        size: number of images (default: the split's size above).

    Attributes:
        classes: the 20 label names ``red_0 … blue_9``.
        images: ``(N, 3, 48, 48)`` uint8.
        labels: ``(N, 20)`` float32 0/1.
    """

    classes = CLASSES

    def __init__(self, split: str = "train", seed: int = 0, size: int | None = None) -> None:
        if split not in SPLIT_SIZES:
            raise InputError(f"digits split must be one of {list(SPLIT_SIZES)}, got {split!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise InputError(f"seed must be a non-negative integer, got {seed!r}")
        n = SPLIT_SIZES[split] if size is None else size
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InputError(f"size must be a positive integer, got {size!r}")
        self.split, self.seed = split, seed
        scaled, targets, split_sources = _sources()
        sources = split_sources[split]
        pools = [sources[targets[sources] == d] for d in range(10)]
        rng = np.random.default_rng([seed, _SPLIT_CODE[split]])
        images = np.empty((n, CANVAS, CANVAS, 3), dtype=np.uint8)
        labels = np.empty((n, len(CLASSES)), dtype=np.float32)
        for i in range(n):
            canvas, labels[i] = _render(rng, pools, scaled)
            images[i] = np.rint(canvas * 255.0)
        self.images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        self.labels = torch.from_numpy(labels)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index].float() / 255.0, self.labels[index]
