"""`tkmia evaluate`: robustness at a budget ε (SPEC §7.7): white-box (APGD schedule, two
top-k losses) and black-box (Square Attack, scores only) attacks on the first images of a
split, the worst case per image, robust precision@k and recall@k against ε.

The command's options are one frozen, validated :class:`EvaluateOptions`, built by
:func:`evaluate_options` from the flag table :data:`EVALUATE_OPTIONS` (flags, `--config`
keys and defaults declared once).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from tkmia.cli.checks import (
    check_data_and_model,
    check_writable,
    open_data_and_model,
    resolve_device,
)
from tkmia.cli.options import (
    NON_NEGATIVE,
    OPTIONS,
    POSITIVE,
    Check,
    Option,
    add_options,
    check_values,
    complete,
    resolve_options,
)
from tkmia.errors import InputError
from tkmia.experiments.evaluate import ATTACKS, DEFAULT_EPS

__all__ = ["EVALUATE_OPTIONS", "EvaluateOptions", "add_parser", "command", "evaluate_options"]

_NORMS = ("linf", "l2")
#: every option of `tkmia evaluate`: the shared ones of `tkmia run`, then its own
EVALUATE_OPTIONS: tuple[Option, ...] = (
    *(OPTIONS[name] for name in ("config", "dataset", "root", "csv", "split", "image_size",
                                 "model", "normalize", "classes")),
    Option("norm", help="the budget's norm", default="linf", choices=_NORMS),
    Option("eps", help="budgets, e.g. 4/255,8/255 (fractions or numbers, pixels in [0, 1])",
           many=True, shown="4/255,8/255 for linf, 0.5,1 for l2"),
    Option("k", int, "the top-k the model reports", default=3,
           check=Check("a positive integer (1 <= k < c)", lambda v: isinstance(v, int) and v >= 1)),
    Option("attacks", help=f"some of {', '.join(ATTACKS)}; run in that order", many=True,
           default=list(ATTACKS), choices=tuple(ATTACKS)),
    Option("iterations", int, "white-box steps per restart", default=100, check=POSITIVE),
    Option("restarts", int, "white-box restarts per image", default=1, check=POSITIVE),
    Option("queries", int, "black-box query budget per image (clean query included)",
           default=5000, check=Check("an integer >= 2", lambda v: isinstance(v, int) and v >= 2)),
    Option("samples", int, "the first this many images of the split", default=1000,
           check=POSITIVE),
    Option("batch_size", int, "images attacked at once (never changes the results)",
           default=64, check=POSITIVE),
    OPTIONS["device"],
    Option("seed", int, "random seed (restarts, the black-box search)", default=0,
           check=NON_NEGATIVE),
    Option("out", Path, "results folder; rerunning resumes, more --attacks extend it",
           shown="results/evaluate-<dataset>-<model>-<norm>"),
    OPTIONS["no_progress"],
)  # fmt: skip


@dataclass(frozen=True)
class EvaluateOptions:
    """`tkmia evaluate`'s options, checked: what the command runs with.

    Attributes:
        dataset, root, csv, split, image_size: the data (split: the dataset's evaluation
            split unless given).
        model: the parsed ``--model`` (a :class:`~tkmia.models.sources.ModelSource`);
            normalize, classes: its ``--normalize``/``--classes``.
        norm, eps (increasing, > 0), k, attacks (in :data:`ATTACKS`' order), iterations,
        restarts, queries, samples, batch_size, device, seed, out: as the flags.
    """

    dataset: str
    root: Path | None
    csv: Path | None
    split: str
    image_size: int | None
    model: Any
    normalize: str | None
    classes: Path | None
    norm: str
    eps: tuple[float, ...]
    k: int
    attacks: tuple[str, ...]
    iterations: int
    restarts: int
    queries: int
    samples: int
    batch_size: int
    device: str
    seed: int
    out: Path


def parse_eps(text: str) -> float:
    """``"8/255"`` or ``"0.5"`` as a float > 0 (finite).

    Raises:
        InputError: not a number or fraction, or not positive.
    """
    try:
        value = float(Fraction(str(text).strip()))
    except (ValueError, ZeroDivisionError):
        raise InputError(
            f"--eps must be numbers or fractions such as 8/255, got {text!r}"
        ) from None
    if not (math.isfinite(value) and value > 0):
        raise InputError(f"--eps must be positive, got {text!r}")
    return value


def evaluate_options(opts: dict[str, Any]) -> EvaluateOptions:
    """The checked options from the flags and the config file (as
    :func:`~tkmia.cli.options.resolve_options` returns them); defaults filled in.

    Raises:
        InputError, MissingFileError: the first mistake found.
    """
    from tkmia.data.factory import EVAL_SPLIT

    opts = complete(opts, EVALUATE_OPTIONS)
    check_values(opts, EVALUATE_OPTIONS)
    dataset = opts["dataset"]
    norm = opts["norm"]
    eps = sorted({parse_eps(e) for e in opts.get("eps") or []} or DEFAULT_EPS[norm])
    source = check_data_and_model(opts)
    out = Path(opts.get("out") or Path("results") / f"evaluate-{dataset}-{source.name}-{norm}")
    check_writable(out)
    return EvaluateOptions(
        dataset=dataset, root=opts.get("root"), csv=opts.get("csv"),
        split=opts.get("split") or EVAL_SPLIT.get(dataset, "val"),
        image_size=opts.get("image_size"), model=source, normalize=opts.get("normalize"),
        classes=opts.get("classes"), norm=norm, eps=tuple(eps), k=opts["k"],
        attacks=tuple(a for a in ATTACKS if a in opts["attacks"]),
        iterations=opts["iterations"], restarts=opts["restarts"], queries=opts["queries"],
        samples=opts["samples"], batch_size=opts["batch_size"],
        device=resolve_device(opts["device"]), seed=opts["seed"], out=out,
    )  # fmt: skip


def add_parser(sub: Any) -> None:
    """Add the `evaluate` subcommand (its flags from :data:`EVALUATE_OPTIONS`)."""
    parser = sub.add_parser(
        "evaluate",
        help="robustness at a budget eps: white-box and black-box, worst case per image",
        description="Attack the first --samples images of a split within an eps-ball "
        "(APGD-style white-box attacks, then the scores-only Square Attack), keep the worst "
        "case per image, and report robust precision@k and recall@k against eps.",
    )
    add_options(parser, EVALUATE_OPTIONS)


def _open(options: EvaluateOptions) -> tuple[Any, Any]:
    """The model (checked against the dataset) and the dataset."""
    o = options
    return open_data_and_model(o.dataset, o.split, o.root, o.image_size, o.csv, o.model,
                               o.normalize, o.classes, o.device)  # fmt: skip


def command(args: argparse.Namespace) -> int:
    """Run `tkmia evaluate`: attack, write the records, the tables and the figure.

    Returns:
        The exit code, 0.

    Raises:
        InputError, MissingFileError: a user mistake (before anything is written).
    """
    from tkmia.experiments.evaluate import EvaluateConfig, ensemble_log, evaluate
    from tkmia.experiments.results_dir import check_compatible
    from tkmia.files import remove_stale_temporaries
    from tkmia.reports.evaluate import eps_text, render_evaluation

    options = evaluate_options(resolve_options(args, EVALUATE_OPTIONS))
    config = EvaluateConfig(
        options.dataset, options.model.name, options.split, options.k, options.norm,
        options.eps, options.attacks, options.iterations, options.restarts, options.queries,
        options.samples, options.seed, options.batch_size,
    )  # fmt: skip
    partial = {key: value for key, value in config.config_json().items() if key != "methods"}
    check_compatible(options.out, partial)
    model, dataset = _open(options)
    grid = ",".join(eps_text(e, options.norm) for e in options.eps)
    print(f"tkmia evaluate: {options.dataset} ({options.split}), model {options.model.name}, "
          f"{options.norm} eps {grid}, k={options.k}, attacks {', '.join(options.attacks)}, "
          f"up to {options.samples} images", flush=True)  # fmt: skip
    rows = evaluate(config, model, dataset, options.out, options.device, log=print)
    title = f"{options.dataset} · {options.model.name} · {options.norm} · k={options.k}"
    print(render_evaluation(options.out, rows, title, ensemble_log(options.out, config)))
    remove_stale_temporaries(options.out)
    print(f"results: {options.out}")
    return 0
