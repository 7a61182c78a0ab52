"""What an attack returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["AttackResult"]


@dataclass
class AttackResult:
    """What an attack returns for a batch of B images with c labels.

    Attributes:
        adv_images: ``(B, C, H, W)`` in [0, 1]: the first iterate that met the success
            rule, or the last evaluated iterate for samples that never did.
        success: ``(B,)`` bool.
        iterations: ``(B,)`` long: optimisation steps taken before the returned iterate.
        clean_scores: ``(B, c)`` model scores of the clean images.
        adv_scores: ``(B, c)`` model scores of ``adv_images``.
        specified: ``(B, c)`` bool, the labels the attack had to hide.
        required: ``(B,)`` long, the ΔN each sample needed for success.
    """

    adv_images: torch.Tensor
    success: torch.Tensor
    iterations: torch.Tensor
    clean_scores: torch.Tensor
    adv_scores: torch.Tensor
    specified: torch.Tensor
    required: torch.Tensor
