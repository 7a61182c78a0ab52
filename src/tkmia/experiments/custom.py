"""Your own attack in ``tkmia run``: ``--methods path/to/file.py:Class`` or
``package.module:Class``, its hyper-parameters with ``--set name=value``.

The class (a subclass of :class:`~tkmia.attacks.Attack`, built as ``cls(model, k,
normalize=..., **hyper-parameters)``) joins the method registry for this process under its
class name. Its hyper-parameters are read from its signature as the built-in methods' are
(:class:`~tkmia.experiments.methods.MethodSpec`): those of the registry it takes (``lr``,
``lam``, ``max_iter``, ``success``, ``quantize``, ...) vary with the usual flags (a grid
for several values) and their defaults are its keyword defaults; ``--set`` gives a default
where the class has none (a :class:`~tkmia.attacks.LossAttack` subclass without an
``__init__`` has none for ``lr``, ``lam`` and ``max_iter``) or replaces it. ``--set`` of a
keyword argument outside the registry (``margin=0.5``) is passed to the class as it is and
named in the method's name (``HideBest-margin0.5``), so that results made with other values
are kept apart. Naming the class imports and runs its file: your code, as a model factory.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Sequence

from tkmia.attacks import Attack, LossAttack
from tkmia.errors import InputError
from tkmia.experiments.methods import (
    BUILTIN,
    HYPERPARAMETERS,
    MethodSpec,
    Value,
    register_method,
)

__all__ = ["is_custom", "parse_sets", "register_custom"]

_SAFE = re.compile(r"[^A-Za-z0-9_.]+")


def is_custom(method: str) -> bool:
    """Whether a ``--methods`` entry names a class (``module:Class``), not a built-in."""
    return ":" in method


def _value(text: str) -> Value:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_sets(items: Sequence[str] | None) -> dict[str, Value]:
    """``--set`` items ``name=value`` → ``{name: value}`` (an int, a number, or text).

    Raises:
        InputError: an item without ``=`` or a name given twice.
    """
    values: dict[str, Value] = {}
    for item in items or []:
        name, eq, text = item.partition("=")
        name = name.strip().replace("-", "_")
        if not eq or not name.isidentifier() or not text.strip():
            raise InputError(f"--set takes name=value items, got {item!r}")
        if name in values:
            raise InputError(f"--set gives {name!r} twice")
        values[name] = _value(text.strip())
    return values


def register_custom(text: str, sets: dict[str, Value]) -> str:
    """Import the attack class ``text`` names, register it, and return its method name.

    Args:
        text: ``path/to/file.py:Class`` or ``package.module:Class``.
        sets: the ``--set`` values (see the module docstring); each must be a keyword
            argument of the class.

    Raises:
        InputError, MissingFileError: the import fails, the name is not an attack class,
            a ``--set`` name the class does not take, a hyper-parameter without a default
            and not set, or a class named like a built-in method.
    """
    from tkmia.models.external import import_named

    cls = import_named(text, "attack class")
    if not (isinstance(cls, type) and issubclass(cls, Attack)):
        raise InputError(f"--methods {text!r} is not a subclass of tkmia.attacks.Attack")
    params = inspect.signature(cls).parameters
    unknown = sorted(set(sets) - set(params) - {"model", "k", "normalize"})
    by_arg = {hp.arg: name for name, hp in HYPERPARAMETERS.items()}
    if unknown:
        known = [p for p in params if p not in ("model", "k", "normalize", "self")]
        raise InputError(
            f"--set {unknown}: {cls.__name__} takes no such argument; it takes {known}"
        )
    extras = {arg: value for arg, value in sets.items() if arg not in by_arg}
    takes = tuple(by_arg[arg] for arg in params if arg in by_arg)
    missing = [
        arg for arg in params
        if arg in by_arg and params[arg].default is inspect.Parameter.empty and arg not in sets
    ]  # fmt: skip
    if missing:
        given = " ".join(f"{a}=..." for a in missing)
        raise InputError(
            f"{cls.__name__} has no default for {missing}: give them with --set {given} "
            "(or a default in its __init__)"
        )
    name = "-".join([cls.__name__, *(f"{a}{_SAFE.sub('_', str(v))}" for a, v in extras.items())])
    if name in BUILTIN:
        raise InputError(f"attack class {text!r} is named like the built-in method {name!r}")
    built: Callable[..., Attack] = functools.partial(cls, **sets)  # type: ignore[arg-type]
    loss_based = issubclass(cls, LossAttack)
    targeted = bool(getattr(cls, "targeted", False))
    register_method(MethodSpec(name, name, built, takes, loss_based, targeted=targeted))
    return name
