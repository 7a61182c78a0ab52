"""`tkmia run`: resolve flags and config, validate everything, then run the protocol.

Every check that needs no data runs before any image is generated or read and before
anything is written (:func:`plan_run`); the checks that need the dataset's classes follow
as soon as they are known.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tkmia.cli.checks import check_data_and_model, check_writable, resolve_device
from tkmia.cli.consistency import apply_implications, option_names
from tkmia.cli.options import add_options, check_values, complete, resolve_options
from tkmia.errors import InputError
from tkmia.experiments.builtin import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_GROUPS,
    DEFAULT_SAMPLES,
    FALLBACK_BATCH_SIZE,
    FALLBACK_SAMPLES,
    VARIANT_SAMPLES,
    with_default_variants,
)
from tkmia.experiments.methods import HYPERPARAMETERS, REGISTRY
from tkmia.experiments.settings import (
    MethodConfig,
    Setting,
    check_setting_grid,
    method_grid,
    setting_grid,
)
from tkmia.experiments.summary import SummaryRow
from tkmia.protocol import eligibility_rule


def add_parser(sub: Any) -> None:
    """Add the `run` subcommand (its flags from :data:`~tkmia.cli.options.RUN_OPTIONS`).

    Args:
        sub: the ``add_subparsers()`` object of the `tkmia` parser.
    """
    parser = sub.add_parser(
        "run",
        help="attack a model with the paper's protocol and write tables and figures",
        description="With no arguments: the built-in benchmark (digits dataset, built-in "
        "model, all four attacks, S1 and S2, k in {2, 3}).",
    )
    add_options(parser)


def _schemes(scheme: str) -> list[str]:
    return ["global", "random"] if scheme == "both" else [scheme]


def build_methods(opts: dict[str, Any]) -> list[MethodConfig]:
    """The method configurations of the run: each method × the grid of its hyper-parameters.

    Args:
        opts: the resolved options (``methods``: registry names, default all but the
            targeted ones; on the built-in dataset without any method or hyper-parameter
            option, plus the built-in benchmark's SPEC §7 variants (``DEFAULT_VARIANTS``);
            ``lr``, ``lam``, ``max_iter``: lists, default each method's own).

    Returns:
        The configurations in run order (see :func:`~tkmia.experiments.settings.method_grid`).

    Raises:
        InputError: an unknown method.
    """
    methods = opts.get("methods") or [m for m, spec in REGISTRY.items() if not spec.targeted]
    values = {name: opts.get(hp.option) for name, hp in HYPERPARAMETERS.items()}
    configs = method_grid(methods, values)
    if _builtin_variants(opts):
        configs = with_default_variants(configs)
    return configs


def register_methods(methods: list[str] | None, sets: list[str] | None) -> list[str] | None:
    """``--methods`` with each ``file.py:Class`` or ``pkg.mod:Class`` entry imported,
    registered and replaced by its method name (:mod:`tkmia.experiments.custom`).

    Raises:
        InputError, MissingFileError: see :func:`~tkmia.experiments.custom.register_custom`;
            ``--set`` without such an entry.
    """
    from tkmia.experiments.custom import is_custom, parse_sets, register_custom

    values = parse_sets(sets)
    if not methods or not any(is_custom(m) for m in methods):
        if values:
            raise InputError("--set is for your own attack class (--methods file.py:Class)")
        return methods
    return [register_custom(m, values) if is_custom(m) else m for m in methods]


def _builtin_variants(opts: dict[str, Any]) -> bool:
    """Whether the run is the built-in benchmark that adds SPEC §7 variants: the built-in
    dataset, no method and no hyper-parameter option given."""
    given = any(opts.get(hp.option) for hp in HYPERPARAMETERS.values())
    return opts.get("dataset", "digits") == "digits" and not opts.get("methods") and not given


def check_grid(opts: dict[str, Any]) -> None:
    """The checks of the settings grid that need no dataset: k >= 1, n in [1, k], a
    threshold in [1, n] and only with S2.

    Raises:
        InputError: the first bad value.
    """
    opts = complete(opts)
    thresholds = opts.get("threshold") or [None]
    check_setting_grid(_schemes(opts["scheme"]), opts["k"], opts["n"], thresholds)


def build_settings(opts: dict[str, Any], dataset: str, classes: list[str]) -> list[Setting]:
    """Every (scheme, k, group or n, threshold) the run covers, validated against the classes.

    Args:
        opts: the resolved options.
        dataset: the dataset's name (its built-in label groups are the default ``groups``).
        classes: its label names.

    Returns:
        The settings in run order.

    Raises:
        InputError: k >= c, an unknown label or group, or no groups for S1.
    """
    from tkmia.data.groups import GROUPS

    opts = complete(opts)
    groups = opts.get("groups") or DEFAULT_GROUPS.get(dataset) or list(GROUPS.get(dataset, {}))
    thresholds = opts.get("threshold") or [None]
    targeted = {REGISTRY[m].targeted for m in opts.get("methods") or [] if m in REGISTRY}
    schemes = _schemes(opts["scheme"]) if targeted != {True} else []
    targets = opts["targets"] if True in targeted else []
    return setting_grid(
        schemes, opts["k"], groups, opts["n"], thresholds, dataset, classes, targets
    )


#: the exit code of a run in which no setting attacked any image (nothing was eligible)
EXIT_NOTHING_ATTACKED = 3


@dataclass(frozen=True)
class RunPlan:
    """What a run does, checked before any data is read."""

    opts: dict[str, Any]
    dataset: str
    methods: list[MethodConfig]
    samples: int
    batch_size: int
    chunk_size: int | None
    model: Any  # the parsed --model, a tkmia.models.ModelSource
    model_name: str
    out: Path


def plan_run(opts: dict[str, Any]) -> RunPlan:
    """Check every option that needs no data, and fill in the defaults.

    Args:
        opts: as :func:`~tkmia.cli.options.resolve_options` returns them.

    Returns:
        The plan; ``plan.opts`` holds every option with a default.

    Raises:
        InputError, MissingFileError: the first mistake found.
    """
    from tkmia.experiments.selection import check_rule

    opts = complete(opts)
    check_values(opts)
    dataset = opts["dataset"]
    source = check_data_and_model(opts)
    opts["methods"] = register_methods(opts.get("methods"), opts.get("set"))
    methods = build_methods(opts)
    check_grid(opts)
    check_rule("success", opts["select_tol"], opts["select_scope"])
    model_name = source.name
    out = Path(opts.get("out") or Path("results") / f"{dataset}-{model_name}")
    check_writable(out)
    return RunPlan(
        opts=opts,
        dataset=dataset,
        methods=methods,
        samples=opts.get("samples", DEFAULT_SAMPLES.get(dataset, FALLBACK_SAMPLES)),
        batch_size=opts.get("batch_size", DEFAULT_BATCH_SIZE.get(dataset, FALLBACK_BATCH_SIZE)),
        chunk_size=opts.get("chunk_size"),  # None: RunConfig's default (four batches)
        model=source,
        model_name=model_name,
        out=out,
    )


def early_config(plan: RunPlan) -> dict[str, Any]:
    """The ``config.json`` entries known before the data is opened (to refuse a results
    folder of another configuration at once)."""
    from tkmia.data.factory import EVAL_SPLIT

    return {
        "dataset": plan.dataset,
        "model": plan.model_name,
        "samples": plan.samples,
        "seed": plan.opts["seed"],
        "chunk_size": plan.chunk_size or 4 * plan.batch_size,  # as RunConfig.chunk
        "split": plan.opts.get("split") or EVAL_SPLIT.get(plan.dataset, "val"),
    }


def _open(plan: RunPlan, device: str) -> tuple[Any, Any, list[Setting], str]:
    """The model, the dataset, the settings and the split; classes checked on the way."""
    from tkmia.data.digits import CANVAS
    from tkmia.data.digits import CLASSES as DIGITS_CLASSES
    from tkmia.data.factory import DEFAULT_IMAGE_SIZE, open_dataset
    from tkmia.models import fit_model, open_model

    opts, name = plan.opts, plan.dataset
    # the built-in dataset's classes are known without generating its images
    known = list(DIGITS_CLASSES) if name == "digits" else None
    if known is not None:
        build_settings(opts, name, known)
    size = opts.get("image_size") or DEFAULT_IMAGE_SIZE.get(name, CANVAS)
    convention = {"normalize": opts.get("normalize"), "classes": opts.get("classes")}
    model, info = open_model(
        plan.model, device, num_classes=None if known is None else len(known), **convention
    )
    if known is not None:
        model = fit_model(model, info, known, size, device, name)
    split = early_config(plan)["split"]
    dataset = open_dataset(
        name, split, opts.get("root"), opts.get("image_size"), opts.get("csv"), seed=0
    )
    classes = list(dataset.classes)
    if known is None:
        model = fit_model(model, info, classes, size, device, name)
    return model, dataset, build_settings(opts, name, classes), split


def _announce(plan: RunPlan, config: Any, dataset: Any, dist: Any) -> None:
    """Print what the run covers (on the main process)."""
    if dist.is_main:
        ranks = f", {dist.world_size} processes" if dist.active else ""
        print(
            f"tkmia run: {plan.dataset} ({config.extra['split']}, {len(dataset)} images), "
            f"model {plan.model_name}, {len(config.settings)} settings x {len(plan.methods)} "
            f"methods, up to {plan.samples} images each{ranks}",
            flush=True,
        )


def command(args: argparse.Namespace) -> int:
    """Run `tkmia run`: attack, write the records, tables and figures, and the audit
    (unless ``--no-audit``).

    Args:
        args: the parsed command line.

    Returns:
        The exit code: 0, or :data:`EXIT_NOTHING_ATTACKED` when no image was eligible in
        any setting (after a warning per setting).

    Raises:
        InputError, MissingFileError: a user mistake (before anything is written).
    """
    import torch

    from tkmia.experiments.distributed import init_from_env, shutdown
    from tkmia.experiments.results_dir import check_compatible
    from tkmia.experiments.runner import RunConfig, run
    from tkmia.files import folder_lock

    plan = plan_run(apply_implications(resolve_options(args), option_names(args)))
    opts, out = plan.opts, plan.out
    check_compatible(out, early_config(plan))
    dist, device = init_from_env(resolve_device(opts["device"]))  # torchrun: join the process group
    model, dataset, settings, split = _open(plan, device)
    classes = list(dataset.classes)
    variants = [c.key for c in plan.methods if c.variant] if _builtin_variants(opts) else []
    few = min(plan.samples, VARIANT_SAMPLES.get(plan.dataset, plan.samples))
    config = RunConfig(
        method_samples={key: few for key in variants} if few < plan.samples else {},
        dataset=plan.dataset,
        model=plan.model_name,
        settings=settings,
        methods=plan.methods,
        samples=plan.samples,
        seed=opts["seed"],
        batch_size=plan.batch_size,
        chunk_size=plan.chunk_size,
        examples=opts["examples"],
        extra={"split": split, "classes": classes},
    )
    torch.manual_seed(opts["seed"])
    _announce(plan, config, dataset, dist)
    try:
        flags = {"progress": opts["progress"], "skip_bad_images": opts["skip_bad_images"]}
        # one process: the folder is held from the first write to the last (run() takes
        # the lock again, re-entrantly); torchrun: run() holds it on rank 0, then _finish
        with folder_lock(out, "tkmia run") if not dist.active else nullcontext():
            rows = run(config, model, dataset, out, device=device, dist=dist, **flags)
        if dist.is_main:
            with folder_lock(out, "tkmia run"):
                _finish(out, rows, classes, opts)
            print(f"results: {out}")
            warn_low_success(rows)
            if not warn_unattacked(rows):
                return EXIT_NOTHING_ATTACKED
    finally:
        shutdown(dist)
    return 0


def _finish(out: Path, rows: list[SummaryRow], classes: list[str], opts: dict[str, Any]) -> None:
    """Rank 0, the run done and the folder held: the selection rule, the tables and
    figures, the audit, and the temporaries of killed processes removed."""
    from tkmia.experiments.selection import save_rule
    from tkmia.files import remove_stale_temporaries
    from tkmia.reports.render import render  # matplotlib: only once there is a table

    save_rule(out, "success", opts["select_tol"], opts["select_scope"])
    print(render(out, rows=rows, classes=classes))
    if not opts["no_audit"]:
        _audit(out)
    # every rank is past run()'s last barrier: none can still be writing here
    remove_stale_temporaries(out)


def _audit(out: Path) -> None:
    """The defender's audit of the finished run (``tkmia audit``'s defaults); a folder
    whose older records lack its columns gets a warning, not a failed run."""
    from tkmia.cli.audit import audit_folder
    from tkmia.experiments.audit import BATCH_SIZES, DRAWS

    try:
        print(audit_folder(out, list(BATCH_SIZES), 0, DRAWS))
    except InputError as err:
        print(f"tkmia run: warning: no audit: {err}", file=sys.stderr)


def warn_unattacked(rows: Sequence[SummaryRow]) -> bool:
    """Warn on stderr about every setting in which no image was eligible: how many images
    were looked at and the rule that excluded them. Returns whether anything was attacked.

    Args:
        rows: the run's summary rows.
    """
    attacked: dict[str, int] = {}
    firsts: dict[str, SummaryRow] = {}
    for row in rows:
        attacked[row.setting_key] = attacked.get(row.setting_key, 0) + row.attacked
        firsts.setdefault(row.setting_key, row)
    for key, row in firsts.items():
        if attacked[key]:
            continue
        s = row.setting
        rule = eligibility_rule(s.scheme, s.k, s.n)
        print(
            f"tkmia run: warning: {row.setting_title}: no image was eligible ({row.skipped} "
            f"looked at and skipped; eligible: {rule})",
            file=sys.stderr,
        )
    if rows and not any(attacked.values()):
        print(
            f"tkmia run: warning: no setting attacked any image; exit code "
            f"{EXIT_NOTHING_ATTACKED} (choose other settings, another split, or a model "
            "that ranks more relevant labels in its top-k)",
            file=sys.stderr,
        )
        return False
    return True


def warn_low_success(rows: Sequence[SummaryRow]) -> None:
    """One line on stderr per summary row whose success rate is below
    :data:`~tkmia.errors.LOW_SUCCESS`: the figure and what to try.

    Args:
        rows: the run's summary rows.
    """
    from tkmia.errors import LOW_SUCCESS, low_success_advice

    for row in rows:
        if row.attacked and row.success_rate < LOW_SUCCESS:
            name = f"{row.method_title} on {row.setting_title}"
            advice = low_success_advice(name, row.success_rate, row.attacked)
            print(f"tkmia run: warning: {advice}", file=sys.stderr)
