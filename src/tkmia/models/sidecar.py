"""What a checkpoint's JSON sidecar must hold: one rule per required key.

:func:`check_meta` is called once, when the sidecar is read
(:func:`~tkmia.models.checkpoint.read_meta`), so that a malformed file is reported as an
:class:`~tkmia.errors.InputError` naming the file, the key, the value and what was
expected, before any weight is loaded.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from tkmia.errors import InputError
from tkmia.models.architectures import architectures, is_architecture

#: colour channels of every tkmia model's input
CHANNELS = 3
#: the longest ``repr`` of a bad value quoted in a message
_SHOWN = 120

Rule = tuple[Callable[[Any], bool], str]


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_statistics(value: object, positive: bool) -> bool:
    return (
        isinstance(value, list)
        and len(value) == CHANNELS
        and all(_is_number(v) and (not positive or v > 0) for v in value)
    )


def _is_classes(value: object) -> bool:
    return (
        isinstance(value, list)
        and len(value) >= 2
        and all(isinstance(name, str) for name in value)
        and len(set(value)) == len(value)
    )


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def rules() -> dict[str, Rule]:
    """For every required key, in the order checked: ``(is_valid, what is expected)``."""
    return {
        "arch": (
            is_architecture,
            f"the name of an architecture, one of {architectures()} or timm:<model name>",
        ),
        "classes": (_is_classes, "a list of label names (at least 2, distinct strings)"),
        "image_size": (_is_positive_int, "a positive integer, the side of the input images"),
        "mean": (
            lambda value: _is_statistics(value, positive=False),
            f"a list of {CHANNELS} finite numbers, one per colour channel",
        ),
        "std": (
            lambda value: _is_statistics(value, positive=True),
            f"a list of {CHANNELS} finite numbers > 0, one per colour channel",
        ),
    }


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def check_meta(meta: object, where: str) -> dict[str, Any]:
    """Check the parsed sidecar ``meta`` of the file ``where``.

    Args:
        meta: the parsed JSON.
        where: the sidecar's path, for messages.

    Returns:
        ``meta`` itself, unchanged (keys other than the required ones are not checked).

    Raises:
        InputError: ``meta`` is not an object, lacks a required key, or a key's value
            breaks its rule (see :func:`rules`).
    """
    if not isinstance(meta, dict):
        raise InputError(f"checkpoint metadata {where!r} must be a JSON object")
    checks = rules()
    missing = [key for key in checks if key not in meta]
    if missing:
        raise InputError(f"checkpoint metadata {where!r} lacks the keys {missing}")
    for key, (is_valid, expected) in checks.items():
        if not is_valid(meta[key]):
            raise InputError(
                f"checkpoint metadata {where!r}: {key!r} must be {expected}, "
                f"got {_shown(meta[key])}"
            )
    return meta
