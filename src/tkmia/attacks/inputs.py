"""Validation of what an attack is called with, once, where a chunk is read."""

from __future__ import annotations

import math

import torch

from tkmia.attacks.checks import check_int
from tkmia.errors import InputError
from tkmia.metrics import topk_mask

__all__ = [
    "check_batch",
    "check_like_first",
    "check_targets_batch",
    "required_removals",
    "required_targets",
]


def _shape(t: object) -> object:
    return tuple(t.shape) if isinstance(t, torch.Tensor) else type(t)


def _check_images(images: object) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise InputError(f"images must be a tensor of shape (B, C, H, W), got {_shape(images)}")
    if not images.is_floating_point():
        raise InputError(f"images must be floating point in [0, 1], got dtype {images.dtype}")
    if images.numel():
        low, high = (float(t) for t in torch.aminmax(images))  # one pass; NaN propagates
        if not (math.isfinite(low) and math.isfinite(high)):
            raise InputError("images contain NaN or infinite values")
        if low < 0 or high > 1:
            raise InputError(
                f"images must lie in [0, 1], got values in [{low:.4g}, {high:.4g}]; pass "
                "un-normalised pixels and give the model's mean/std as normalize=(mean, std)"
            )
    return images


def _first_rows(mask: torch.Tensor) -> list[int]:
    return torch.nonzero(mask).flatten().tolist()[:10]


@torch.no_grad()
def check_batch(
    images: object, labels: object, specified: object, k: int, needs_remaining: str | None
) -> None:
    """Check one call's (or chunk's) inputs.

    Args:
        images: ``(B, C, H, W)`` floating point in [0, 1], finite.
        labels: ``(B, c)`` 0/1, the relevant labels Y.
        specified: ``(B, c)`` 0/1, a non-empty subset S of ``labels`` per sample.
        k: the top-k; needs ``k < c``.
        needs_remaining: the attack's name if it needs a relevant label outside S, else None.

    Raises:
        InputError: naming the problem, the shapes or samples concerned and what is expected.
    """
    images = _check_images(images)
    b = images.shape[0]
    for name, mask in (("labels", labels), ("specified", specified)):
        if not isinstance(mask, torch.Tensor) or mask.dim() != 2 or mask.shape[0] != b:
            raise InputError(f"{name} must have shape (B, c) with B = {b}, got {_shape(mask)}")
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise InputError(f"{name} must contain only 0 and 1")
    assert isinstance(labels, torch.Tensor) and isinstance(specified, torch.Tensor)
    if labels.shape != specified.shape:
        raise InputError(
            f"labels and specified must have the same shape, got {tuple(labels.shape)} "
            f"and {tuple(specified.shape)}"
        )
    c = labels.shape[1]
    if not k < c:
        raise InputError(f"k must satisfy 1 <= k < c = {c}, got k = {k}")
    lab, spec = labels.bool(), specified.bool()
    if bool((spec & ~lab).any()):
        bad = _first_rows((spec & ~lab).any(dim=1))
        raise InputError(f"specified must be a subset of labels; not so for samples {bad}")
    if bool((spec.sum(dim=1) == 0).any()):
        bad = _first_rows(spec.sum(dim=1) == 0)
        raise InputError(f"specified must be non-empty for every sample; empty for {bad}")
    if needs_remaining and bool(((lab & ~spec).sum(dim=1) == 0).any()):
        bad = _first_rows((lab & ~spec).sum(dim=1) == 0)
        raise InputError(
            f"{needs_remaining} needs at least one relevant label outside specified "
            f"to take their place; samples {bad} have none"
        )


