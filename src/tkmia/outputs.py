"""A model's output as it comes, seen as logits ``(B, c)``: the one place that unwraps it.

Models that tkmia did not build return their scores in many shapes: a tensor, a tuple or
list (torchvision's Inception, many detectors' heads), a dict (TorchScript ``Dict[str,
Tensor]``), or an object with ``.logits`` (Hugging Face's ``ImageClassifierOutput``).
:class:`Logits` wraps such a model so that attacks and measures see a plain tensor; the
rule is :func:`logits_of`. The attacks wrap every model they are given with
:func:`as_logits`, so a Python caller may pass any of these models as it is. This module
sits at the bottom of the package (attacks and models both use it);
:mod:`tkmia.models.outputs` re-exports it with the dummy-batch check.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from tkmia.errors import InputError

__all__ = ["Logits", "as_logits", "logits_of"]

_ACCEPTED = (
    "a tensor, a tuple or list (its first element), a dict (its 'logits' entry, or its "
    "only entry) or an object with a .logits tensor"
)


def logits_of(output: object) -> torch.Tensor:
    """The score tensor in a model's ``output``.

    The rule, first match wins: a tensor is itself; a tuple or list gives its first
    element; a mapping gives its ``"logits"`` entry, or its only entry if it has one;
    any other object gives its ``.logits`` attribute. The result must be a tensor.

    Raises:
        InputError: none of these gives a tensor (the message names what was found).
    """
    found = output
    if isinstance(found, (tuple, list)) and found:
        found = found[0]
    elif isinstance(found, Mapping):
        if "logits" in found:
            found = found["logits"]
        elif len(found) == 1:
            found = next(iter(found.values()))
        else:
            raise InputError(
                f"the model returned a dict with keys {sorted(map(str, found))}; expected a "
                "'logits' key or a single entry"
            )
    elif not isinstance(found, torch.Tensor) and hasattr(found, "logits"):
        found = found.logits
    if not isinstance(found, torch.Tensor):
        raise InputError(
            f"the model returned {_describe(output)}; expected {_ACCEPTED}, giving a (B, c) "
            "tensor of scores"
        )
    return found


def _describe(value: object) -> str:
    if isinstance(value, (tuple, list)):
        if not value:
            return f"an empty {type(value).__name__}"
        return f"a {type(value).__name__} of {_describe(value[0])}"
    return f"a {type(value).__name__}"


class Logits(nn.Module):
    """``net`` with its output turned into logits ``(B, c)`` by :func:`logits_of`.

    Args:
        net: any module taking images ``(B, C, H, W)``.
        order: optional ``(c,)`` indices: output column ``i`` is the net's column
            ``order[i]`` (to put a model's classes in the dataset's order).

    ``train()``/``eval()`` reach ``net`` only when it allows them: a ``torch.export``
    module refuses both and always runs as exported (in eval mode).
    """

    def __init__(self, net: nn.Module, order: Sequence[int] | None = None) -> None:
        super().__init__()
        self.net = net
        self.order: torch.Tensor | None
        if order is None:
            self.order = None
        else:
            self.register_buffer("order", torch.as_tensor(list(order), dtype=torch.long))

    def train(self, mode: bool = True) -> Logits:
        """Set the mode of this wrapper and of ``net``, if ``net`` accepts it."""
        self.training = mode
        try:
            self.net.train(mode)
        except (NotImplementedError, RuntimeError):  # torch.export modules
            pass
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scores ``(B, c)`` of images ``x`` ``(B, C, H, W)``."""
        scores = logits_of(self.net(x))
        if self.order is not None:
            scores = scores.index_select(-1, self.order.to(scores.device))
        return scores


def as_logits(model: nn.Module) -> nn.Module:
    """``model`` seen through :class:`Logits` (itself if it already is one): whatever form
    its output takes (see :func:`logits_of`), the result returns a ``(B, c)`` tensor."""
    return model if isinstance(model, Logits) else Logits(model)
