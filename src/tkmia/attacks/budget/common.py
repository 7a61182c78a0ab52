"""What the ε-bounded attacks share (SPEC §7.7): the robust intersection, the two top-k
losses, the ε-ball and its exact projection, counter-based random numbers, the result.

Every image of a batch is independent: its random numbers come from a counter-based hash
of its own key (the run's seed and the image's index), never from a global generator, so
that a result never depends on the batch it was computed in, nor on the caller's RNG state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tkmia.attacks.checks import check_int, check_number
from tkmia.attacks.inputs import check_batch
from tkmia.errors import InputError
from tkmia.losses import tkmlap_loss
from tkmia.metrics import topk_mask
from tkmia.normalize import Normalized

__all__ = [
    "LOSSES",
    "NORMS",
    "Ball",
    "BudgetResult",
    "hits",
    "image_keys",
    "least_hits",
    "margin_loss",
    "prepare_model",
    "read_budget_call",
    "top_k_loss",
    "uniform",
]

#: the two norms of the budget: ``‖x' − x‖∞ <= ε`` or ``‖x' − x‖₂ <= ε`` (pixels in [0, 1])
NORMS = ("linf", "l2")
#: the two top-k losses (minimised): TkML-AP-U's and the smallest-margin one
LOSSES = ("tkmlapu", "margin")

_M32 = 0xFFFFFFFF


def hits(scores: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """``|T_k(x) ∩ Y|`` per image, ``(B,)`` long, from scores ``(B, c)`` and 0/1 labels."""
    return (topk_mask(scores, k) & labels.bool()).sum(dim=1)


def least_hits(labels: torch.Tensor, k: int) -> torch.Tensor:
    """The smallest ``|T_k(x') ∩ Y|`` any image can have, ``(B,)`` long: the top-k holds at
    least ``k − (c − |Y|)`` relevant labels when fewer than k labels lie outside Y."""
    c = labels.shape[1]
    return (k - (c - labels.bool().sum(dim=1))).clamp(min=0)


def margin_loss(scores: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """The smallest-margin loss ``(B,)`` (to minimise): ``e + m / (f_[1] − f_[c])``.

    ``e = |T_k ∩ Y|`` and ``m = f^Y_[e] − f^{¬Y}_[k−e+1]``, the margin by which the weakest
    relevant label inside the top-k stays above the best non-relevant label outside it:
    once ``m < 0`` that label has left and ``e`` drops by one. The margin is scaled by the
    scores' range (so the loss is invariant to a shift and a positive scale of the scores,
    as APGD's DLR loss) and lies in [0, 1], so the loss orders images first by ``e``.
    Where ``e`` cannot drop any more (:func:`least_hits`) the loss is ``e``.
    """
    lab = labels.bool()
    e = hits(scores, lab, k)
    rel = scores.masked_fill(~lab, float("-inf")).sort(dim=1, descending=True).values
    irr = scores.masked_fill(lab, float("-inf")).sort(dim=1, descending=True).values
    weakest = rel.gather(1, (e - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
    rival = irr.gather(1, (k - e).clamp(0, scores.shape[1] - 1).unsqueeze(1)).squeeze(1)
    span = scores.amax(dim=1) - scores.amin(dim=1) + 1e-12
    live = e > least_hits(lab, k)
    margin = torch.where(live, weakest - torch.where(live, rival, weakest), 0.0)
    return e.to(scores.dtype) + margin / span


def top_k_loss(name: str, scores: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """The loss ``name`` (one of :data:`LOSSES`) per image ``(B,)``, differentiable in the
    scores ``(B, c)``: ``tkmlapu`` is TkML-AP-U's ``ATk_{c−k}(max_Y f − f)`` (SPEC §4) on
    the relevant labels, ``margin`` is :func:`margin_loss`."""
    if name == "tkmlapu":
        return tkmlap_loss(scores, labels, k)
    return margin_loss(scores, labels, k)


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixer on int64 tensors (values kept in [0, 2^32))."""
    x = x & _M32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    return (x >> 16) ^ x


def image_keys(seed: int, indices: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Per image the key of its random numbers, ``(B,)`` int64 on ``device`` (the images'),
    from the run's ``seed`` and the images' ``indices`` ``(B,)`` (their place in the
    dataset)."""
    return _hash32(
        _hash32(torch.as_tensor(indices, dtype=torch.long))
        ^ _hash32(torch.tensor(seed, dtype=torch.long))
    ).to(device)


def uniform(keys: torch.Tensor, stream: int, size: int, device: torch.device) -> torch.Tensor:
    """``(B, size)`` float32 uniform in [0, 1): for image ``i`` a function of ``keys[i]``,
    ``stream`` (which draw of the attack) and the position only."""
    base = _hash32(keys.to(device).unsqueeze(1) ^ _hash32(torch.tensor(stream, device=device)))
    pos = torch.arange(size, device=device, dtype=torch.long).unsqueeze(0)
    return _hash32(_hash32(base + pos) + base).to(torch.float32) / 2.0**32


@dataclass
class BudgetResult:
    """What an ε-bounded attack returns for B images.

    Attributes:
        adv_images: ``(B, C, H, W)`` in [0, 1], within the ε-ball of the clean image
            (checked in float64): the point with the smallest ``|T_k ∩ Y|`` found (ties:
            the smallest loss).
        adv_scores: ``(B, c)`` the model's scores of ``adv_images``.
        clean_scores: ``(B, c)``.
        hits: ``(B,)`` long, ``ê = |T_k(x') ∩ Y|`` of ``adv_images``.
        clean_hits: ``(B,)`` long, ``|T_k(x) ∩ Y|``.
        queries: ``(B,)`` long, the model's forward passes on the image (clean included).
    """

    adv_images: torch.Tensor
    adv_scores: torch.Tensor
    clean_scores: torch.Tensor
    hits: torch.Tensor
    clean_hits: torch.Tensor
    queries: torch.Tensor


class Ball:
    """The feasible set ``{x' ∈ [0, 1]^d : ‖x' − x0‖_p <= ε}`` of B images and its
    projection, exact in float64: every point :meth:`project` returns satisfies the
    bound when the difference and its norm are computed in float64.

    Args:
        x0: ``(B, C, H, W)`` clean pixels; norm: ``"linf"`` or ``"l2"``; eps: ε >= 0.
    """

    def __init__(self, x0: torch.Tensor, norm: str, eps: float) -> None:
        self.x0, self.norm, self.eps = x0, norm, eps
        if norm == "linf":
            self.low = self._inside(x0.double() - eps, x0).clamp(min=0)
            self.high = self._inside(x0.double() + eps, x0).clamp(max=1)

    def _inside(self, exact: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """The float64 bound ``exact`` in ``x0``'s dtype, moved one float step towards
        ``x0`` where rounding put it beyond ε."""
        bound = exact.to(x0.dtype)
        for _ in range(4):
            gap = (bound.double() - x0.double()).abs() > self.eps
            if not bool(gap.any()):
                break
            bound = torch.where(gap, torch.nextafter(bound, x0), bound)
        return bound

    def rows(self, index: torch.Tensor) -> Ball:
        """The ball of the images ``index``."""
        ball = Ball.__new__(Ball)
        ball.x0, ball.norm, ball.eps = self.x0[index], self.norm, self.eps
        if self.norm == "linf":
            ball.low, ball.high = self.low[index], self.high[index]
        return ball

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """The point of the set nearest ``x`` ``(B, C, H, W)`` for L∞; for L2 the radial
        projection onto the ball followed by clipping to [0, 1] (which only shrinks each
        coordinate's distance to ``x0``, so the point stays in the ball)."""
        if self.norm == "linf":
            return torch.minimum(torch.maximum(x, self.low), self.high)
        delta = x - self.x0
        norm = delta.flatten(1).norm(dim=1).clamp(min=1e-30)
        scale = (self.eps * (1 - 1e-6) / norm).clamp(max=1).view(-1, 1, 1, 1)
        out = (self.x0 + delta * scale).clamp(0, 1)
        for _ in range(8):  # float32 rounding may leave a point a hair outside: shrink it
            true = (out.double() - self.x0.double()).flatten(1).norm(dim=1)
            over = true > self.eps
            if not bool(over.any()):
                break
            shrink = torch.where(over, (self.eps / true) * (1 - 1e-5), 1.0).view(-1, 1, 1, 1)
            out = (self.x0 + (out - self.x0) * shrink.to(out.dtype)).clamp(0, 1)
        result: torch.Tensor = out
        return result


def prepare_model(model: nn.Module, normalize: tuple[object, object] | None) -> nn.Module:
    """The model seen on pixels in [0, 1]: ``Normalized(model, mean, std)`` when
    ``normalize`` is given (as every attack takes it)."""
    if normalize is None:
        return model
    if not isinstance(normalize, (tuple, list)) or len(normalize) != 2:
        raise InputError("normalize must be a pair (mean, std) of per-channel sequences")
    try:
        return Normalized(model, *normalize)  # type: ignore[arg-type]
    except InputError as err:
        raise InputError(f"normalize {err}") from None


def read_budget_call(
    images: object,
    labels: object,
    k: int,
    norm: str,
    eps: object,
    start: object,
    seed: int,
    indices: torch.Tensor | None,
) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Check an ε-bounded attack's call and read what every such attack starts from.

    Returns:
        ``(eps as a float, labels (B, c) bool on the images' device, keys (B,) int64 on
        the images' device)``; the keys come from ``seed`` and ``indices`` (default
        ``0 .. B-1``), see :func:`image_keys`.

    Raises:
        InputError: bad images or labels (an image without a relevant label included),
            ``k``, ``norm`` or ``eps``, or a ``start`` that is not images of the same shape
            (a start is projected onto the ε-ball by the attack).
    """
    if norm not in NORMS:
        raise InputError(f"norm must be one of {NORMS}, got {norm!r}")
    eps_value = check_number("eps", eps, allow_zero=True)
    check_int("k", k, 1)
    if isinstance(labels, torch.Tensor) and labels.dim() == 2:
        empty = torch.nonzero(labels.sum(dim=1) == 0).flatten().tolist()
        if empty:
            raise InputError(
                f"every image needs at least one relevant label; images {empty[:10]} have none"
            )
    check_batch(images, labels, labels, k, None)  # S = Y: shapes, 0/1, k < c
    assert isinstance(images, torch.Tensor)
    if start is not None:
        if not isinstance(start, torch.Tensor) or start.shape != images.shape:
            raise InputError(
                f"start must be images of the same shape {tuple(images.shape)}, got "
                f"{tuple(start.shape) if isinstance(start, torch.Tensor) else type(start)}"
            )
    assert isinstance(labels, torch.Tensor)
    device = images.device
    where = torch.arange(images.shape[0]) if indices is None else indices
    return eps_value, labels.to(device).bool(), image_keys(seed, where, device)
