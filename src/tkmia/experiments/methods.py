"""The method registry: every attack the experiments can run, in one place.

Adding an attack to ``tkmia run`` is its file under ``tkmia/attacks/`` plus one entry
here; no other module names a method. An entry says what the tables call the method, which
class builds it, which hyper-parameters a run may vary (each with its default, in the
order they appear in the method's configuration key) and whether it is loss-based (an SGD
attack with a learning rate and a penalty weight).

The defaults were chosen once on the *validation* split of the built-in dataset (60 images
per setting, all 8 settings of the benchmark) from lr in {1e-3, 5e-4, 1e-4, 5e-5}
(SPEC §5) × max_iter in {100, 300}, λ = 1e-3, by one rule for every method: the highest
mean success rate; among the configurations within 0.01 of it, the smallest mean APer
(`tkmia run --select-scope all`, docs/benchmark.md "How the defaults were chosen"). λ = 5e-5
instead of 1e-3 changed the mean success rate and APer by at most 0.002 (checked for TkMIA
and TkML-AP-U at lr 1e-4 and 5e-4, max_iter 300: the penalty's gradient λw is tiny next
to the loss's), so λ stays at 1e-3.

kFool's ``linearize`` and ``overshoot`` came later (issue 21): its defaults are the paper's
reference code (gradients w.r.t. the image, no overshoot); results written before they
existed were made with ``linearize="tanh"``, ``overshoot=0.02`` (the entry's ``legacy``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from tkmia.attacks import MLCWU, Attack, KFool, TkMIA, TkMLAPT, TkMLAPU
from tkmia.attacks.base import SUCCESS_RULES
from tkmia.attacks.kfool import LINEARIZE
from tkmia.errors import InputError

__all__ = [
    "HYPERPARAMETERS",
    "REGISTRY",
    "HyperParameter",
    "MethodSpec",
    "Value",
    "method_spec",
    "register_method",
]

#: the value of a hyper-parameter
Value = float | int | str


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class HyperParameter:
    """A hyper-parameter a run may vary.

    Attributes:
        name: the attack's keyword argument, the key of :class:`MethodConfig` objects
            (records' JSON, ``config.json``) and the ``summary.csv`` column.
        short: the name used in configuration keys and file names.
        kind: ``float``, ``int`` or ``str``.
        help: what it means, for ``tkmia run --help``.
        expected: the values it accepts, in words (completes "must be ...").
        valid: whether a value is one of them.
        flag: the option's name where it differs from ``name``: the ``--config`` key and
            (with ``-`` for ``_``) the ``tkmia run`` flag (``kfool_linearize`` for
            kFool's ``linearize``: a flag names its method when the keyword does not).
        choices: for a ``str`` kind, the accepted values.
        optional_column: ``summary.csv`` has its column only when one of its rows' methods
            takes it (a hyper-parameter added after the first results: summaries of runs
            without such a method keep their layout, and older files without the column
            still load, reading the method's ``legacy`` value).
        keyword: the attack's keyword argument where it differs from ``name``
            (``success`` for the ``success_rule`` column).
        implicit: for a hyper-parameter every method takes, added after the first results
            (SPEC §7), the value that changes nothing: left out of configuration keys (so
            files written before it existed keep their names and resume), read where a
            file lacks it, and the method's default where its keyword defaults to ``None``
            (``quantize``: 0, off). Its column is in a summary only when a row differs.
    """

    name: str
    short: str
    kind: type
    help: str
    expected: str
    valid: Callable[[object], bool]
    flag: str | None = None
    choices: tuple[str, ...] = ()
    optional_column: bool = False
    keyword: str | None = None
    implicit: Value | None = None

    @property
    def arg(self) -> str:
        """The attack's keyword argument."""
        return self.keyword or self.name

    @property
    def option(self) -> str:
        """The ``--config`` key (the flag is ``--`` and this with ``-`` for ``_``)."""
        return self.flag or self.name

    def parse(self, value: object) -> Value:
        """A value read back from JSON or a CSV cell (text), as ``kind``."""
        if self.kind is str:
            return str(value)
        return self.kind(float(value))  # type: ignore[arg-type]

    def text(self, value: Value) -> str:
        """The value as configuration keys and help texts write it (``0.0001``, ``image``)."""
        return value if isinstance(value, str) else f"{value:g}"


#: every hyper-parameter any method has, in the order of configuration keys
HYPERPARAMETERS: Mapping[str, HyperParameter] = MappingProxyType(
    {
        "lr": HyperParameter(
            "lr",
            "lr",
            float,
            "SGD learning rate in tanh space",
            "a finite number > 0",
            lambda v: _finite(v) and v > 0,  # type: ignore[operator]
        ),
        "lam": HyperParameter(
            "lam",
            "lam",
            float,
            "weight λ of the perturbation penalty",
            "a finite number >= 0 (0 turns the penalty off)",
            lambda v: _finite(v) and v >= 0,  # type: ignore[operator]
        ),
        "max_iter": HyperParameter(
            "max_iter",
            "it",
            int,
            "at most this many steps per image",
            "a positive integer",
            lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
        ),
        "overshoot": HyperParameter(
            "overshoot",
            "os",
            float,
            "kFool: scales its accumulated step, (1 + overshoot)·r, as in DeepFool",
            "a finite number >= 0",
            lambda v: _finite(v) and v >= 0,  # type: ignore[operator]
            optional_column=True,
        ),
        "linearize": HyperParameter(
            "linearize",
            "lin",
            str,
            "kFool: take the gradients w.r.t. the image (the paper's code) or the tanh-space "
            "variable of the step",
            " or ".join(LINEARIZE),
            lambda v: v in LINEARIZE,
            flag="kfool_linearize",
            choices=LINEARIZE,
            optional_column=True,
        ),
        "tie": HyperParameter(
            "tie",
            "tie",
            float,
            "TkML-AP-T: weight τ of the official code's tie term (τ/2)·Σ_j (1 − t_j f_j)² "
            "(SPEC §7.3; 0: off)",
            "a finite number >= 0 (0 turns the tie term off)",
            lambda v: _finite(v) and v >= 0,  # type: ignore[operator]
            optional_column=True,
        ),
        "success_rule": HyperParameter(
            "success_rule",
            "succ",
            str,
            "success rule: the paper's, or 'preserve' (the top-k also keeps as many relevant "
            "labels as the clean image's: TkAcc and P@k cannot drop; SPEC §7.1), 'stealth' "
            "(every label-free statistic of the audit stays within 0.1 IQR of the clean "
            "image's; SPEC §7.6), or 'preserve+stealth'",
            " or ".join(SUCCESS_RULES),
            lambda v: v in SUCCESS_RULES,
            flag="success",
            choices=SUCCESS_RULES,
            optional_column=True,
            keyword="success",
            implicit="paper",
        ),
        "quantize": HyperParameter(
            "quantize",
            "q",
            int,
            "judge success on, and return, the iterate quantised to this many bits per "
            "channel (8: what a PNG stores; 0: off; SPEC §7.2)",
            "an integer from 0 (off) to 16",
            lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 16,
            optional_column=True,
            implicit=0,
        ),
    }
)


@dataclass(frozen=True)
class MethodSpec:
    """One method of the registry.

    Attributes:
        name: the key used on the command line, in file names and in ``summary.csv``.
        title: what tables and figures call it.
        cls: the attack class; built as ``cls(model, k, normalize=..., **hyper-parameters)``.
        takes: the hyper-parameters the method takes (keys of :data:`HYPERPARAMETERS`).
        defaults: each of them with its default, in configuration-key order: the keyword
            default of ``cls``'s signature (one source of truth: ``TkMIA(model, k)`` and
            ``tkmia run --methods tkmia`` use the same values).
        loss_based: whether it minimises an objective with SGD (``lr`` and ``lam``).
        targeted: whether it brings target labels into the top-k (SPEC §7.3): it runs on
            the run's targeted settings only, and the others never; a run without
            ``--methods`` leaves it out.
        legacy: for a hyper-parameter added to the method after results were written, the
            value those results were made with: what a method JSON or a ``summary.csv`` row
            without it means. A configuration with every one at its legacy value has the
            key it had before they existed, so that the files written then keep their
            meaning (and resume).
    """

    name: str
    title: str
    cls: Callable[..., Attack]
    takes: tuple[str, ...]
    loss_based: bool
    legacy: Mapping[str, Value] = field(default_factory=dict)
    targeted: bool = False
    defaults: Mapping[str, Value] = field(init=False)

    def __post_init__(self) -> None:
        unknown = (set(self.takes) | set(self.legacy)) - set(HYPERPARAMETERS)
        if unknown:
            raise ValueError(f"{self.name}: unknown hyper-parameters {sorted(unknown)}")
        if not set(self.legacy) <= set(self.takes):
            raise ValueError(f"{self.name}: a legacy value of a hyper-parameter it lacks")
        params = inspect.signature(self.cls).parameters
        args = {h: HYPERPARAMETERS[h].arg for h in self.takes}
        missing = [h for h, a in args.items() if a not in params or params[a].default is _EMPTY]
        if missing:
            raise ValueError(f"{self.name}: {self.cls} has no keyword default for {missing}")
        order = [h for h in HYPERPARAMETERS if h in self.takes]
        defaults = {h: _default(params[args[h]].default, HYPERPARAMETERS[h]) for h in order}
        object.__setattr__(self, "defaults", MappingProxyType(defaults))
        object.__setattr__(self, "legacy", MappingProxyType(dict(self.legacy)))


def _default(value: object, hp: HyperParameter) -> Value:
    """A keyword default as a configuration value (``None``: the hyper-parameter's
    ``implicit`` value)."""
    if value is None and hp.implicit is not None:
        return hp.implicit
    return value  # type: ignore[return-value]


#: SPEC §7's hyper-parameters, which every method takes
_BEYOND = ("success_rule", "quantize")
_LOSS = ("lr", "lam", "max_iter", *_BEYOND)
_EMPTY = inspect.Parameter.empty

#: the built-in methods, then any registered by :func:`register_method`
_METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec("tkmia", "TkMIA", TkMIA, _LOSS, True),
        MethodSpec("tkmlapu", "TkML-AP-U", TkMLAPU, _LOSS, True),
        MethodSpec(
            "kfool",
            "kFool",
            KFool,
            ("max_iter", "overshoot", "linearize", *_BEYOND),
            False,
            legacy={"overshoot": 0.02, "linearize": "tanh"},
        ),
        MethodSpec("mlcwu", "ML-CW-U", MLCWU, _LOSS, True),
        MethodSpec(
            "tkmlapt",
            "TkML-AP-T",
            TkMLAPT,
            ("lr", "lam", "max_iter", "tie", *_BEYOND),
            True,
            legacy={"tie": 0.0},
            targeted=True,
        ),
    )
}
#: the built-in methods' names
BUILTIN = tuple(_METHODS)
#: the methods in the order of the paper's tables (a read-only view; a user's own attack
#: joins it through :func:`register_method`)
REGISTRY: Mapping[str, MethodSpec] = MappingProxyType(_METHODS)


def register_method(spec: MethodSpec) -> None:
    """Add a user's attack to :data:`REGISTRY` for this process (``--methods
    file.py:Class``, :mod:`tkmia.experiments.custom`); a spec of the same name replaces it.

    Raises:
        InputError: the name is a built-in method's.
    """
    if spec.name in BUILTIN:
        raise InputError(f"method name {spec.name!r} is taken; rename the class")
    _METHODS[spec.name] = spec


def method_spec(name: str) -> MethodSpec:
    """The registry entry of ``name``; an :class:`InputError` naming the known methods."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise InputError(f"unknown method {name!r}; expected one of {list(REGISTRY)}") from None
