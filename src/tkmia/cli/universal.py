"""`tkmia universal`: one perturbation per S1 group that hides it from every image (SPEC
§7.4), fitted on the training split, reported on the evaluation split, over a grid of
``--eps`` and ``--k``, for universal TkMIA and the untargeted baseline."""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path
from typing import Any

from tkmia.attacks.universal import OBJECTIVES, Universal
from tkmia.cli.checks import check_device, check_writable, resolve_device
from tkmia.cli.options import (
    NON_NEGATIVE,
    OPTIONS,
    POSITIVE,
    POSITIVE_NUMBER,
    Option,
    add_options,
    check_values,
    complete,
    resolve_options,
)
from tkmia.errors import InputError, MissingFileError
from tkmia.experiments.builtin import DEFAULT_GROUPS

_UNIVERSAL = {
    name: p.default for name, p in inspect.signature(Universal).parameters.items()
}  # the attack's keyword defaults: one source of truth
#: every option of `tkmia universal`: the shared ones of `tkmia run`, then its own
UNIVERSAL_OPTIONS: tuple[Option, ...] = (
    *(OPTIONS[name] for name in ("config", "dataset", "root", "csv", "image_size", "model")),
    Option("split", help="split δ is evaluated on", shown="val, or test for digits and nuswide"),
    Option("fit_split", help="split δ is fitted on", shown="train"),
    *(OPTIONS[name] for name in ("k", "groups")),
    Option("eps", float, "L2 radii of δ (pixels in [0, 1])", many=True,
           default=[1.0, 2.0, 4.0, 8.0], check=POSITIVE_NUMBER),
    Option("objectives", help="tkmia (universal TkMIA), tkmlapu (untargeted baseline)",
           many=True, default=list(OBJECTIVES), choices=tuple(OBJECTIVES)),
    Option("fit_samples", int, "eligible images δ is fitted on (the first)", default=2000,
           check=POSITIVE),
    Option("samples", int, "eligible images evaluated (the first)", default=1000, check=POSITIVE),
    Option("lr", float, "step length as a fraction of eps", default=_UNIVERSAL["lr"],
           check=POSITIVE_NUMBER),
    Option("epochs", int, "passes over the fitting images", default=_UNIVERSAL["epochs"],
           check=POSITIVE),
    Option("batch_size", int, "images per minibatch", default=_UNIVERSAL["batch_size"],
           check=POSITIVE),
    OPTIONS["device"],
    Option("seed", int, "random seed (the fit's minibatch order)", default=0, check=NON_NEGATIVE),
    OPTIONS["examples"],
    Option("out", Path, "results folder; rerunning the same command resumes",
           shown="results/universal-<dataset>-<model>"),
    OPTIONS["no_progress"],
)  # fmt: skip


def add_parser(sub: Any) -> None:
    """Add the `universal` subcommand (its flags from
    :data:`UNIVERSAL_OPTIONS`).

    Args:
        sub: the ``add_subparsers()`` object of the `tkmia` parser.
    """
    parser = sub.add_parser(
        "universal",
        help="fit one perturbation that hides a label group from every image",
        description="Fit δ (‖δ‖₂ <= eps) on the eligible images of --fit-split for each S1 "
        "group, k, objective and eps, and report it on the eligible images of --split.",
    )
    add_options(parser, UNIVERSAL_OPTIONS)


def _plan(opts: dict[str, Any]) -> tuple[str, Path | None, str, Path]:
    """Every check that needs no data: (dataset, model path, model name, out)."""
    from tkmia.data.factory import DATASETS
    from tkmia.experiments.settings import check_setting_grid

    check_values(opts, UNIVERSAL_OPTIONS)
    dataset = opts["dataset"]
    if dataset not in DATASETS:
        raise InputError(f"unknown dataset {dataset!r}; expected one of {list(DATASETS)}")
    check_setting_grid(["global"], opts["k"], [], [None])
    check_device(opts["device"])
    model_path = opts.get("model")
    if model_path is None and dataset != "digits":
        raise InputError(f"dataset {dataset!r} needs --model, a trained checkpoint")
    if model_path is not None and not Path(model_path).is_file():
        raise MissingFileError(f"model file {str(model_path)!r} not found")
    name = "builtin" if model_path is None else Path(model_path).stem
    out = Path(opts.get("out") or Path("results") / f"universal-{dataset}-{name}")
    check_writable(out)
    return dataset, None if model_path is None else Path(model_path), name, out


def command(args: argparse.Namespace) -> int:
    """Run `tkmia universal`: fit, evaluate, write records, tables and the figure.

    Args:
        args: the parsed command line.

    Returns:
        The exit code, 0.

    Raises:
        InputError, MissingFileError: a user mistake (a setting without any eligible
            image included).
    """
    import torch

    from tkmia.data.factory import EVAL_SPLIT, TRAIN_SPLIT, open_dataset
    from tkmia.experiments.settings import setting_grid
    from tkmia.experiments.universal import UniversalConfig, run_universal
    from tkmia.files import folder_lock, remove_stale_temporaries
    from tkmia.models import fit_model, open_model
    from tkmia.reports.universal import render_universal

    opts = complete(resolve_options(args, UNIVERSAL_OPTIONS), UNIVERSAL_OPTIONS)
    dataset, model_path, model_name, out = _plan(opts)
    device = resolve_device(opts["device"])
    splits = (
        opts.get("fit_split") or TRAIN_SPLIT.get(dataset, "train"),
        opts.get("split") or EVAL_SPLIT.get(dataset, "val"),
    )
    fit_set, eval_set = (
        open_dataset(dataset, s, opts.get("root"), opts.get("image_size"), opts.get("csv"))
        for s in splits
    )
    classes = list(eval_set.classes)
    groups = opts.get("groups") or DEFAULT_GROUPS.get(dataset) or []
    settings = setting_grid(["global"], opts["k"], groups, [], [None], dataset, classes)
    model, info = open_model(model_path or "builtin", device, num_classes=len(classes))
    model = fit_model(model, info, classes, int(eval_set[0][0].shape[-1]), device, dataset)
    config = UniversalConfig(
        dataset, model_name, settings, list(dict.fromkeys(opts["objectives"])),
        list(dict.fromkeys(opts["eps"])), opts["lr"], opts["epochs"], opts["batch_size"],
        opts["seed"], splits[0], splits[1], opts["fit_samples"], opts["samples"],
        opts["examples"], {"classes": classes},
    )  # fmt: skip
    torch.manual_seed(opts["seed"])
    print(
        f"tkmia universal: {dataset} (fit on {splits[0]}, evaluate on {splits[1]}), model "
        f"{model_name}, {len(settings)} settings x {len(config.objectives)} objectives x "
        f"{len(config.eps)} radii",
        flush=True,
    )
    with folder_lock(out, "tkmia universal"):
        rows = run_universal(config, model, fit_set, eval_set, out, device, log=print)
        print(render_universal(out, rows, classes))
        remove_stale_temporaries(out)
    print(f"results: {out}")
    return 0
