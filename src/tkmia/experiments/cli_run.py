"""`tkmia run`: resolve flags and config, validate everything, then run the protocol."""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from pathlib import Path
from typing import Any

from tkmia.errors import InputError, MissingFileError
from tkmia.experiments.builtin import (
    DEFAULT_GROUPS,
    DEFAULT_HPARAMS,
    DEFAULT_K,
    DEFAULT_N,
    DEFAULT_SAMPLES,
    FALLBACK_SAMPLES,
)
from tkmia.experiments.settings import METHODS, MethodConfig, Setting
from tkmia.protocol import check_scheme

#: keys accepted in a --config TOML file (the flags' names with '_' for '-').
CONFIG_KEYS = {
    "dataset", "root", "csv", "split", "image_size", "model", "methods", "scheme", "k",
    "groups", "n", "threshold", "samples", "lr", "lam", "max_iter", "batch_size", "device",
    "seed", "examples", "out",
}  # fmt: skip
LIST_KEYS = {"methods", "k", "groups", "n", "threshold", "lr", "lam", "max_iter"}


def _load_config(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    if not path.is_file():
        raise MissingFileError(f"config file {str(path)!r} not found")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
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
            bad = value < 0 if allow_zero else value <= 0
            if bad:
                need = "non-negative (0 turns the penalty off)" if allow_zero else "positive"
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


def build_settings(
    opts: dict[str, Any], dataset_name: str, classes: list[str]
) -> list[Setting]:
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
            groups = opts.get("groups") or DEFAULT_GROUPS.get(dataset_name) or list(
                GROUPS.get(dataset_name, {})
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


def _check_writable(out: Path) -> None:
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise InputError(f"--out {str(out)!r} cannot be written (check the path and permissions)")


def run_command(args: argparse.Namespace) -> int:
    import torch

    from tkmia.data.factory import EVAL_SPLIT, open_dataset
    from tkmia.experiments.runner import RunConfig, run
    from tkmia.models import builtin_model, load_model
    from tkmia.reports.render import render

    opts = resolve_options(args)
    dataset_name = opts.get("dataset", "digits")
    seed = opts.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"--seed must be a non-negative integer, got {seed!r}")
    samples = _positive_int(opts, "samples", DEFAULT_SAMPLES.get(dataset_name, FALLBACK_SAMPLES))
    batch_size = _positive_int(opts, "batch_size", 100)
    examples = opts.get("examples", 3)
    methods = build_methods(opts)
    device = opts.get("device") or "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device!r} asked for, but no CUDA device is available")
    model_path = opts.get("model")
    if model_path is None and dataset_name != "digits":
        raise InputError(f"dataset {dataset_name!r} needs --model, a trained checkpoint")
    if model_path is not None and not Path(model_path).is_file():
        raise MissingFileError(f"model file {str(model_path)!r} not found")
    split = opts.get("split") or EVAL_SPLIT.get(dataset_name, "val")
    dataset = open_dataset(
        dataset_name, split, opts.get("root"), opts.get("image_size"), opts.get("csv"), seed=0
    )
    classes = list(dataset.classes)
    if model_path is None:
        model, model_name = builtin_model(device), "builtin"
    else:
        model, meta = load_model(model_path, device, num_classes=len(classes))
        model_name = Path(model_path).stem
        if list(meta["classes"]) != classes:
            raise InputError(
                f"checkpoint {str(model_path)!r} was trained on other classes than "
                f"{dataset_name!r} ({meta['classes'][:3]}... vs {classes[:3]}...)"
            )
    settings = build_settings(opts, dataset_name, classes)
    out = Path(opts.get("out") or Path("results") / f"{dataset_name}-{model_name}")
    _check_writable(out)
    config = RunConfig(
        dataset=dataset_name,
        model=model_name,
        settings=settings,
        methods=methods,
        samples=samples,
        seed=seed,
        batch_size=batch_size,
        examples=examples,
        extra={"split": split, "classes": classes},
    )
    torch.manual_seed(seed)
    print(
        f"tkmia run: {dataset_name} ({split}, {len(dataset)} images), model {model_name}, "
        f"{len(settings)} settings x {len(methods)} methods, up to {samples} images each",
        flush=True,
    )
    rows = run(config, model, dataset, out, device=device, progress=opts["progress"])
    print(render(out, rows=rows, classes=classes))
    print(f"results: {out}")
    return 0
