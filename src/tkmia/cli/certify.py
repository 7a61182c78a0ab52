"""`tkmia certify`: certified top-k robustness by randomized smoothing (MultiGuard, SPEC
§7.8): how many relevant labels provably stay in the smoothed top-k within an L2 radius."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
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
    NON_NEGATIVE_NUMBER,
    OPTIONS,
    POSITIVE,
    POSITIVE_NUMBER,
    Check,
    Option,
    add_options,
    check_values,
    complete,
    resolve_options,
)
from tkmia.errors import InputError

_ALPHA = Check("a number in (0, 1)", lambda v: isinstance(v, float) and 0 < v < 1)
#: the shipped built-in variant certified by default on digits (trained with this noise)
NOISE_MODEL = "noise0.25"
#: the default radius grid: 0 to 1 in steps of 0.05 (pixels in [0, 1])
DEFAULT_RADII = [round(0.05 * i, 2) for i in range(21)]

#: every option of `tkmia certify`: the shared ones of `tkmia run`, then its own
CERTIFY_OPTIONS: tuple[Option, ...] = (
    *(OPTIONS[name] for name in ("config", "dataset", "root", "csv", "split", "image_size")),
    Option("model", help=OPTIONS["model"].help,
           shown="for digits, the built-in model trained with noise 0.25 (--model builtin: "
           "the clean one)"),
    OPTIONS["normalize"],
    OPTIONS["classes"],
    Option("sigma", float, "noise levels σ of the smoothing (pixels in [0, 1])", many=True,
           default=[0.25, 0.5], check=POSITIVE_NUMBER),
    Option("n", int, "noisy copies per image", default=1000, check=POSITIVE),
    Option("alpha", float, "failure probability of the bounds per image", default=0.001,
           check=_ALPHA),
    Option("k", int, "the smoothed classifier's top-k", default=3, check=POSITIVE),
    Option("k_prime", int, "the base model's top-k' that is counted", default=1,
           check=POSITIVE),
    Option("radii", float, "L2 radii R of the certificate", many=True, default=DEFAULT_RADII,
           check=NON_NEGATIVE_NUMBER),
    Option("attack_radii", float, "L2 radii at which the smoothed model is also attacked "
           "(tkmia evaluate's L2 APGD on Monte-Carlo smoothed scores), for the empirical "
           "upper bound beside the certificate", many=True, default=[], check=NON_NEGATIVE_NUMBER),
    Option("samples", int, "images certified (the first with a relevant label)", default=100,
           check=POSITIVE),
    Option("batch_size", int, "noisy images per forward pass", default=500, check=POSITIVE),
    OPTIONS["device"],
    Option("seed", int, "random seed of the noise", default=0, check=NON_NEGATIVE),
    Option("out", Path, "results folder; rerunning the same command resumes",
           shown="results/certify-<dataset>-<model>"),
    OPTIONS["no_progress"],
)  # fmt: skip


@dataclass(frozen=True)
class CertifyOptions:
    """`tkmia certify`'s options, checked (built only by :func:`certify_options`)."""

    dataset: str
    root: Path | None
    csv: Path | None
    split: str
    image_size: int | None
    model: Any  # a tkmia.models.ModelSource
    normalize: str | None
    classes: Path | None
    sigmas: tuple[float, ...]
    n: int
    alpha: float
    k: int
    k_prime: int
    radii: tuple[float, ...]
    attack_radii: tuple[float, ...]
    samples: int
    batch_size: int
    device: str
    seed: int
    out: Path


def add_parser(sub: Any) -> None:
    """Add the `certify` subcommand (its flags from :data:`CERTIFY_OPTIONS`).

    Args:
        sub: the ``add_subparsers()`` object of the `tkmia` parser.
    """
    parser = sub.add_parser(
        "certify",
        help="certify top-k robustness by randomized smoothing (MultiGuard)",
        description="Count the base model's top-k' labels over --n Gaussian noise draws of "
        "each image, and certify how many relevant labels stay in the smoothed top-k for "
        "every L2 perturbation of norm <= R.",
    )
    add_options(parser, CERTIFY_OPTIONS)


def certify_options(args: argparse.Namespace) -> CertifyOptions:
    """The command line and config file, checked once, as :class:`CertifyOptions`.

    Raises:
        InputError, MissingFileError: the first mistake found.
    """
    from tkmia.data.factory import EVAL_SPLIT
    from tkmia.models.builtin import builtin_checkpoint_path

    opts = complete(resolve_options(args, CERTIFY_OPTIONS), CERTIFY_OPTIONS)
    check_values(opts, CERTIFY_OPTIONS)
    dataset = opts["dataset"]
    if opts.get("model") is None and dataset == "digits":
        opts["model"] = str(builtin_checkpoint_path(NOISE_MODEL))
    source = check_data_and_model(opts)
    out = Path(opts.get("out") or Path("results") / f"certify-{dataset}-{source.name}")
    check_writable(out)
    return CertifyOptions(
        dataset, opts.get("root"), opts.get("csv"),
        opts.get("split") or EVAL_SPLIT.get(dataset, "val"), opts.get("image_size"), source,
        opts.get("normalize"), opts.get("classes"), tuple(dict.fromkeys(opts["sigma"])),
        opts["n"], opts["alpha"], opts["k"], opts["k_prime"],
        tuple(sorted(set(opts["radii"]))), tuple(sorted(set(opts["attack_radii"]))),
        opts["samples"], opts["batch_size"],
        resolve_device(opts["device"]), opts["seed"], out,
    )  # fmt: skip


def command(args: argparse.Namespace) -> int:
    """Run `tkmia certify`: count, record, certify; write tables and the figure.

    Returns:
        The exit code, 0.

    Raises:
        InputError, MissingFileError: a user mistake.
    """
    from tkmia.experiments.certify import CertifyConfig, attack_smoothed, run_certify
    from tkmia.reports.certify import render_certify, render_empirical

    o = certify_options(args)
    model, dataset = open_data_and_model(o.dataset, o.split, o.root, o.image_size, o.csv,
                                         o.model, o.normalize, o.classes, o.device)  # fmt: skip
    c = len(dataset.classes)
    if o.k > c or o.k_prime > c:
        raise InputError(f"--k and --k-prime must be at most the {c} labels")
    config = CertifyConfig(
        o.dataset, o.model.name, o.split, o.sigmas, o.n, o.k_prime, o.seed, o.samples,
        o.batch_size, o.k, o.alpha, o.radii,
    )  # fmt: skip
    print(
        f"tkmia certify: {o.dataset} ({o.split}), model {o.model.name}, {o.samples} images, "
        f"sigma {', '.join(f'{s:g}' for s in o.sigmas)}, n = {o.n}",
        flush=True,
    )
    rows = run_certify(config, model, dataset, o.out, o.device, log=print)
    print(render_certify(o.out, rows, f"{o.dataset} · {o.model.name}"))
    if o.attack_radii:
        print(f"attacking the smoothed model at R = {', '.join(f'{r:g}' for r in o.attack_radii)}",
              flush=True)  # fmt: skip
        empirical = attack_smoothed(config, model, dataset, o.out, o.attack_radii, o.device)
        print(render_empirical(o.out, empirical))
    print(f"results: {o.out}")
    return 0
