"""The label-free statistics of SPEC §7.5 against a float64 loop over each sample, and
their place in the records."""

from __future__ import annotations

import math

import pytest
import torch

from tkmia.attacks import AttackResult
from tkmia.errors import InputError
from tkmia.experiments.records import LABEL_FREE, make_records
from tkmia.score_stats import count_above_half, kth_sigmoid, topk_margin, topk_sigmoid_mass


def _sig(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def _brute(row: list[float], k: int) -> dict[str, float]:
    """The four statistics of one sample, written out from SPEC §7.5."""
    ranked = sorted(row, reverse=True)
    return {
        "kth_score": _sig(ranked[k - 1]),
        "topk_mass": sum(_sig(v) for v in ranked[:k]),
        "margin": ranked[k - 1] - ranked[k],
        "n_above_half": float(sum(_sig(v) > 0.5 for v in row)),
    }


@pytest.mark.parametrize(("c", "k"), [(2, 1), (5, 2), (20, 3), (20, 19)])
def test_label_free_statistics_match_a_loop(c: int, k: int) -> None:
    gen = torch.Generator().manual_seed(c * 31 + k)
    scores = torch.randn(16, c, generator=gen, dtype=torch.float64) * 3
    for name, fn in LABEL_FREE.items():
        got = fn(scores, k)
        assert got.shape == (16,)
        want = [_brute(row, k)[name] for row in scores.tolist()]
        assert got.tolist() == pytest.approx(want, rel=1e-12, abs=1e-12), name


def test_label_free_statistics_hand_made() -> None:
    scores = torch.tensor([[2.0, -1.0, 0.5, -3.0], [-1.0, -2.0, -0.5, -4.0]])
    assert topk_margin(scores, 2).tolist() == pytest.approx([1.5, 1.0])
    assert count_above_half(scores).tolist() == [2.0, 0.0]
    assert kth_sigmoid(scores, 1).tolist() == pytest.approx([_sig(2.0), _sig(-0.5)])
    assert topk_sigmoid_mass(scores, 2)[0].item() == pytest.approx(_sig(2.0) + _sig(0.5))


def test_label_free_statistics_reject_bad_inputs() -> None:
    scores = torch.zeros(3, 4)
    with pytest.raises(InputError, match="k < c"):
        topk_margin(scores, 4)  # no (k+1)-th score
    with pytest.raises(InputError, match="k <= c"):
        kth_sigmoid(scores, 5)
    with pytest.raises(InputError, match=r"\(B, c\)"):
        count_above_half(torch.zeros(4))


def test_records_hold_the_label_free_statistics_of_clean_and_adversarial_scores() -> None:
    clean = torch.tensor([[3.0, 2.0, -1.0, -2.0], [1.0, -1.0, 0.5, 0.2]])
    adv = torch.tensor([[-3.0, 2.0, 1.0, -2.0], [1.0, -1.0, 0.5, 0.3]])
    result = AttackResult(
        adv_images=torch.full((2, 1, 2, 2), 0.6), success=torch.tensor([True, False]),
        iterations=torch.tensor([3, 3]), clean_scores=clean, adv_scores=adv,
        specified=torch.tensor([[1, 0, 0, 0], [1, 0, 0, 0]]).bool(),
        required=torch.tensor([1, 1]),
    )  # fmt: skip
    labels = torch.tensor([[1.0, 1, 1, 0], [1, 0, 1, 1]])
    recs = make_records([0, 1], torch.full((2, 1, 2, 2), 0.5), labels, result, 2, 1.0)
    for rec, c_row, a_row in zip(recs, clean.tolist(), adv.tolist(), strict=True):
        for name in LABEL_FREE:
            assert rec[f"{name}_clean"] == pytest.approx(_brute(c_row, 2)[name], rel=1e-6)
            assert rec[f"{name}_adv"] == pytest.approx(_brute(a_row, 2)[name], rel=1e-6)
    assert recs[0]["n_above_half_clean"] == 2.0 and recs[0]["n_above_half_adv"] == 2.0
    assert recs[0]["margin_adv"] == pytest.approx(3.0)  # 2 - (-2)
