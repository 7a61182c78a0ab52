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

    def to_records(
        self, images: torch.Tensor | None = None, k: int | None = None
    ) -> list[dict[str, object]]:
        """One plain dict per image, in order (``pandas.DataFrame(result.to_records())``
        makes a table; nothing here needs pandas).

        Args:
            images: optional, the clean images ``(B, C, H, W)`` attacked: adds ``l2``, the
                perturbation's L2 norm (pixels in [0, 1], all channels).
            k: optional, the attack's top-k: adds ``clean_topk`` and ``adv_topk``, the
                label indices of the top-k, best first.

        Returns:
            ``[{"index", "success", "iterations", "required", "specified", ...}, ...]``
            with Python numbers and lists (``specified``: the label indices of S).
        """
        n = int(self.success.shape[0])
        columns: dict[str, list[object]] = {
            "index": list(range(n)),
            "success": self.success.bool().tolist(),
            "iterations": self.iterations.tolist(),
            "required": self.required.tolist(),
            "specified": [row.nonzero().flatten().tolist() for row in self.specified.cpu()],
        }
        if images is not None:
            delta = self.adv_images.detach().cpu().double() - images.detach().cpu().double()
            columns["l2"] = delta.flatten(1).norm(dim=1).tolist()
        if k is not None:
            columns["clean_topk"] = self.clean_scores.topk(k, dim=1).indices.tolist()
            columns["adv_topk"] = self.adv_scores.topk(k, dim=1).indices.tolist()
        return [{name: values[i] for name, values in columns.items()} for i in range(n)]
