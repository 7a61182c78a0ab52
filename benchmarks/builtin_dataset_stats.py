"""Statistics of the built-in dataset: label cardinality and eligible test images.

Run by hand: ``.venv/bin/python benchmarks/builtin_dataset_stats.py [--split test]``.
Prints the histogram of labels per image for each split, the built-in model's mAP, and
how many images of the split are eligible (SPEC §5) for k in {2, 3} under S1 (the
default groups) and S2 (n in {1, 2}).
"""

from __future__ import annotations

import argparse

import torch

from tkmia.data import Digits
from tkmia.data.groups import resolve_group
from tkmia.experiments.builtin import DEFAULT_GROUPS
from tkmia.metrics import mean_average_precision
from tkmia.models import builtin_model
from tkmia.protocol import select_global, select_random


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    args = parser.parse_args()
    print("labels per image (1..6):")
    for split in ("train", "val", "test"):
        data = Digits(split)
        hist = torch.bincount(data.labels.sum(dim=1).long(), minlength=7)[1:].tolist()
        mean = float(data.labels.sum(dim=1).mean())
        print(f"  {split:5s} ({len(data):5d} images): {hist}  mean {mean:.2f}")
    data = Digits(args.split)
    model = builtin_model()
    with torch.no_grad():
        scores = torch.cat(
            [model(data.images[i : i + 500].float() / 255) for i in range(0, len(data), 500)]
        )
    labels = data.labels
    print(f"built-in model, {args.split} mAP: {float(mean_average_precision(scores, labels)):.4f}")
    print(f"eligible {args.split} images (of {len(data)}):")
    for k in (2, 3):
        for spec in DEFAULT_GROUPS["digits"]:
            name, idx = resolve_group(spec, data.classes, "digits")
            _, eligible = select_global(labels, scores, idx, k)
            print(f"  k={k} S1 group {name:8s}: {int(eligible.sum())}")
        for n in (1, 2):
            _, eligible = select_random(labels, scores, n, k, 0, range(len(data)))
            print(f"  k={k} S2 n={n}          : {int(eligible.sum())}")


if __name__ == "__main__":
    main()
