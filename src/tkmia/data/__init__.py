"""Datasets: the built-in digits set and loaders for VOC 2012, COCO 2014, NUS-WIDE, folders.

Every dataset yields ``(image (3, S, S) float32 in [0, 1], labels (c,) float32 0/1)`` and
has ``.classes``. Imports are lazy so that ``import tkmia.data`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Digits": "tkmia.data.digits",
    "VOC2012": "tkmia.data.voc",
    "COCO2014": "tkmia.data.coco",
    "NUSWIDE": "tkmia.data.nuswide",
    "LabelFolder": "tkmia.data.folder",
    "GROUPS": "tkmia.data.groups",
    "resolve_group": "tkmia.data.groups",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tkmia.data' has no attribute {name!r}")
