"""Where the first attack call's time goes: imports, data, the first call against later
identical calls, and the model's first forward+backward pass at each batch size.

Each measurement runs in a fresh Python process (a cold start happens once per process).
Run by hand, not in CI:

    .venv/bin/python benchmarks/cold_start.py                 # 16 and 256 images
    .venv/bin/python benchmarks/cold_start.py --images 16 --calls 3 --rounds 3

Prints, per image count: the import of torch and tkmia, building the data and the model,
the first three identical ``TkMIA(model, k=2)`` calls (the first minus the median of the
later ones is the cold-start overhead), and, for the built-in model, the first and the
second forward+backward pass at each batch size the shrinking working set takes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
from tkmia.attacks import TkMIA
from tkmia.data import Digits
from tkmia.models import builtin_model
from tkmia.protocol import select_random
t2 = time.perf_counter()
n, calls = int(sys.argv[1]), int(sys.argv[2])
model = builtin_model()
data = Digits("test", size=max(2 * n, 64))
images, labels = data.images.float() / 255, data.labels
with torch.no_grad():
    specified, keep = select_random(labels, model(images), n=1, k=2, seed=0,
                                    indices=range(len(labels)))
x, y, s = images[keep][:n], labels[keep][:n], specified[keep][:n]
t3 = time.perf_counter()
out = {"import_torch": t1 - t0, "import_tkmia": t2 - t1, "data_model": t3 - t2,
       "calls": [], "sympy_before": "sympy" in sys.modules}
attack = TkMIA(model, k=2)
for _ in range(calls):
    a = time.perf_counter()
    result = attack(x, y, s, threshold=1)
    out["calls"].append(time.perf_counter() - a)
out["iterations"] = int(result.iterations.sum())
out["sympy_after"] = "sympy" in sys.modules
print(json.dumps(out))
"""

SHAPES = r"""
import json, sys, time
import torch
from tkmia.models import builtin_model
n = int(sys.argv[1])
model = builtin_model()
x = torch.rand(n, 3, 48, 48).contiguous(memory_format=torch.channels_last)
out = {}
for b in range(n, 0, -1):
    times = []
    for _ in range(2):
        xb = x[:b].clone().requires_grad_(True)
        a = time.perf_counter()
        model(xb).sum().backward()
        times.append(time.perf_counter() - a)
    out[b] = times
print(json.dumps(out))
"""


def _child(code: str, *args: object) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default="16,256", help="image counts (default: 16,256)")
    parser.add_argument("--calls", type=int, default=3, help="identical calls (default: 3)")
    parser.add_argument("--rounds", type=int, default=2, help="fresh processes (default: 2)")
    args = parser.parse_args()
    print(
        "image count | import torch s | import tkmia s | data+model s | first call s | "
        "later calls s (median) | cold overhead s | iterations | sympy imported"
    )
    for n in (int(v) for v in args.images.split(",")):
        for _ in range(args.rounds):
            r = _child(CHILD, n, args.calls)
            first, later = r["calls"][0], statistics.median(r["calls"][1:])
            print(
                f"{n} | {r['import_torch']:.2f} | {r['import_tkmia']:.2f} | "
                f"{r['data_model']:.2f} | {first:.2f} | {later:.2f} | {first - later:.2f} | "
                f"{r['iterations']} | {r['sympy_after']}",
                flush=True,
            )
    shapes = _child(SHAPES, 16)
    first = sum(t[0] for t in shapes.values())
    second = sum(t[1] for t in shapes.values())
    print(
        f"built-in model, forward+backward at each batch size 16..1: first passes {first:.2f} s, "
        f"second passes {second:.2f} s (per-shape setup {first - second:.2f} s)"
    )


if __name__ == "__main__":
    main()
