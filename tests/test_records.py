"""Per-image records and their summary, on hand-made inputs whose answers are known."""

from __future__ import annotations

import math

import pytest
import torch

from tkmia.attacks import AttackResult
from tkmia.experiments.records import make_records, summarise
from tkmia.metrics import removed_count

K = 2


def _record(success: bool, p_clean: float, p_adv: float, l2: float, **extra) -> dict:
    rec = {
        "index": 0, "success": success, "iterations": 10, "n_specified": 1, "required": 1,
        "delta_n": 1 if success else 0, "success_uint8": success,
        "tkacc_clean": 1.0, "tkacc_adv": 1.0, "p_at_k_clean": p_clean, "p_at_k_adv": p_adv,
        "map_at_k_clean": 1.0, "map_at_k_adv": 0.5, "ndcg_at_k_clean": 1.0,
        "ndcg_at_k_adv": 0.75, "l2": l2, "linf": l2 / 10, "psnr": 40.0 + l2, "ssim": 1 - l2 / 100,
        "specified": [0], "seconds": 0.5,
    }  # fmt: skip
    return rec | extra


def test_drops_average_all_attacked_images_and_norms_only_the_successful_ones() -> None:
    records = [
        _record(True, 1.0, 0.5, 2.0),  # drop 0.5
        _record(True, 1.0, 1.0, 4.0, delta_n=2, n_specified=2),  # drop 0
        _record(False, 1.0, 0.0, 30.0, iterations=300),  # drop 1: a failed image counts too
        _record(False, 0.5, 0.5, 50.0, iterations=300),  # drop 0
    ]
    row = summarise(records)
    assert row["attacked"] == 4
    assert row["success_rate"] == pytest.approx(0.5)
    assert row["success_uint8"] == pytest.approx(0.5)
    assert row["d_p_at_k"] == pytest.approx((0.5 + 0 + 1 + 0) / 4)  # not 0.25 (successes only)
    assert row["d_map_at_k"] == pytest.approx(0.5)
    assert row["d_ndcg_at_k"] == pytest.approx(0.25)
    assert row["d_tkacc"] == 0.0
    assert row["delta_n"] == pytest.approx((1 + 2 + 0 + 0) / 4)
    assert row["mean_specified"] == pytest.approx(1.25)
    assert row["mean_iterations"] == pytest.approx((10 + 10 + 300 + 300) / 4)
    # APer and the other norms: the successful images only
    assert row["aper"] == pytest.approx(3.0)  # not 21.5 (all images)
    assert row["linf"] == pytest.approx(0.3)
    assert row["psnr"] == pytest.approx(43.0)
    assert row["ssim"] == pytest.approx(0.97)
    assert row["seconds"] == pytest.approx(2.0)


def test_no_success_gives_nan_norms_and_no_records_nan_everything() -> None:
    row = summarise([_record(False, 1.0, 0.5, 9.0)])
    assert row["success_rate"] == 0.0 and row["d_p_at_k"] == pytest.approx(0.5)
    assert math.isnan(row["aper"]) and math.isnan(row["psnr"])
    assert math.isnan(summarise([])["d_p_at_k"])


def _result(
    clean: list[list[float]],
    adv: list[list[float]],
    spec: list[list[int]],
    required: list[int],
    success: list[bool],
) -> AttackResult:
    clean_t, adv_t = torch.tensor(clean), torch.tensor(adv)
    b = clean_t.shape[0]
    images = torch.full((b, 1, 2, 2), 0.5)
    return AttackResult(
        adv_images=images + 0.1, success=torch.tensor(success),
        iterations=torch.tensor([3] * b), clean_scores=clean_t, adv_scores=adv_t,
        specified=torch.tensor(spec).bool(), required=torch.tensor(required),
    )  # fmt: skip


def test_records_hold_delta_n_of_clean_against_adversarial_scores() -> None:
    labels = torch.tensor([[1.0, 1, 1, 0, 0], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    clean = [[5.0, 4, 3, 2, 1], [5, 4, 3, 2, 1], [5, 4, 3, 2, 1]]
    adv = [
        [0.0, 0, 3, 2, 1],  # both specified labels (0, 1) left the top-2: ΔN = 2
        [5.0, 0, 3, 2, 1],  # one left: ΔN = 1
        [5.0, 4, 3, 2, 1],  # none left: ΔN = 0
    ]
    spec = [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]]
    result = _result(clean, adv, spec, required=[2, 2, 1], success=[True, False, False])
    images = torch.full((3, 1, 2, 2), 0.5)
    recs = make_records([7, 8, 9], images, labels, result, K, seconds=3.0)
    assert [r["delta_n"] for r in recs] == [2, 1, 0]
    expected = removed_count(result.clean_scores, result.adv_scores, result.specified, K)
    assert [r["delta_n"] for r in recs] == expected.tolist()
    for rec in recs:
        assert rec["success"] == (rec["delta_n"] >= rec["required"])
    assert [r["index"] for r in recs] == [7, 8, 9]
    assert [r["specified"] for r in recs] == [[0, 1], [0, 1], [0]]
    assert recs[0]["p_at_k_clean"] == 1.0 and recs[0]["p_at_k_adv"] == 0.5
    assert recs[0]["l2"] == pytest.approx(0.2) and recs[0]["linf"] == pytest.approx(0.1)
    assert recs[0]["seconds"] == pytest.approx(1.0)
