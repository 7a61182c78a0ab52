"""The ensemble of ε-bounded attacks: per image the worst case over the attacks run."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tkmia.errors import InputError

__all__ = ["worst_case"]


def worst_case(found: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image the smallest ``ê`` over the attacks and the first attack (in the order
    given, AutoAttack's fixed order) that found it.

    Args:
        found: one ``(B,)`` long tensor of ``ê = |T_k(x') ∩ Y|`` per attack.

    Returns:
        ``(ê, by)``, both ``(B,)`` long: the worst case and the index of the attack that
        set it.

    Raises:
        InputError: no attack, or tensors of different shapes.
    """
    if not found:
        raise InputError("the ensemble needs at least one attack's results")
    if any(t.shape != found[0].shape for t in found):
        raise InputError("every attack's results must cover the same images")
    stacked = torch.stack(list(found))  # (A, B)
    best = stacked.amin(dim=0)
    by = (stacked == best).long().argmax(dim=0)  # the first attack at the minimum
    return best, by
