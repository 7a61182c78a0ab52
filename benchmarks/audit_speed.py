"""How long `tkmia audit` takes on a paper-scale results folder.

Builds a synthetic results folder (records made by the runner's own ``make_records`` from
random scores: ``--images`` attacked images × the four methods × ``--settings`` settings;
the paper's scale is 1000 × 4 × 20), then times reading the records, the bootstrap, and
the whole audit with its tables and figures. Run by hand:

    .venv/bin/python benchmarks/audit_speed.py [--images 1000] [--settings 20] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from tkmia.attacks import AttackResult
from tkmia.experiments.audit import BATCH_SIZES, DRAWS, THRESHOLD_DRAWS, audit_groups, read_groups
from tkmia.experiments.builtin import default_method
from tkmia.experiments.methods import REGISTRY
from tkmia.experiments.records import append_records, make_records
from tkmia.experiments.settings import Setting
from tkmia.reports.audit import write_audit

C, K = 20, 3


def _fake_result(
    gen: torch.Generator, n: int, strength: float
) -> tuple[AttackResult, torch.Tensor]:
    """Random clean scores and labels, and adversarial scores moved by ``strength``."""
    clean = torch.randn(n, C, generator=gen) * 2
    labels = (torch.rand(n, C, generator=gen) < 0.2).float()
    labels[:, 0] = 1.0  # every image has a relevant label
    adv = clean + strength * torch.randn(n, C, generator=gen)
    specified = torch.zeros(n, C, dtype=torch.bool)
    specified[:, 0] = True
    images = torch.rand(n, 3, 8, 8, generator=gen)
    result = AttackResult(
        adv_images=(images + 0.01).clamp(0, 1), success=torch.rand(n, generator=gen) < 0.9,
        iterations=torch.full((n,), 50), clean_scores=clean, adv_scores=adv,
        specified=specified, required=torch.ones(n, dtype=torch.long),
    )  # fmt: skip
    return result, labels


def build_folder(out: Path, images: int, n_settings: int, seed: int = 0) -> None:
    """A results folder as ``tkmia run`` leaves it (without summaries or figures)."""
    settings = [
        Setting("global", K, group=f"g{i}", group_indices=(i % C,)) for i in range(n_settings)
    ]
    methods = [default_method(name) for name in REGISTRY]
    config = {
        "dataset": "synthetic", "model": "random", "classes": [f"c{i}" for i in range(C)],
        "settings": [s.key for s in settings], "methods": [m.key for m in methods],
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config))
    for s, setting in enumerate(settings):
        sdir = out / "records" / setting.key
        sdir.mkdir(parents=True, exist_ok=True)
        meta = asdict(setting) | {"skipped": 0, "bad_images": 0, "indices": list(range(images))}
        (sdir / "setting.json").write_text(json.dumps(meta))
        for m, method in enumerate(methods):
            (sdir / f"{method.key}.json").write_text(json.dumps(method.as_dict()))
            gen = torch.Generator().manual_seed(seed * 1000 + s)  # same clean images per setting
            result, labels = _fake_result(gen, images, strength=0.3 * (m + 1))
            images_t = result.adv_images - 0.01
            recs = make_records(list(range(images)), images_t, labels, result, K, 1.0)
            append_records(sdir / f"{method.key}.jsonl", recs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--settings", type=int, default=20)
    parser.add_argument(
        "--out", type=Path, help="where to build the folder (default: a temp dir; reused if built)"
    )
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="tkmia-audit-")) / "results"
    start = time.perf_counter()
    if (out / "config.json").is_file():
        print(f"reusing {out} (delete it to rebuild)")
    else:
        build_folder(out, args.images, args.settings)
        print(f"built {out}: {args.images} images x 4 methods x {args.settings} settings "
              f"in {time.perf_counter() - start:.1f} s")  # fmt: skip
    start = time.perf_counter()
    groups = read_groups(out)
    read = time.perf_counter() - start
    start = time.perf_counter()
    rows = audit_groups(groups, BATCH_SIZES, 0, DRAWS, THRESHOLD_DRAWS)
    boot = time.perf_counter() - start
    print(f"read records: {read:.2f} s; bootstrap ({len(rows)} monitors, N in "
          f"{list(BATCH_SIZES)}, {DRAWS} draws): {boot:.2f} s")  # fmt: skip
    start = time.perf_counter()
    write_audit(out, figures=False)
    tables = time.perf_counter() - start
    start = time.perf_counter()
    write_audit(out)
    print(f"tkmia audit --no-figures: {tables:.2f} s; with the figures: "
          f"{time.perf_counter() - start:.2f} s")  # fmt: skip


if __name__ == "__main__":
    main()