@torch.no_grad()
def check_targets_batch(images: object, labels: object, targets: object, k: int) -> None:
    """Check a targeted attack's inputs (SPEC §7.3).

    Args:
        images: ``(B, C, H, W)`` floating point in [0, 1], finite.
        labels: ``(B, c)`` 0/1, the relevant labels Y.
        targets: ``(B, c)`` 0/1, the targets T: ``1 <= |T| <= k`` labels outside Y.
        k: the top-k; needs ``k < c``.

    Raises:
        InputError: naming the problem, the samples concerned and what is expected.
    """
    images = _check_images(images)
    b = images.shape[0]
    for name, mask in (("labels", labels), ("targets", targets)):
        if not isinstance(mask, torch.Tensor) or mask.dim() != 2 or mask.shape[0] != b:
            raise InputError(f"{name} must have shape (B, c) with B = {b}, got {_shape(mask)}")
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise InputError(f"{name} must contain only 0 and 1")
    assert isinstance(labels, torch.Tensor) and isinstance(targets, torch.Tensor)
    if labels.shape != targets.shape:
        raise InputError(
            f"labels and targets must have the same shape, got {tuple(labels.shape)} "
            f"and {tuple(targets.shape)}"
        )
    c = labels.shape[1]
    if not k < c:
        raise InputError(f"k must satisfy 1 <= k < c = {c}, got k = {k}")
    lab, tgt = labels.bool(), targets.bool()
    if bool((tgt & lab).any()):
        bad = _first_rows((tgt & lab).any(dim=1))
        raise InputError(f"targets must be disjoint from labels; not so for samples {bad}")
    size = tgt.sum(dim=1)
    if bool(((size == 0) | (size > k)).any()):
        bad = _first_rows((size == 0) | (size > k))
        raise InputError(
            f"every sample needs 1 <= |targets| <= k = {k} target labels; not so for {bad}"
        )


def required_targets(targets: torch.Tensor, threshold: int | None) -> torch.Tensor:
    """Per sample, how many targets must be in the top-k, ``(B,)`` long: all of them
    (``threshold=None``, SPEC §7.3), or ``t`` (at most ``|T|``).

    Raises:
        InputError: ``t`` is below 1 or above some sample's ``|T|``.
    """
    size = targets.sum(dim=1)
    if threshold is None:
        return size
    check_int("threshold", threshold, 1)
    if bool((size < threshold).any()):
        bad = _first_rows(size < threshold)
        raise InputError(f"samples {bad} have fewer targets than the threshold {threshold}")
    return torch.full_like(size, threshold)


def check_like_first(
    images: torch.Tensor, labels: torch.Tensor, x_first: torch.Tensor, c_first: int
) -> None:
    """Every chunk of a stream must have the first chunk's device, dtype, image shape and
    number of labels ``c_first``; raises :class:`InputError` otherwise."""
    same = (images.device, images.dtype, tuple(images.shape[1:]), labels.shape[1]) == (
        x_first.device,
        x_first.dtype,
        tuple(x_first.shape[1:]),
        c_first,
    )
    if not same:
        raise InputError(
            "every chunk of a stream must have the first chunk's device, dtype, image "
            f"shape and number of labels ({x_first.device}, {x_first.dtype}, "
            f"{tuple(x_first.shape[1:])}, c = {c_first}); got "
            f"{images.device}, {images.dtype}, {tuple(images.shape[1:])}, "
            f"c = {labels.shape[1]}"
        )


def required_removals(
    clean_scores: torch.Tensor, specified: torch.Tensor, k: int, threshold: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, the ΔN success needs and ``|S ∩ T_k(x)|``, both ``(B,)`` long.

    Args:
        clean_scores: ``(B, c)``; specified: ``(B, c)`` bool.
        threshold: ``None`` for S1's rule (ΔN >= |S ∩ T_k(x)|), else ``t >= 1`` (ΔN >= t).

    Raises:
        InputError: when a sample cannot meet the rule (ΔN is at most |S ∩ T_k(x)|).
    """
    in_top = (topk_mask(clean_scores, k) & specified).sum(dim=1)
    if threshold is None:
        required = in_top
    else:
        check_int("threshold", threshold, 1)
        required = torch.full_like(in_top, threshold)
    short = required > in_top
    if bool((in_top == 0).any()) or bool(short.any()):
        bad = _first_rows(short | (in_top == 0))
        raise InputError(
            f"samples {bad} have fewer specified labels in their clean top-{k} "
            "than the success rule needs to remove (ΔN can be at most |S ∩ T_k(x)|); "
            "select specified labels from the clean top-k or lower the threshold"
        )
    return required, in_top
