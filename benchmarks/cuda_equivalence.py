"""Every registered attack on the built-in model, on the CPU and on a CUDA device, compared.

Run by hand on a machine with a GPU (``benchmarks/gpu_check.sh`` runs it)::

    python benchmarks/cuda_equivalence.py --images 64

For each method of the registry, at its defaults, the same eligible test images (random
scheme, n = 1, k = 3; for the targeted attack, the 2 best labels outside Y and the
top-k) are attacked on both devices. Printed per method: the success rate on
each device, on how many images the two agree on success and on the iteration count, and
the largest relative difference of the perturbation's L2 norm over the images both
devices attacked successfully. The two devices do not compute bit for bit alike (cuDNN picks
other convolution algorithms, and TF32 may be used for them), and a minimum-norm attack
decides at a threshold, so a few images may differ by an iteration; a bug in a CUDA path
shows as a success rate or norms far apart. The exit code is non-zero when the success
rates differ by more than ``--tolerance`` for any method.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time

import torch

from tkmia.attacks import AttackResult
from tkmia.experiments.methods import REGISTRY
from tkmia.models import builtin_model


def problem(images: int, k: int, seed: int) -> tuple[torch.Tensor, ...]:
    """The first ``images`` eligible test images of the built-in data (CPU tensors)."""
    from tkmia.data import Digits
    from tkmia.protocol import select_random, select_targets

    model = builtin_model("cpu")
    data = Digits("test")
    x = data.images.float().div(255)
    y = data.labels
    with torch.no_grad():
        clean = torch.cat([model(x[i : i + 250]) for i in range(0, len(x), 250)])
    spec, ok = select_random(y, clean, 1, k, seed, range(len(x)))
    targets, ok_t = select_targets(y, clean, 2, k, "best", seed, range(len(x)))
    idx = torch.nonzero(ok & ok_t).flatten()[:images]
    return x[idx], y[idx], spec[idx].float(), targets[idx].float()


@functools.cache
def model_on(device: str) -> torch.nn.Module:
    return builtin_model(device)


def attack(name: str, device: str, k: int, x, y, s) -> tuple[AttackResult, float]:
    model = model_on(device)
    atk = REGISTRY[name].cls(model, k)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    result = atk(x.to(device), y.to(device), s.to(device), batch_size=64)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return result, time.perf_counter() - t


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda")
    p.add_argument("--tolerance", type=float, default=0.1)
    p.add_argument(
        "--no-tf32",
        action="store_true",
        help="CUDA convolutions and matrix products in full float32 (torch's default lets "
        "cuDNN use TF32 for convolutions)",
    )
    args = p.parse_args()
    if args.no_tf32:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    x, y, spec, targets = problem(args.images, args.k, args.seed)
    tf32 = "off" if args.no_tf32 else "torch's default"
    print(f"{len(x)} images, k={args.k}; device {args.device}; TF32 {tf32}", flush=True)
    print(
        f"{'method':8s} {'succ cpu':>8s} {'succ dev':>8s} {'same succ':>9s} "
        f"{'same iters':>10s} {'max rel dL2':>11s} {'s cpu':>6s} {'s dev':>6s}"
    )
    bad = []
    for name in REGISTRY:
        s = targets if name == "tkmlapt" else spec  # the targeted attack's third input is T
        a, ta = attack(name, "cpu", args.k, x, y, s)
        b, tb = attack(name, args.device, args.k, x, y, s)
        sb, ib = b.success.cpu(), b.iterations.cpu()
        same_s = int((a.success == sb).sum())
        same_i = int((a.iterations == ib).sum())
        both = a.success & sb
        la = (a.adv_images - x).flatten(1).norm(dim=1)
        lb = (b.adv_images.cpu() - x).flatten(1).norm(dim=1)
        rel = ((la - lb).abs() / la.clamp_min(1e-12))[both]
        worst = float(rel.max()) if rel.numel() else float("nan")
        ra, rb = float(a.success.float().mean()), float(sb.float().mean())
        print(
            f"{name:8s} {ra:8.3f} {rb:8.3f} {same_s:5d}/{len(x):<3d} {same_i:6d}/{len(x):<3d} "
            f"{worst:11.2e} {ta:6.1f} {tb:6.1f}",
            flush=True,
        )
        if abs(ra - rb) > args.tolerance:
            bad.append(name)
    if bad:
        print(f"success rates differ by more than {args.tolerance}: {', '.join(bad)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
