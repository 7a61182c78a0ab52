"""`tkmia run`: resolve flags and config, validate everything, then run the protocol."""

from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
from pathlib import Path
from typing import Any

from tkmia.errors import InputError, MissingFileError
from tkmia.experiments.builtin import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_GROUPS,
    DEFAULT_HPARAMS,
    DEFAULT_K,
    DEFAULT_N,
    DEFAULT_SAMPLES,
    FALLBACK_BATCH_SIZE,
    FALLBACK_SAMPLES,
)
from tkmia.experiments.settings import METHODS, MethodConfig, Setting
from tkmia.protocol import check_scheme

#: keys accepted in a --config TOML file (the flags' names with '_' for '-').
CONFIG_KEYS = {
    "dataset", "root", "csv", "split", "image_size", "model", "methods", "scheme", "k",
    "groups", "n", "threshold", "samples", "lr", "lam", "max_iter", "batch_size", "chunk_size",
    "device", "seed", "examples", "out", "select_tol", "select_scope", "skip_bad_images",
}  # fmt: skip
LIST_KEYS = {"methods", "k", "groups", "n", "threshold", "lr", "lam", "max_iter"}
_PATH_KEYS = {"root", "csv", "model", "out"}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


#: the type of each config key (of each item, for the list keys): (what, check)
_CONFIG_TYPES = {
    **{key: ("a string", lambda v: isinstance(v, str)) for key in (
        "dataset", "root", "csv", "split", "model", "methods", "scheme", "groups", "device",
        "out")},
    **{key: ("an integer", _is_int) for key in (
        "image_size", "k", "n", "threshold", "samples", "max_iter", "batch_size", "chunk_size",
        "seed", "examples")},
    **{key: ("a number", _is_number) for key in ("lr", "lam", "select_tol")},
    "select_scope": ("a string", lambda v: isinstance(v, str)),
    "skip_bad_images": ("true or false", lambda v: isinstance(v, bool)),
}  # fmt: skip


def _load_config(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    if not path.is_file():
        raise MissingFileError(f"config file {str(path)!r} not found")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"config file {str(path)!r} is not valid TOML: {err}") from None
    data = {key.replace("-", "_"): value for key, value in data.items()}
    unknown = sorted(set(data) - CONFIG_KEYS)
    if unknown:
        raise InputError(
            f"config file {str(path)!r} has unknown keys {unknown}; "
            f"expected some of {sorted(CONFIG_KEYS)}"
        )
    for key in LIST_KEYS & set(data):
        if not isinstance(data[key], list):
            data[key] = [data[key]]
    for key, value in data.items():
        kind, check = _CONFIG_TYPES.get(key, ("", None))
        for item in value if key in LIST_KEYS else [value]:
            if check is not None and not check(item):
                raise InputError(f"config file {str(path)!r}: {key} must be {kind}, got {item!r}")
        if key in _PATH_KEYS:
            data[key] = Path(value)
    return data


def resolve_options(args: argparse.Namespace) -> dict[str, Any]:
    """Merge the config file (if any) and the flags; flags win."""
    opts = _load_config(args.config) if args.config else {}
    for key in CONFIG_KEYS:
        value = getattr(args, key, None)
        if value is not None:
            opts[key] = value
    opts["progress"] = not args.no_progress and sys.stderr.isatty()
    return opts


def _positive_int(opts: dict[str, Any], key: str, default: int) -> int:
    value = opts.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"--{key.replace('_', '-')} must be a positive integer, got {value!r}")
    return value


