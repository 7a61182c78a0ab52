"""The `tkmia` command line: `tkmia run`, `tkmia train`, `tkmia report`.

User mistakes become one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tkmia.errors import InputError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other mistake
        raise InputError(f"{self.prog}: {message}")


# ------------------------------------------------------------ value parsers
def _list(convert: Callable[[str], Any], name: str) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        items = [t.strip() for t in str(text).split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        try:
            return [convert(t) for t in items]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"cannot read {text!r} as a comma-separated list of "
                f"{'integers' if convert is int else 'numbers'}"
            ) from None

    return parse


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tkmia", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser(
        "run",
        help="attack a model with the paper's protocol and write tables and figures",
        description="With no arguments: the built-in benchmark (digits dataset, built-in "
        "model, all four attacks, S1 and S2, k in {2, 3}).",
    )
    run.add_argument("--config", type=Path, help="TOML file with the same keys as the flags")
    run.add_argument(
        "--dataset", default=None, help="digits (default), voc2012, coco2014, nuswide or folder"
    )
    run.add_argument("--root", type=Path, help="the dataset's folder (see README)")
    run.add_argument("--csv", type=Path, help="label file of a 'folder' dataset")
    run.add_argument(
        "--split", help="split to attack (default: val, or test for digits and nuswide)"
    )
    run.add_argument("--image-size", type=int)
    run.add_argument(
        "--model",
        type=Path,
        help="a .safetensors checkpoint with a .json "
        "sidecar (default for digits: the built-in model)",
    )
    run.add_argument(
        "--methods",
        type=_list(str, "--methods"),
        help="comma-separated: tkmia,tkmlapu,kfool,mlcwu (default: all)",
    )
    run.add_argument("--scheme", choices=["global", "random", "both"], default=None)
    run.add_argument("--k", type=_list(int, "--k"), help="e.g. 2,3")
    run.add_argument(
        "--groups",
        type=_list(str, "--groups"),
        help="S1 label groups by name, or label names joined by '+'",
    )
    run.add_argument(
        "--n",
        "--n-labels",
        dest="n",
        type=_list(int, "--n"),
        help="S2: labels drawn per image, e.g. 1,2 (under torchrun write "
        "--n-labels: torchrun takes --n for one of its own options)",
    )
    run.add_argument(
        "--threshold",
        type=_list(int, "--threshold"),
        help="S2: success needs ΔN >= t (default t = n)",
    )
    run.add_argument("--samples", type=int, help="eligible images attacked per setting")
    run.add_argument("--lr", type=_list(float, "--lr"))
    run.add_argument("--lam", type=_list(float, "--lam"))
    run.add_argument("--max-iter", type=_list(int, "--max-iter"))
    run.add_argument(
        "--batch-size",
        type=int,
        help="images optimised at once (default 64; 256 for "
        "digits); a finished image's slot is refilled at once from the queue",
    )
    run.add_argument(
        "--chunk-size",
        type=int,
        help="images per chunk, the unit of records, "
        "resuming and torchrun sharding (default: 4 x --batch-size); "
        "a setting's chunks stream through one working set",
    )
    run.add_argument("--device", default=None, help="cpu (default) or cuda[:i]")
    run.add_argument("--seed", type=int)
    run.add_argument("--examples", type=int, help="images per setting drawn in the figures")
    run.add_argument(
        "--out",
        type=Path,
        help="results folder (default results/<dataset>-"
        "<model>); rerunning the same command resumes",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument(
        "--select-tol",
        type=float,
        help="selection rule of a grid: among the "
        "configurations within this much of the best success rate, the "
        "smallest APer is reported (default 0.01)",
    )
    run.add_argument(
        "--select-scope",
        choices=["setting", "all"],
        default=None,
        help="select per setting (default) or one configuration per method "
        "for all settings (mean success rate and APer over settings)",
    )
    run.add_argument(
        "--skip-bad-images",
        action="store_true",
        default=None,
        help="skip and count unreadable images instead of stopping",
    )

    train = sub.add_parser("train", help="fine-tune a multi-label classifier")
    train.add_argument("--dataset", required=True)
    train.add_argument("--root", type=Path)
    train.add_argument("--csv", type=Path, help="label file of a 'folder' dataset")
    train.add_argument("--test-csv", type=Path, help="label file of a 'folder' test split")
    train.add_argument("--arch", default=None)
    train.add_argument("--weights", type=Path, help="local ImageNet weights (.pth/.safetensors)")
    train.add_argument("--epochs", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--lr", type=float)
    train.add_argument("--optimizer", choices=["adam", "sgd"])
    train.add_argument("--image-size", type=int)
    train.add_argument("--device", default="cpu")
    train.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", type=Path, required=False)
    train.add_argument("--no-progress", action="store_true")

    report = sub.add_parser("report", help="render a results folder as tables and figures")
    report.add_argument("dir", type=Path)
    report.add_argument(
        "--select-tol",
        type=float,
        help="override the run's selection tolerance (see tkmia run --select-tol)",
    )
    report.add_argument(
        "--select-scope",
        choices=["setting", "all"],
        default=None,
        help="override the run's selection scope",
    )
    return parser


def _report_command(args: argparse.Namespace) -> int:
    """`tkmia report DIR`: write and print the tables (moved here from reports/render.py;
    its place is the cli package's report module)."""
    from tkmia.experiments.selection import check_rule, load_rule
    from tkmia.reports.render import render

    out = args.dir
    if not (out / "config.json").is_file() and not (out / "summary.csv").is_file():
        raise InputError(
            f"{str(out)!r} is not a tkmia results folder (no config.json and no summary.csv)"
        )
    tol = getattr(args, "select_tol", None)
    scope = getattr(args, "select_scope", None)
    if tol is not None or scope is not None:
        rule = load_rule(out)
        check_rule(
            rule["rule"],
            rule["tol"] if tol is None else tol,
            rule["scope"] if scope is None else scope,
        )
    print(render(out, tol=tol, scope=scope))
    print(f"results: {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `tkmia` command; returns the exit code."""
    try:
        args = _build_parser().parse_args(argv)
        if args.command in ("run", "train"):
            from tkmia.runtime import retain_freed_memory

            retain_freed_memory()  # no page faults on every iteration's tensors
        if args.command == "run":
            from tkmia.experiments.cli_run import run_command

            return run_command(args)
        if args.command == "train":
            from tkmia.experiments.cli_train import train_command

            return train_command(args)
        return _report_command(args)
    except InputError as err:
        message = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
        print(f"tkmia: error: {message}", file=sys.stderr)  # always exactly one line
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(
            "tkmia: interrupted; finished work is saved, rerun the same command to resume",
            file=sys.stderr,
        )
        return 130
