"""Throughput of `tkmia evaluate`'s attacks against the model's own ceiling (issue 31).

Run by hand (not in CI), e.g.::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/evaluate_speed.py --images 64

On the built-in model and the first ``--images`` test images (relevant labels: the true
ones), it measures, interleaved round by round so that both see the same machine load:

- the white-box ceiling: a bare forward + backward with respect to the input, per image;
- APGD (no early exit: ``eps`` so small that no image changes its top-k), per image-step;
- the black-box ceiling: a bare forward under ``torch.no_grad``, per image;
- Square Attack (same tiny ε), per image-query.

It prints image-steps (image-queries) per second and the efficiency attack/ceiling: what
the attack's own work (losses, projections, the random search's proposals) costs beyond
the model's passes.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tkmia.attacks.budget import APGD, Square
from tkmia.data.digits import Digits
from tkmia.models import open_model


def _bare(model: torch.nn.Module, x: torch.Tensor, backward: bool) -> float:
    start = time.perf_counter()
    if backward:
        xg = x.clone().requires_grad_(True)
        model(xg).sum().backward()
    else:
        with torch.no_grad():
            model(x)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="APGD steps / Square queries")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    model, _ = open_model("builtin", "cpu")
    model.eval()
    data = Digits("test")
    x = torch.stack([data[i][0] for i in range(args.images)])
    y = torch.stack([torch.as_tensor(data[i][1]) for i in range(args.images)])
    eps = 1e-6  # no top-k changes: every image runs every step
    apgd = APGD(model, 3, "linf", iterations=args.steps)
    square = Square(model, 3, "linf", queries=args.steps + 2)
    rates: dict[str, list[float]] = {k: [] for k in ("fwd+bwd", "APGD", "fwd", "Square")}
    for _ in range(args.rounds + 1):  # the first round warms up
        t = statistics.median(_bare(model, x, True) for _ in range(5))
        rates["fwd+bwd"].append(args.images / t)
        start = time.perf_counter()
        result = apgd(x, y, eps)
        steps = int(result.queries.sum()) - args.images  # the clean pass is not a step
        rates["APGD"].append(steps / (time.perf_counter() - start))
        t = statistics.median(_bare(model, x, False) for _ in range(5))
        rates["fwd"].append(args.images / t)
        start = time.perf_counter()
        result = square(x, y, eps)
        rates["Square"].append(int(result.queries.sum()) / (time.perf_counter() - start))
    med = {k: statistics.median(v[1:]) for k, v in rates.items()}
    print(f"{args.images} images, {args.steps} steps, {torch.get_num_threads()} thread(s)")
    print("| what | image-steps/s | efficiency |")
    print("|---|---|---|")
    print(f"| bare forward+backward | {med['fwd+bwd']:.0f} | |")
    print(f"| APGD (white-box) | {med['APGD']:.0f} | {med['APGD'] / med['fwd+bwd']:.2f} |")
    print(f"| bare forward (no grad) | {med['fwd']:.0f} | |")
    print(f"| Square (black-box) | {med['Square']:.0f} | {med['Square'] / med['fwd']:.2f} |")


if __name__ == "__main__":
    main()