def build_methods(opts: dict[str, Any]) -> list[MethodConfig]:
    """Method configs: each method × the grid of given hyper-parameters (else defaults)."""
    methods = opts.get("methods") or list(METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise InputError(f"unknown method {unknown[0]!r}; expected some of {list(METHODS)}")
    for key, allow_zero in (("lr", False), ("lam", True), ("max_iter", False)):
        for value in opts.get(key) or []:
            bad = not _is_number(value) or not math.isfinite(value)
            if bad or (value < 0 if allow_zero else value <= 0):
                need = (
                    "a finite number >= 0 (0 turns the penalty off)"
                    if allow_zero
                    else ("a finite number > 0" if key != "max_iter" else "a positive integer")
                )
                raise InputError(f"--{key.replace('_', '-')} must be {need}, got {value!r}")
    configs = []
    for method in dict.fromkeys(methods):
        d = DEFAULT_HPARAMS[method]
        iters = opts.get("max_iter") or [d["max_iter"]]
        if method == "kfool":
            configs += [MethodConfig("kfool", max_iter=int(it)) for it in iters]
            continue
        lrs = opts.get("lr") or [d["lr"]]
        lams = opts.get("lam") or [d["lam"]]
        for lr, lam, it in itertools.product(lrs, lams, iters):
            configs.append(MethodConfig(method, max_iter=int(it), lr=float(lr), lam=float(lam)))
    return configs


def build_settings(opts: dict[str, Any], dataset_name: str, classes: list[str]) -> list[Setting]:
    """Every (scheme, k, group or n, threshold) the run covers, validated."""
    from tkmia.data.groups import GROUPS, resolve_group

    c = len(classes)
    scheme = opts.get("scheme", "both")
    schemes = ["global", "random"] if scheme == "both" else [scheme]
    ks = opts.get("k") or DEFAULT_K
    settings = []
    for k in ks:
        if "global" in schemes:
            check_scheme("global", k, c, None, None)
            groups = (
                opts.get("groups")
                or DEFAULT_GROUPS.get(dataset_name)
                or list(GROUPS.get(dataset_name, {}))
            )
            if not groups:
                raise InputError(
                    f"dataset {dataset_name!r} has no built-in label groups; pass --groups "
                    "with label names joined by '+'"
                )
            for spec in groups:
                name, idx = resolve_group(spec, classes, dataset_name)
                settings.append(Setting("global", k, group=name, group_indices=tuple(idx)))
        if "random" in schemes:
            for n in opts.get("n") or DEFAULT_N:
                for t in opts.get("threshold") or [None]:
                    check_scheme("random", k, c, n, t)
                    settings.append(Setting("random", k, n=n, threshold=t))
    return settings


def check_grid(opts: dict[str, Any]) -> None:
    """The checks of the settings grid that need no dataset: scheme, k >= 1, n, threshold.

    Run before any data is read; :func:`build_settings` checks k < c and the groups.
    """
    scheme = opts.get("scheme", "both")
    if scheme not in ("global", "random", "both"):
        raise InputError(f"--scheme must be one of global, random, both, got {scheme!r}")
    for k in opts.get("k") or DEFAULT_K:
        if not _is_int(k) or k < 1:
            raise InputError(f"--k must be a positive integer (1 <= k < c), got {k!r}")
        for t in opts.get("threshold") or [None]:
            if scheme == "global":
                if t is not None:  # the message says --threshold is for S2 only
                    check_scheme("global", k, k + 1, None, t)
                continue
            for n in opts.get("n") or DEFAULT_N:
                check_scheme("random", k, k + 1, n, t)


def _check_classes(model_path: Path, trained: list[str], classes: list[str], dataset: str) -> None:
    if list(trained) != list(classes):
        raise InputError(
            f"checkpoint {str(model_path)!r} was trained on {len(trained)} other classes than "
            f"the {len(classes)} of {dataset!r} ({trained[:3]}... vs {classes[:3]}...)"
        )


def _check_writable(out: Path) -> None:
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(
            f"--out {str(out)!r} cannot be created: {str(probe)!r} is a file, not a folder"
        )
    if not os.access(probe, os.W_OK):
        raise InputError(
            f"--out {str(out)!r} cannot be written: no write permission in {str(probe)!r}"
        )


def run_command(args: argparse.Namespace) -> int:
    import torch

    from tkmia.data.digits import CLASSES as DIGITS_CLASSES
    from tkmia.data.factory import DATASETS, EVAL_SPLIT, open_dataset
    from tkmia.experiments.distributed import init_from_env, shutdown
    from tkmia.experiments.runner import RunConfig, run
    from tkmia.experiments.selection import DEFAULT_SCOPE, DEFAULT_TOL, check_rule, save_rule
    from tkmia.files import remove_stale_temporaries
    from tkmia.models import builtin_model, load_model
    from tkmia.reports.render import render

    # every check runs before any image is generated or read and before anything is written
    opts = resolve_options(args)
    dataset_name = opts.get("dataset", "digits")
    if dataset_name not in DATASETS:
        raise InputError(f"unknown dataset {dataset_name!r}; expected one of {list(DATASETS)}")
    seed = opts.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"--seed must be a non-negative integer, got {seed!r}")
    samples = _positive_int(opts, "samples", DEFAULT_SAMPLES.get(dataset_name, FALLBACK_SAMPLES))
    batch_size = _positive_int(
        opts, "batch_size", DEFAULT_BATCH_SIZE.get(dataset_name, FALLBACK_BATCH_SIZE)
    )
    # None: RunConfig's default (four batches)
    chunk_size = _positive_int(opts, "chunk_size", 1) if "chunk_size" in opts else None
    examples = opts.get("examples", 3)
    if not _is_int(examples) or examples < 0:
        raise InputError(f"--examples must be a non-negative integer, got {examples!r}")
    methods = build_methods(opts)
    check_grid(opts)
    select_tol = opts.get("select_tol", DEFAULT_TOL)
    select_scope = opts.get("select_scope", DEFAULT_SCOPE)
    check_rule("success", select_tol, select_scope)
    device = opts.get("device") or "cpu"
    try:
        torch.device(device)
    except RuntimeError:
        raise InputError(f"--device must be cpu or cuda[:i], got {device!r}") from None
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device!r} asked for, but no CUDA device is available")
    model_path = opts.get("model")
    if model_path is None and dataset_name != "digits":
        raise InputError(f"dataset {dataset_name!r} needs --model, a trained checkpoint")
    if model_path is not None and not Path(model_path).is_file():
        raise MissingFileError(f"model file {str(model_path)!r} not found")
    model_name = "builtin" if model_path is None else Path(model_path).stem
    out = Path(opts.get("out") or Path("results") / f"{dataset_name}-{model_name}")
    _check_writable(out)
    dist, device = init_from_env(device)  # torchrun: join the process group
    # the built-in dataset's classes are known without generating its images
    known = list(DIGITS_CLASSES) if dataset_name == "digits" else None
    if known is not None:
        build_settings(opts, dataset_name, known)
    if model_path is None:
        model = builtin_model(device)
    else:
        model, meta = load_model(model_path, device, num_classes=known and len(known))
        if known is not None:
            _check_classes(model_path, meta["classes"], known, dataset_name)
    split = opts.get("split") or EVAL_SPLIT.get(dataset_name, "val")
    dataset = open_dataset(
        dataset_name, split, opts.get("root"), opts.get("image_size"), opts.get("csv"), seed=0
    )
    classes = list(dataset.classes)
    if model_path is not None:
        _check_classes(model_path, meta["classes"], classes, dataset_name)
    settings = build_settings(opts, dataset_name, classes)
    config = RunConfig(
        dataset=dataset_name,
        model=model_name,
        settings=settings,
        methods=methods,
        samples=samples,
        seed=seed,
        batch_size=batch_size,
        chunk_size=chunk_size,
        examples=examples,
        extra={"split": split, "classes": classes},
    )
    torch.manual_seed(seed)
    if dist.is_main:
        ranks = f", {dist.world_size} processes" if dist.active else ""
        print(
            f"tkmia run: {dataset_name} ({split}, {len(dataset)} images), model {model_name}, "
            f"{len(settings)} settings x {len(methods)} methods, up to {samples} images "
            f"each{ranks}",
            flush=True,
        )
    try:
        rows = run(
            config,
            model,
            dataset,
            out,
            device=device,
            progress=opts["progress"],
            skip_bad_images=bool(opts.get("skip_bad_images", False)),
            dist=dist,
        )
        if dist.is_main:
            save_rule(out, "success", select_tol, select_scope)
            print(render(out, rows=rows, classes=classes))
            # every rank is past run()'s last barrier: none can still be writing here
            remove_stale_temporaries(out)
            print(f"results: {out}")
    finally:
        shutdown(dist)
    return 0
