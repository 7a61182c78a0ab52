"""`tkmia report DIR`: the tables (Markdown, CSV, LaTeX) and figures of a results folder."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tkmia.errors import InputError
from tkmia.experiments.selection import SCOPES


def add_parser(sub: Any) -> None:
    """Add the `report` subcommand.

    Args:
        sub: the ``add_subparsers()`` object of the `tkmia` parser.
    """
    report = sub.add_parser("report", help="render a results folder as tables and figures")
    report.add_argument(
        "dir",
        type=Path,
        help="a results folder of tkmia run (its records, or at least a summary.csv)",
    )
    report.add_argument(
        "--select-tol",
        type=float,
        help="override the run's selection tolerance (see tkmia run --select-tol; default: "
        "the run's, from selection.json)",
    )
    report.add_argument(
        "--select-scope",
        choices=SCOPES,
        default=None,
        help="override the run's selection scope (default: the run's, from selection.json)",
    )


def command(args: argparse.Namespace) -> int:
    """Run `tkmia report`: rewrite the tables and figures of ``args.dir`` and print them.

    Args:
        args: the parsed command line (``dir``, ``select_tol``, ``select_scope``).

    Returns:
        The exit code, 0.

    Raises:
        InputError: ``dir`` is not a results folder, or the overriding rule is invalid.
    """
    from tkmia.experiments.readback import is_universal, read_config
    from tkmia.experiments.selection import check_rule, load_rule
    from tkmia.files import folder_lock
    from tkmia.reports.render import render

    out = args.dir
    if not (out / "config.json").is_file() and not (out / "summary.csv").is_file():
        raise InputError(
            f"{str(out)!r} is not a tkmia results folder (no config.json and no summary.csv)"
        )
    if (out / "config.json").is_file() and is_universal(read_config(out)):
        raise InputError(
            f"{str(out)!r} holds tkmia universal results; rerun the same tkmia universal "
            "command to rewrite its tables and figures (finished fits are read back)"
        )
    tol, scope = args.select_tol, args.select_scope
    if tol is not None or scope is not None:
        rule = load_rule(out)
        check_rule(
            rule["rule"],
            rule["tol"] if tol is None else tol,
            rule["scope"] if scope is None else scope,
        )
    with folder_lock(out, "tkmia report"):
        print(render(out, tol=tol, scope=scope))
    print(f"results: {out}")
    return 0
