"""Every output form in Python (issue 35, A): the attacks take a model returning a tensor, a
tuple, a dict or an object with ``.logits``, as the CLI does, and give bit for bit the
results of the same model returning the bare tensor (the reference)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from tkmia.attacks import MLCWU, KFool, TkMIA, TkMLAPU, Universal
from tkmia.models import Logits
from tkmia.normalize import Normalized
from tkmia.outputs import as_logits

from _toys import make_cnn, make_problem


class Shaped(nn.Module):
    """``net``'s logits in one of the forms models return."""

    def __init__(self, net: nn.Module, form: str) -> None:
        super().__init__()
        self.net, self.form = net, form

    def forward(self, x: torch.Tensor) -> object:
        s = self.net(x)
        if self.form == "dict":
            return {"features": s.detach() * 0 + 3, "logits": s}
        if self.form == "attribute":
            return SimpleNamespace(logits=s, hidden_states=None)
        return (s, s.detach() * 0 - 1)


FORMS = ["dict", "attribute", "tuple"]
ATTACKS = [TkMIA, TkMLAPU, MLCWU, KFool]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("cls", ATTACKS, ids=lambda c: c.__name__)
def test_every_attack_takes_every_output_form(cls: type, form: str) -> None:
    net = make_cnn(c=8)
    x, labels, spec = make_problem(net, b=4, k=2, n_relevant=4)
    ref = cls(net, k=2, max_iter=20)(x, labels, spec)
    got = cls(Shaped(net, form), k=2, max_iter=20)(x, labels, spec)
    for name in ("adv_images", "adv_scores", "clean_scores", "success", "iterations"):
        torch.testing.assert_close(getattr(got, name), getattr(ref, name), rtol=0, atol=0)


@pytest.mark.parametrize("form", FORMS)
def test_rescore_and_normalize_see_through_the_form(form: str) -> None:
    net = make_cnn(c=8)
    norm = ([0.4, 0.5, 0.6], [0.2, 0.3, 0.25])
    x, labels, spec = make_problem(Normalized(net, *norm), b=3, k=2, n_relevant=4)
    ref_atk = TkMIA(net, k=2, max_iter=15, normalize=norm)
    atk = TkMIA(Shaped(net, form), k=2, max_iter=15, normalize=norm)
    ref, got = ref_atk(x, labels, spec), atk(x, labels, spec)
    torch.testing.assert_close(got.adv_scores, ref.adv_scores, rtol=0, atol=0)
    assert torch.equal(atk.rescore(got.adv_images, got, labels), ref.success)


@pytest.mark.parametrize("form", FORMS)
def test_universal_takes_every_output_form(form: str) -> None:
    net = make_cnn(c=8)
    x, labels, spec = make_problem(net, b=6, k=2, n_relevant=4)
    ref = Universal(net, k=2, epochs=2, batch_size=3).fit(x, labels, spec)
    got = Universal(Shaped(net, form), k=2, epochs=2, batch_size=3).fit(x, labels, spec)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_the_wrapper_is_applied_once() -> None:
    net = make_cnn(c=8)
    wrapped = Logits(net)
    assert as_logits(wrapped) is wrapped
    assert isinstance(as_logits(net), Logits) and as_logits(net).net is net
    assert TkMIA(wrapped, k=2).model is wrapped
