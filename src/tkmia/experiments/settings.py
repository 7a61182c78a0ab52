"""What one run attacks: settings (scheme, k, group or n, threshold) and method configs,
and the grids of both that a run covers."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from tkmia.attacks import Attack
from tkmia.data.groups import resolve_group
from tkmia.errors import InputError
from tkmia.experiments.methods import HYPERPARAMETERS, REGISTRY, MethodSpec, Value, method_spec
from tkmia.protocol import TARGET_CHOICES, TARGETED, check_scheme

METHODS = tuple(REGISTRY)


@dataclass(frozen=True)
class Setting:
    """One protocol setting: S1 with a label group, S2 with n labels per image, or the
    targeted attack's (SPEC §7.3): scheme ``"targeted"``, ``n`` targets per image chosen
    by ``group`` (``"random"``, ``"best"`` or ``"worst"``); only targeted methods run on it,
    and they on nothing else."""

    scheme: str
    k: int
    group: str | None = None
    group_indices: tuple[int, ...] | None = None
    n: int | None = None
    threshold: int | None = None

    @property
    def key(self) -> str:
        """A file-name-safe identifier, unique within a run."""
        if self.scheme == "global":
            name = "".join(ch if ch.isalnum() else "_" for ch in str(self.group))
            return f"global-k{self.k}-{name}"
        if self.scheme == TARGETED:
            return f"targeted-k{self.k}-n{self.n}-{self.group}"
        return f"random-k{self.k}-n{self.n}-t{self.effective_threshold}"

    @property
    def effective_threshold(self) -> int | None:
        """None for S1's rule (and the targeted one's), else the ΔN a success needs
        (default n)."""
        if self.scheme in ("global", TARGETED):
            return None
        return self.n if self.threshold is None else self.threshold


@dataclass(frozen=True, init=False)
class MethodConfig:
    """An attack and the values of its hyper-parameters (see :mod:`tkmia.experiments.methods`).

    ``MethodConfig("tkmia", max_iter=300, lr=1e-4, lam=1e-3)``: every hyper-parameter the
    method takes must be given, and none it does not take (``None`` counts as not given, so
    a row or JSON object with ``lr=None`` for kFool reads back), except SPEC §7's
    (``success_rule``, ``quantize``), which take their ``implicit`` value when not given.

    Attributes:
        method: the registry name.
        items: ``((name, value), ...)`` in configuration-key order; see :attr:`params`.
    """

    method: str
    items: tuple[tuple[str, Value], ...]

    def __init__(self, method: str, **params: Value | None) -> None:
        spec = method_spec(method)
        given = {name: value for name, value in params.items() if value is not None}
        unknown = sorted(set(given) - set(spec.defaults))
        if unknown:
            raise InputError(
                f"method {method!r} takes no hyper-parameter {unknown}; it takes "
                f"{list(spec.defaults)}"
            )
        for name in spec.defaults:  # SPEC §7's options default to their implicit value
            implicit = HYPERPARAMETERS[name].implicit
            if name not in given and implicit is not None:
                given[name] = implicit
        missing = [name for name in spec.defaults if name not in given]
        if missing:
            raise InputError(f"method {method!r} needs {' and '.join(missing)}")
        items = tuple((name, HYPERPARAMETERS[name].kind(given[name])) for name in spec.defaults)
        object.__setattr__(self, "method", method)
        object.__setattr__(self, "items", items)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MethodConfig:
        """Read back :meth:`as_dict`'s object, or a summary row (values may be text, and
        hyper-parameters the method lacks ``None``, ``""`` or absent). A hyper-parameter the
        method takes but ``data`` lacks (written before it existed) reads as its ``legacy``
        value (:class:`~tkmia.experiments.methods.MethodSpec`)."""
        method = str(data["method"])
        params = {
            name: hp.parse(data[name])
            for name, hp in HYPERPARAMETERS.items()
            if data.get(name) not in (None, "")
        }
        legacy = {name: v for name, v in method_spec(method).legacy.items() if name not in params}
        return cls(method, **params, **legacy)

    @property
    def params(self) -> dict[str, Value]:
        """The hyper-parameters, ``{name: value}`` in configuration-key order."""
        return dict(self.items)

    @property
    def spec(self) -> MethodSpec:
        """The method's registry entry."""
        return method_spec(self.method)

    @property
    def variant(self) -> tuple[tuple[str, Value], ...]:
        """The SPEC §7 options set away from their ``implicit`` value (``success_rule``,
        ``quantize``): ``(("success_rule", "preserve"),)``; ``()`` for the paper's attack.
        Each variant is a method of its own in tables and in the selection rule."""
        return tuple(
            (name, value)
            for name, value in self.items
            if HYPERPARAMETERS[name].implicit is not None
            and value != HYPERPARAMETERS[name].implicit
        )

    @property
    def family(self) -> tuple[str, ...]:
        """The method and its :attr:`variant`: what the selection rule picks one
        configuration of, and what tables list once."""
        return (self.method, *(f"{name}={value}" for name, value in self.variant))

    @property
    def title(self) -> str:
        """What tables and figures call the method: ``TkMIA``, and for a :attr:`variant`
        ``TkMIA (preserve)``, ``TkMIA (8-bit)``."""
        words = [
            f"{value}-bit" if name == "quantize" else str(value) for name, value in self.variant
        ]
        return self.spec.title + (f" ({', '.join(words)})" if words else "")

    @property
    def key(self) -> str:
        """A file-name-safe identifier: the method and its hyper-parameters
        (``tkmia-lr0.0001-lam0.001-it300``, ``kfool-it300-os0-linimage``). A configuration
        whose hyper-parameters added later are all at their ``legacy`` values has the key it
        had before they existed (``kfool-it300``: ``linearize="tanh"``, ``overshoot=0.02``),
        so that the files written then keep their meaning and resume."""
        legacy = self.spec.legacy
        params = self.params
        old = bool(legacy) and all(params[name] == value for name, value in legacy.items())
        parts = [
            HYPERPARAMETERS[name].short + HYPERPARAMETERS[name].text(value)
            for name, value in self.items
            if not (old and name in legacy) and value != HYPERPARAMETERS[name].implicit
        ]
        return "-".join([self.method, *parts])

    def runs_on(self, setting: Setting) -> bool:
        """Whether the method attacks ``setting``: a targeted method the targeted scheme's
        settings only, every other method every other setting."""
        return self.spec.targeted == (setting.scheme == TARGETED)

    def build(
        self,
        model: nn.Module,
        k: int,
        normalize: tuple[Sequence[float], Sequence[float]] | None = None,
    ) -> Attack:
        """The attack object for top-``k``."""
        params = {HYPERPARAMETERS[name].arg: value for name, value in self.items}
        return self.spec.cls(model, k, normalize=normalize, **params)

    def as_dict(self) -> dict[str, Any]:
        """``{"method": ..., <every hyper-parameter of the registry>: value or None}``."""
        params = self.params
        return {"method": self.method} | {name: params.get(name) for name in HYPERPARAMETERS}


