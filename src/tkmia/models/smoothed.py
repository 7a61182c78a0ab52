"""The randomized-smoothing view of a model (MultiGuard, SPEC §7.8): label counts of the base
model's top-k' over Gaussian noise draws, and the smoothed top-k they give.

The certificate math itself (Clopper–Pearson bounds, the certified intersection size) is
in :mod:`tkmia.certificate`; this module only draws noise and counts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from tkmia.errors import InputError
from tkmia.models.outputs import logits_of

__all__ = ["Smoothed", "SmoothedScores"]


class Smoothed:
    """Counts of ``i ∈ T_{k'}(f(clip(x + η, 0, 1)))`` over ``η ~ N(0, σ² I)``.

    Args:
        model: takes images ``(B, C, H, W)`` in [0, 1] (its normalisation inside, so the
            noise is added to pixels, before it) and returns scores ``(B, c)`` in any form
            :func:`~tkmia.models.outputs.logits_of` reads.
        sigma: the noise's standard deviation, in pixel units (> 0).
        k_prime: the base model's top-k' that is counted (>= 1).
        n: noisy copies per image (>= 1).
        batch: noisy images per forward pass (>= 1); images and draws are mixed to fill it.
        seed: the noise of image ``ids[i]`` is drawn from a generator seeded with
            ``(seed, ids[i])``, so counts do not depend on the batch an image is in.

    The model is run in eval mode under ``torch.no_grad``; its mode is given back.
    """

    def __init__(
        self,
        model: nn.Module,
        sigma: float,
        k_prime: int = 1,
        n: int = 1000,
        batch: int = 500,
        seed: int = 0,
    ) -> None:
        if not (isinstance(sigma, (int, float)) and sigma > 0 and sigma < float("inf")):
            raise InputError(f"sigma must be a positive number, got {sigma!r}")
        for name, value in (("k_prime", k_prime), ("n", n), ("batch", batch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        self.model, self.sigma, self.k_prime = model, float(sigma), k_prime
        self.n, self.batch, self.seed = n, batch, seed

    def counts(self, images: torch.Tensor, ids: Sequence[int] | None = None) -> torch.Tensor:
        """Per-label counts over ``n`` noisy copies of each image.

        Args:
            images: ``(B, C, H, W)`` pixels in [0, 1].
            ids: ``B`` integers naming the images (their noise streams); default
                ``0 .. B-1``.

        Returns:
            ``(B, c)`` int64 counts in ``[0, n]``; each row sums to ``n · k'``.
        """
        if images.dim() != 4:
            raise InputError(f"images must have shape (B, C, H, W), got {tuple(images.shape)}")
        ids = list(range(images.shape[0])) if ids is None else [int(i) for i in ids]
        if len(ids) != images.shape[0]:
            raise InputError(f"ids must name {images.shape[0]} images, got {len(ids)}")
        generators = [torch.Generator().manual_seed(self.seed * 1_000_003 + i) for i in ids]
        per_pass = max(1, self.batch // max(1, images.shape[0]))
        was_training = self.model.training
        self.model.eval()
        total: torch.Tensor | None = None
        try:
            with torch.no_grad():
                done = 0
                while done < self.n:
                    m = min(per_pass, self.n - done)
                    hits = self._hits(images, generators, m)  # (B, c)
                    total = hits if total is None else total + hits
                    done += m
        finally:
            self.model.train(was_training)
        assert total is not None
        return total

    def _hits(
        self, images: torch.Tensor, generators: list[torch.Generator], m: int
    ) -> torch.Tensor:
        """``(B, c)`` how often each label is in the base model's top-k' over ``m`` noisy
        copies of each image."""
        b = images.shape[0]
        # one draw per copy: torch's CPU sampler gives other numbers for one large draw
        # than for several small ones, and counts must not depend on how draws are grouped
        shape = images.shape[1:]
        noise = torch.stack(
            [torch.stack([torch.randn(shape, generator=g) for _ in range(m)]) for g in generators]
        ).to(device=images.device, dtype=images.dtype)
        noisy = (images[:, None] + self.sigma * noise).clamp_(0.0, 1.0)
        scores = logits_of(self.model(noisy.flatten(0, 1)))
        if scores.dim() != 2 or scores.shape[0] != b * m:
            raise InputError(
                f"the model returned scores of shape {tuple(scores.shape)} for {b * m} images; "
                "expected (B, c)"
            )
        if self.k_prime > scores.shape[1]:
            raise InputError(f"k_prime = {self.k_prime} exceeds the {scores.shape[1]} labels")
        top = scores.topk(self.k_prime, dim=1).indices.view(b, m * self.k_prime)
        hits = torch.zeros(b, scores.shape[1], dtype=torch.int64, device=top.device)
        return hits.scatter_add_(1, top, torch.ones_like(top))

    def predict(
        self, images: torch.Tensor, k: int, ids: Sequence[int] | None = None
    ) -> torch.Tensor:
        """The smoothed top-k: ``(B, c)`` booleans, the k labels with the largest counts
        (ties broken towards the lower label index, by a stable sort)."""
        counts = self.counts(images, ids)
        order = torch.sort(-counts, dim=1, stable=True).indices[:, :k]
        return torch.zeros_like(counts, dtype=torch.bool).scatter_(1, order, True)


class SmoothedScores(nn.Module):
    """A differentiable Monte-Carlo stand-in for the smoothed classifier, to attack it
    (expectation over transformation): ``log mean_η softmax(f(clip(x + η, 0, 1)))``.

    The softmax of the base scores is the soft version of "label i is the base top-1",
    so its mean over noise estimates ``p_i`` (exactly so for ``k' = 1``, a proxy that ranks
    the same way for larger ``k'``); the log keeps the scores' ranking and gives an attack
    logit-like values. Every call draws ``m`` fresh noise samples per image from the
    module's own generator (seeded), never from the global one.

    Args:
        model: images ``(B, C, H, W)`` in [0, 1] → scores (any form ``logits_of`` reads).
        sigma: the noise's standard deviation (pixel units, > 0).
        m: noise draws per image and call (>= 1).
        seed: the generator's seed.
    """

    def __init__(self, model: nn.Module, sigma: float, m: int = 8, seed: int = 0) -> None:
        super().__init__()
        if not (isinstance(sigma, (int, float)) and 0 < sigma < float("inf")):
            raise InputError(f"sigma must be a positive number, got {sigma!r}")
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise InputError(f"m must be a positive integer, got {m!r}")
        self.model, self.sigma, self.m = model, float(sigma), m
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, c)`` log of the Monte-Carlo mean of the base softmax over ``m`` draws."""
        b = images.shape[0]
        noise = torch.randn((b, self.m, *images.shape[1:]), generator=self.generator)
        noisy = (images[:, None] + self.sigma * noise.to(images)).clamp(0.0, 1.0)
        scores = logits_of(self.model(noisy.flatten(0, 1)))
        probs = scores.softmax(dim=1).view(b, self.m, -1).mean(dim=1)
        return probs.clamp_min(1e-12).log()
