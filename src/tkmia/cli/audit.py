"""`tkmia audit DIR`: the defender's view of a results folder (SPEC §7.5): how large a
fraction of a batch must be attacked before a monitor of the measures (with labels) or of
label-free statistics of the scores raises an alarm."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from tkmia.errors import InputError


def _sizes(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"cannot read {text!r} as a comma-separated list of integers"
        ) from None


def add_parser(sub: Any) -> None:
    """Add the `audit` subcommand.

    Args:
        sub: the ``add_subparsers()`` object of the `tkmia` parser.
    """
    from tkmia.experiments.audit import BATCH_SIZES, DRAWS

    audit = sub.add_parser(
        "audit",
        help="how many attacked images before a measure monitor alarms (audit.csv/md/tex)",
    )
    audit.add_argument("dir", type=Path, help="a results folder of tkmia run (its records)")
    audit.add_argument(
        "--batch-sizes",
        type=_sizes,
        default=list(BATCH_SIZES),
        metavar="N[,...]",
        help=f"batch sizes the monitor watches (default: {','.join(map(str, BATCH_SIZES))})",
    )
    audit.add_argument(
        "--draws",
        type=int,
        default=DRAWS,
        help=f"bootstrap batches per batch size (default: {DRAWS})",
    )
    audit.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    audit.add_argument("--no-figures", action="store_true", help="write the tables only")


def command(args: argparse.Namespace) -> int:
    """Run `tkmia audit`: write ``audit.csv``, ``audit.md``, ``audit.tex`` and the figures
    of ``args.dir`` and print the tables.

    Returns:
        The exit code, 0.

    Raises:
        InputError: ``dir`` is not a results folder, its records lack the audit's columns,
            or a bad option.
    """
    from tkmia.experiments.audit import check_audit_options
    from tkmia.files import folder_lock

    check_audit_options(args.batch_sizes, args.draws)
    if not (args.dir / "config.json").is_file():
        raise InputError(f"{str(args.dir)!r} is not a tkmia results folder (no config.json)")
    with folder_lock(args.dir, "tkmia audit"):
        text = audit_folder(args.dir, args.batch_sizes, args.seed, args.draws, not args.no_figures)
    print(text)
    return 0


def audit_folder(
    out: Path, batch_sizes: list[int], seed: int, draws: int, figures: bool = True
) -> str:
    """Audit ``out`` (see :func:`~tkmia.reports.audit.write_audit`); the text to print."""
    from tkmia.reports.audit import write_audit

    if not (out / "config.json").is_file():
        raise InputError(f"{str(out)!r} is not a tkmia results folder (no config.json)")
    start = time.perf_counter()
    text = write_audit(out, batch_sizes, seed, draws, figures)
    seconds = time.perf_counter() - start
    return f"{text}\naudit: {out / 'audit.md'} ({seconds:.1f} s)"