def method_grid(
    methods: Sequence[str], values: Mapping[str, Sequence[Value] | None]
) -> list[MethodConfig]:
    """Every configuration of the grid: each method × the product of the values of the
    hyper-parameters *it takes* (in configuration-key order).

    Args:
        methods: registry names, in the order to run them (repeats are dropped).
        values: ``{hyper-parameter: values}``; a missing, ``None`` or empty entry means the
            method's default. Values of a hyper-parameter a method does not take are ignored
            for that method (``lr`` for kFool).

    Returns:
        The configurations, method by method, each method's in ``itertools.product`` order.

    Raises:
        InputError: a method is not in the registry.
    """
    configs = []
    for method in dict.fromkeys(methods):
        spec = method_spec(method)
        names = list(spec.defaults)
        axes = [values.get(name) or [spec.defaults[name]] for name in names]
        for combination in itertools.product(*axes):
            configs.append(MethodConfig(method, **dict(zip(names, combination, strict=True))))
    return configs


def check_setting_grid(
    schemes: Sequence[str],
    ks: Sequence[int],
    ns: Sequence[int],
    thresholds: Sequence[int | None],
) -> None:
    """Check what the settings grid can check before the number of classes is known.

    Args:
        schemes: ``["global"]``, ``["random"]`` or both.
        ks: the grid's k values.
        ns: the grid's n values (S2).
        thresholds: the grid's thresholds (``[None]``: the default threshold, ``t = n``).

    Raises:
        InputError: a scheme is unknown, k < 1, n is not in [1, k], a threshold is not in
            [1, n], or a threshold is given for the global scheme alone.
    """
    for k, scheme in itertools.product(ks, schemes):
        if scheme == "global":
            # with both schemes the thresholds are for S2; with S1 alone, one is a mistake
            for t in thresholds if list(schemes) == ["global"] else [None]:
                check_scheme("global", k, None, None, t)
        else:
            for n, t in itertools.product(ns, thresholds):
                check_scheme(scheme, k, None, n, t)


def setting_grid(
    schemes: Sequence[str],
    ks: Sequence[int],
    groups: Sequence[str],
    ns: Sequence[int],
    thresholds: Sequence[int | None],
    dataset: str,
    classes: Sequence[str],
    targets: Sequence[str] = (),
) -> list[Setting]:
    """Every setting of the grid, validated against the dataset's classes.

    Args:
        schemes: ``["global"]``, ``["random"]`` or both.
        ks: the k values; for each, its S1 settings come before its S2 settings.
        groups: S1 label groups: built-in group names or label names joined by ``+``.
        ns: the S2 values of n.
        thresholds: the S2 thresholds (``[None]``: the default threshold, ``t = n``).
        dataset: the dataset's name (for its built-in groups and the messages).
        classes: the dataset's label names, ``c = len(classes)``.
        targets: the targeted scheme's target choices (SPEC §7.3); for each k, one setting
            per choice × n after the S1 and S2 ones (none when empty).

    Returns:
        The settings in run order: k, then scheme, then group or (n, threshold).

    Raises:
        InputError: k is not in [1, c), n or a threshold is out of range, a group names an
            unknown label, or S1 is asked for without groups.
    """
    c = len(classes)
    settings = []
    for k in ks:
        if "global" in schemes:
            check_scheme("global", k, c, None, None)
            if not groups:
                raise InputError(
                    f"dataset {dataset!r} has no built-in label groups; pass --groups "
                    "with label names joined by '+'"
                )
            for spec in groups:
                name, idx = resolve_group(spec, list(classes), dataset)
                settings.append(Setting("global", k, group=name, group_indices=tuple(idx)))
        if "random" in schemes:
            for n, t in itertools.product(ns, thresholds):
                check_scheme("random", k, c, n, t)
                settings.append(Setting("random", k, n=n, threshold=t))
        for choice, n in itertools.product(targets, ns):
            if choice not in TARGET_CHOICES:
                raise InputError(f"--targets must be one of {TARGET_CHOICES}, got {choice!r}")
            check_scheme(TARGETED, k, c, n, None)
            settings.append(Setting(TARGETED, k, group=choice, n=n))
    return settings
