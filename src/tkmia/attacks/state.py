"""Per-sample state of the working set, with named fields.

Every field of a state holds one row per sample (its first dimension). The engine moves
rows between states (a sample starts, finishes, its slot is refilled) without knowing what
the fields mean, so an attack that keeps state of its own subclasses :class:`SampleState`
with more fields (a dataclass) and builds it in :meth:`~tkmia.attacks.Attack.init_state`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any, TypeVar

import torch

__all__ = ["SampleState"]

S = TypeVar("S", bound="SampleState")


@dataclass
class SampleState:
    """What the engine keeps for each of ``n`` samples in the working set.

    Attributes:
        x0: ``(n, C, H, W)`` the clean pixels in [0, 1], in the model's memory layout.
        z0: ``(n, C, H, W)`` ``atanh(2·x0 − 1)``: the clean image in the attack's space.
        v: ``(n, C, H, W)`` the attack's variable: the iterate is ``to_pixels(z0 + v)``.
        labels: ``(n, c)`` bool, the relevant labels Y.
        specified: ``(n, c)`` bool, the labels S to hide.
        max_left: ``(n,)`` long, the bound of the success rule: how many labels of S may
            stay in the top-k (an untargeted attack), or how many targets must be in it
            (a targeted one, :attr:`~tkmia.attacks.Attack.targeted`).
        min_hits: ``(n,)`` long, how many relevant labels the top-k must keep
            (``success="preserve"``: the clean image's ``|T_k(x) ∩ Y|``; else 0).
        clean_stats: ``(n, 4)`` the clean image's label-free statistics
            (:func:`tkmia.score_stats.label_free_stats`), for ``success="stealth"``.
    """

    x0: torch.Tensor
    z0: torch.Tensor
    v: torch.Tensor
    labels: torch.Tensor
    specified: torch.Tensor
    max_left: torch.Tensor
    min_hits: torch.Tensor
    clean_stats: torch.Tensor

    @classmethod
    def extend(cls: type[S], base: SampleState, **more: torch.Tensor) -> S:
        """A state of this class with ``base``'s fields and the ``more`` of a subclass."""
        return cls(**{f.name: getattr(base, f.name) for f in fields(base)}, **more)

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """``(name, tensor)`` of every field."""
        for f in fields(self):
            yield f.name, getattr(self, f.name)

    def rows(self: S, index: torch.Tensor) -> S:
        """A new state with the rows ``index`` (long, on the state's device) of every field;
        indexing keeps each tensor's memory layout (``index_select`` would not)."""
        return type(self)(**{name: t[index] for name, t in self.tensors()})

    def put_rows_(self, index: torch.Tensor, other: SampleState) -> None:
        """Write ``other``'s rows over the rows ``index`` of every field, in place."""
        if type(other) is not type(self):
            raise RuntimeError(
                f"the working set holds {type(self).__name__} but a new sample's state is a "
                f"{type(other).__name__}; init_state must always return the same class"
            )
        for name, t in self.tensors():
            t.index_copy_(0, index, getattr(other, name).to(t.dtype))

    @staticmethod
    def cat(parts: Sequence[S]) -> S:
        """The rows of ``parts`` (states of one class) one after another."""
        if len(parts) == 1:
            return parts[0]
        first = parts[0]
        merged: dict[str, Any] = {
            name: torch.cat([getattr(p, name) for p in parts]) for name, _ in first.tensors()
        }
        return type(first)(**merged)
