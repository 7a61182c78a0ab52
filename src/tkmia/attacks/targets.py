"""Which labels a baseline attacks: all relevant labels (the paper) or only S (ablation)."""

from __future__ import annotations

import torch

from tkmia.attacks.state import SampleState
from tkmia.errors import InputError

__all__ = ["BASELINE_TARGETS", "check_targets", "target_mask"]

BASELINE_TARGETS = ("relevant", "specified")


def check_targets(baseline_targets: str) -> str:
    """Validate the ``baseline_targets`` option; raises :class:`InputError`."""
    if baseline_targets not in BASELINE_TARGETS:
        raise InputError(
            f"baseline_targets must be one of {BASELINE_TARGETS}, got {baseline_targets!r}"
        )
    return baseline_targets


def target_mask(baseline_targets: str, state: SampleState) -> torch.Tensor:
    """``(n, c)`` bool: Y for ``"relevant"``, S for ``"specified"``."""
    return state.labels if baseline_targets == "relevant" else state.specified
