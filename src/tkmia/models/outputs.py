"""A model's output as it comes, seen as logits ``(B, c)``: the adapter for outside models.

Models that tkmia did not build return their scores in many shapes: a tensor, a tuple or
list (torchvision's Inception, many detectors' heads), a dict (TorchScript ``Dict[str,
Tensor]``), or an object with ``.logits`` (Hugging Face's ``ImageClassifierOutput``).
:class:`Logits` wraps such a model so that attacks and measures see a plain tensor; the
rule is :func:`logits_of` (both live in :mod:`tkmia.outputs`, below the attacks, which
wrap every model with it; re-exported here). :func:`check_output` runs one dummy batch
through a model to see, before any attack starts, that it gives ``(B, c)``.
"""

from __future__ import annotations

import torch
from torch import nn

from tkmia.errors import InputError
from tkmia.outputs import Logits, as_logits, logits_of

__all__ = ["Logits", "as_logits", "check_output", "logits_of"]

#: images in the dummy batch of :func:`check_output`
DUMMY_BATCH = 2


@torch.no_grad()
def check_output(
    model: nn.Module,
    num_classes: int | None,
    image_size: int,
    *,
    channels: int = 3,
    device: str | torch.device = "cpu",
    name: str = "the model",
) -> tuple[int, ...]:
    """Run one dummy batch of :data:`DUMMY_BATCH` images through ``model`` (left in its
    mode) and check that its output is logits ``(B, num_classes)``.

    Args:
        model: a module whose output is read with :func:`logits_of`.
        num_classes: ``c``, the dataset's class count (None: any ``c`` >= 2).
        image_size: the side ``S`` of the ``(B, channels, S, S)`` batch, pixels in [0, 1].
        channels: the batch's colour channels.
        device: where ``model`` is.
        name: how messages name the model.

    Returns:
        The output's shape.

    Raises:
        InputError: the model fails on the batch, returns no tensor, or a tensor of
            another shape.
    """
    generator = torch.Generator().manual_seed(0)
    batch_shape = (DUMMY_BATCH, channels, image_size, image_size)
    try:
        x = torch.rand(*batch_shape, generator=generator)  # in the try: a size beyond memory
        output = model(x.to(device))
    except KeyboardInterrupt:
        raise
    except BaseException as err:  # the user's model: any failure is a mistake in its setup
        first = (str(err).strip().splitlines() or [""])[0][:300]
        if isinstance(err, SystemExit):
            first = "it called sys.exit() (a model must return scores, not end the program)"
        hint = (
            " (a torch.export archive needs a dynamic batch dimension: export with "
            "dynamic_shapes, see docs/own-model.md)"
            if "Guard failed" in str(err) or "size()[0]" in str(err)
            else ""
        )
        raise InputError(
            f"{name} fails on a dummy batch of shape {batch_shape} (pixels in [0, 1]; "
            f"--image-size sets the side): {type(err).__name__}: {first}{hint}"
        ) from None
    try:
        scores = logits_of(output)
    except InputError as err:
        raise InputError(f"{name}: {err}") from None
    shape = tuple(scores.shape)
    if num_classes is None:
        if len(shape) != 2 or shape[0] != DUMMY_BATCH or shape[1] < 2:
            raise InputError(
                f"{name} gives scores of shape {shape} on a batch of {DUMMY_BATCH} images; "
                f"expected ({DUMMY_BATCH}, c) with c >= 2 classes"
            )
    elif shape != (DUMMY_BATCH, num_classes):
        raise InputError(
            f"{name} gives scores of shape {shape} on a batch of {DUMMY_BATCH} images; "
            f"expected ({DUMMY_BATCH}, {num_classes}): one score per class of the dataset"
        )
    bad = int((~torch.isfinite(scores.detach()).all(dim=1)).sum())
    if bad:
        raise InputError(
            f"{name} gives NaN or infinite scores for {bad} of the {DUMMY_BATCH} images of a "
            "dummy batch (pixels in [0, 1]); tkmia attacks only a model whose scores are "
            "finite: check its weights, its normalisation (--normalize) and the input size"
        )
    return shape
