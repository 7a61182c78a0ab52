"""Scoring images with a model: the clean scores of the evaluation split, kept as they come."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from tkmia.data.common import LabelledDataset
from tkmia.errors import BadImageError, InputError

#: what to check when a model's scores are not finite or carry no gradient
_MODEL_FIX = "check its weights, its normalisation (--normalize) and the input size"


def check_finite(scores: torch.Tensor, start: int) -> None:
    """Refuse scores ``(m, c)`` of images ``start, start + 1, ...`` with a NaN or an
    infinity: no rank, measure or attack means anything on them.

    Raises:
        InputError: how many images gave such scores, and the first one's index.
    """
    finite = torch.isfinite(scores).all(dim=1)
    if not bool(finite.all()):
        rows = torch.nonzero(~finite).flatten()
        raise InputError(
            f"the model gives NaN or infinite scores for {rows.numel()} of {len(finite)} "
            f"images scored together (the first: image #{start + int(rows[0])}); tkmia "
            f"attacks only a model whose scores are finite: {_MODEL_FIX}"
        )


def check_gradients(
    model: nn.Module, dataset: LabelledDataset, plans: Sequence[Any], device: str
) -> None:
    """Refuse a model whose scores do not depend on the input with gradients (its forward
    under ``torch.no_grad``, or detached): every attack needs ``∂scores/∂x``. Checked on
    the first selected image of ``plans`` (nothing to check if none was selected).

    Raises:
        InputError: the scores carry no gradient.
    """
    first = next((plan.indices[0] for plan in plans if plan.indices), None)
    if first is None:
        return
    image = dataset[first][0][None].to(device)
    with torch.enable_grad():
        image.requires_grad_(True)
        scores = model(image)
    if not (isinstance(scores, torch.Tensor) and scores.requires_grad):
        raise InputError(
            "the model's output does not depend on the input with gradients: is its "
            "forward under torch.no_grad (or does it detach the scores)? The attacks need "
            "the gradient of the scores with respect to the image"
        )


class CleanScores:
    """Scores the evaluation split in dataset order, on demand, and keeps them.

    ``upto(n)`` makes sure the first ``n`` images are scored; ``scores`` and ``labels``
    then hold ``(n_scored, c)`` tensors on the CPU. With ``skip_bad=True`` an image that
    cannot be read (:class:`~tkmia.errors.BadImageError`) is marked in ``bad``
    ``(n_scored,)`` (its scores are zeros and it is never eligible); otherwise the error
    stops the run.
    """

    def __init__(
        self,
        model: nn.Module,
        dataset: LabelledDataset,
        batch_size: int,
        device: str,
        skip_bad: bool = False,
    ) -> None:
        self.model, self.dataset, self.batch_size, self.device = model, dataset, batch_size, device
        self.skip_bad = skip_bad
        self.scores = torch.empty(0)
        self.labels = torch.empty(0)
        self.bad = torch.zeros(0, dtype=torch.bool)

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def n_scored(self) -> int:
        """How many images (from the first) are scored."""
        return self.scores.shape[0]

    def _item(self, i: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        try:
            return self.dataset[i]
        except BadImageError as err:
            if self.skip_bad:
                return None
            raise BadImageError(
                f"{err} (or pass --skip-bad-images to skip unreadable images; they are "
                "counted as skipped)"
            ) from None

    @torch.no_grad()
    def upto(self, n: int) -> None:
        """Score the images up to ``n`` (at most the whole split) that are not yet scored.

        Raises:
            BadImageError: an image cannot be read and ``skip_bad`` is off.
        """
        n = min(n, len(self.dataset))
        chunks, labels, bads = [self.scores], [self.labels], [self.bad]
        for start in range(self.n_scored, n, self.batch_size):
            stop = min(start + self.batch_size, n)
            scores, labs, bad = self._score_range(start, stop)
            chunks.append(scores)
            labels.append(labs)
            bads.append(bad)
        if len(chunks) > 1:
            self.scores = torch.cat([c for c in chunks if c.numel()])
            self.labels = torch.cat([lb for lb in labels if lb.numel()])
            self.bad = torch.cat(bads)

    def _score_range(
        self, start: int, stop: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(scores (m, c), labels (m, c), bad (m,))`` of images ``start .. stop - 1``."""
        items = [self._item(i) for i in range(start, stop)]
        good = [it for it in items if it is not None]
        bad = torch.tensor([it is None for it in items], dtype=torch.bool)
        if good:
            images = torch.stack([im for im, _ in good]).to(self.device)
            good_scores = self.model(images).float().cpu()
            check_finite(good_scores, start)
            c = good_scores.shape[1]
            good_labels = torch.stack([lab for _, lab in good]).float()
        else:
            c = self.labels.shape[1] if self.labels.numel() else len(self.dataset.classes)
            good_scores = good_labels = torch.zeros(0, c)
        scores = torch.zeros(len(items), c)
        labels = torch.zeros(len(items), c)
        scores[~bad], labels[~bad] = good_scores, good_labels
        return scores, labels, bad
