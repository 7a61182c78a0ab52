"""A strict command line: an option the chosen run would ignore is an error, or, where
one reading is the only sensible one, it chooses the scheme.

The rules (also in docs/experiments.md):

- ``--groups`` applies to S1 only, ``--n`` and ``--threshold`` to S2 only. Without
  ``--scheme``, giving only S1 options implies ``--scheme global``, giving only S2 options
  implies ``--scheme random``, giving both keeps ``both``. With ``--scheme global``, an S2
  option is an error; with ``--scheme random``, ``--groups`` is.
- ``digits`` is generated in memory: ``--root``, ``--csv`` and ``--image-size`` are errors
  with it. ``--csv`` belongs to the ``folder`` dataset only, which has no splits
  (``--split`` is an error with it).
- A hyper-parameter that none of the chosen methods takes (``--lr`` with ``--methods
  kfool``) is an error.

Each message names the option as the user wrote it: the flag, or the key as spelled in
the ``--config`` file.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tkmia.cli.options import CONFIG_KEYS, OPTIONS
from tkmia.errors import InputError
from tkmia.experiments.methods import HYPERPARAMETERS, REGISTRY

#: the options of one scheme only
S1_ONLY = ("groups",)
S2_ONLY = ("n", "threshold")


def option_names(args: argparse.Namespace) -> dict[str, str]:
    """How the user wrote each option they gave: ``{config key: "--flag"}`` for flags and
    ``{config key: "key 'n-labels' in config file 'run.toml'"}`` for config-file keys
    (flags win, as in :func:`~tkmia.cli.options.resolve_options`).

    Args:
        args: the parsed `run` command line (its config file already checked).
    """
    names: dict[str, str] = {}
    if getattr(args, "config", None):
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # Python 3.10
            import tomli as tomllib
        written = tomllib.loads(args.config.read_text(encoding="utf-8"))
        for key in written:
            names[key.replace("-", "_")] = f"key {key!r} in config file {str(args.config)!r}"
    for key in CONFIG_KEYS:
        if getattr(args, key, None) is not None:
            names[key] = OPTIONS[key].flag
    return names


def _given(opts: dict[str, Any], key: str) -> bool:
    value = opts.get(key)
    return value is not None and value != [] and value is not False


def apply_implications(opts: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """``opts`` with the scheme implied by the scheme-only options, after refusing every
    option the run would ignore.

    Args:
        opts: the options the user gave (before defaults), as
            :func:`~tkmia.cli.options.resolve_options` returns them.
        names: :func:`option_names` of the same command line.

    Returns:
        A new dict; ``scheme`` set when it was implied.

    Raises:
        InputError: names the first ignored option and why it would be ignored.
    """
    opts = dict(opts)

    def name(key: str) -> str:
        return names.get(key, OPTIONS[key].flag)

    s1 = [key for key in S1_ONLY if _given(opts, key)]
    s2 = [key for key in S2_ONLY if _given(opts, key)]
    scheme = opts.get("scheme")
    if scheme is None and bool(s1) != bool(s2):
        opts["scheme"] = "global" if s1 else "random"
    elif scheme == "global" and s2:
        raise InputError(
            f"{name(s2[0])} applies to S2 only and would be ignored with the scheme global "
            f"({name('scheme')}); drop it, or use the scheme random or both"
        )
    elif scheme == "random" and s1:
        raise InputError(
            f"{name(s1[0])} applies to S1 only and would be ignored with the scheme random "
            f"({name('scheme')}); drop it, or use the scheme global or both"
        )
    _refuse_dataset_options(opts, name)
    _refuse_hyperparameters(opts, name)
    return opts


def _refuse_dataset_options(opts: dict[str, Any], name: Any) -> None:
    dataset = opts.get("dataset", OPTIONS["dataset"].default)
    if dataset == "digits":
        for key in ("root", "csv", "image_size"):
            if _given(opts, key):
                raise InputError(
                    f"{name(key)} does not apply to the built-in dataset 'digits' (its "
                    f"images are generated in memory, at their own size); drop it"
                )
    if dataset != "folder" and _given(opts, "csv"):
        raise InputError(
            f"{name('csv')} is the label file of the 'folder' dataset; {dataset!r} reads "
            "its own labels under --root: drop it"
        )
    if dataset == "folder" and _given(opts, "split"):
        raise InputError(
            f"{name('split')} does not apply to the 'folder' dataset (its --csv lists the "
            "images to use); drop it"
        )


def _refuse_hyperparameters(opts: dict[str, Any], name: Any) -> None:
    methods = [m for m in opts.get("methods") or list(REGISTRY) if m in REGISTRY]
    for hp_name, hp in HYPERPARAMETERS.items():
        if not _given(opts, hp.option):
            continue
        if methods and not any(hp_name in REGISTRY[m].defaults for m in methods):
            takers = [m for m, spec in REGISTRY.items() if hp_name in spec.defaults]
            raise InputError(
                f"{name(hp.option)} is a hyper-parameter of {', '.join(takers)}, not of "
                f"{', '.join(methods)}; drop it or add one of those methods to --methods"
            )
