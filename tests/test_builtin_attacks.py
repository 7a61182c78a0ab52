"""All four attacks against the shipped built-in model: they succeed on most eligible images."""

from __future__ import annotations

import pytest
import torch

from tkmia.attacks import MLCWU, KFool, TkMIA, TkMLAPU
from tkmia.data import Digits
from tkmia.metrics import ndcg_at_k, removed_count
from tkmia.models import builtin_model
from tkmia.protocol import select_random

K = 2


@pytest.fixture(scope="module")
def problem():
    model = builtin_model()
    data = Digits("val", size=200)
    images, labels = data.images.float() / 255, data.labels
    with torch.no_grad():
        scores = model(images)
    specified, eligible = select_random(labels, scores, 1, K, 0, range(len(data)))
    keep = torch.nonzero(eligible).flatten()[:32]
    assert len(keep) == 32
    return model, images[keep], labels[keep], specified[keep].float()


@pytest.mark.parametrize(
    "make, least",
    [
        (lambda m: TkMIA(m, K, lr=1e-3, lam=1e-3, max_iter=100), 0.9),
        (lambda m: TkMLAPU(m, K, lr=1e-3, lam=1e-3, max_iter=100), 0.9),
        (lambda m: MLCWU(m, K, lr=1e-3, lam=1e-3, max_iter=100), 0.9),
        # the paper's kFool (the default) is the weakest: 0.5 here
        (lambda m: KFool(m, K, max_iter=50), 0.4),
        (lambda m: KFool(m, K, max_iter=50, linearize="tanh", overshoot=0.02), 0.6),
    ],
    ids=["tkmia", "tkmlapu", "mlcwu", "kfool", "kfool-tanh"],
)
def test_attack_succeeds_on_most_eligible_images(problem, make, least) -> None:
    model, images, labels, specified = problem
    result = make(model)(images, labels, specified, threshold=1)
    assert float(result.success.float().mean()) >= least
    with torch.no_grad():
        rescored = model(result.adv_images)
    delta_n = removed_count(result.clean_scores, rescored, specified, K)
    assert torch.equal(delta_n >= 1, result.success)


def test_tkmia_keeps_ndcg_better_than_the_baselines(problem) -> None:
    """The paper's claim on the built-in model, on one setting (S2, n = 1, k = 2)."""
    model, images, labels, specified = problem
    drops = {}
    for name, atk in {
        "tkmia": TkMIA(model, K, lr=1e-3, lam=1e-3, max_iter=100),
        "tkmlapu": TkMLAPU(model, K, lr=1e-3, lam=1e-3, max_iter=100),
        "mlcwu": MLCWU(model, K, lr=1e-3, lam=1e-3, max_iter=100),
    }.items():
        res = atk(images, labels, specified, threshold=1)
        ok = res.success
        drops[name] = float(
            (ndcg_at_k(res.clean_scores, labels, K) - ndcg_at_k(res.adv_scores, labels, K))[
                ok
            ].mean()
        )
    assert drops["tkmia"] < drops["tkmlapu"] and drops["tkmia"] < drops["mlcwu"]
