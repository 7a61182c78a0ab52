"""Which labels a baseline attacks: all relevant labels (the paper) or only S (ablation)."""

from __future__ import annotations

import torch

from tkmia.errors import InputError

BASELINE_TARGETS = ("relevant", "specified")


def check_targets(baseline_targets: str) -> str:
    """Validate the ``baseline_targets`` option."""
    if baseline_targets not in BASELINE_TARGETS:
        raise InputError(
            f"baseline_targets must be one of {BASELINE_TARGETS}, got {baseline_targets!r}"
        )
    return baseline_targets


def target_mask(baseline_targets: str, ctx: dict[str, torch.Tensor]) -> torch.Tensor:
    """``(B, c)`` bool: Y for ``"relevant"``, S for ``"specified"``."""
    return ctx["labels"] if baseline_targets == "relevant" else ctx["specified"]
