"""Validators of the attacks' scalar arguments (each raises :class:`InputError`)."""

from __future__ import annotations

import math

from tkmia.errors import InputError

__all__ = ["check_int", "check_number"]


def check_int(name: str, value: object, low: int) -> int:
    """``value`` if it is an integer (not a bool) ``>= low``.

    Raises:
        InputError: naming ``name``, the bound and the value.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InputError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def check_number(name: str, value: object, allow_zero: bool = False) -> float:
    """``float(value)`` if it is a real number ``> 0`` (``>= 0`` with ``allow_zero``).

    Raises:
        InputError: for a bool, a non-number, NaN or a value out of range.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or math.isnan(value)
        or not (value >= 0 if allow_zero else value > 0)
    ):
        bound = ">= 0" if allow_zero else "> 0"
        raise InputError(f"{name} must be a number {bound}, got {value!r}")
    return float(value)
