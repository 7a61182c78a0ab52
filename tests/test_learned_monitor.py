"""The learned label-free monitor (SPEC §7.6): a logistic regression on the sorted sigmoid
scores, fitted on half of the images and scored on the other half."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from tkmia.cli import main
from tkmia.experiments.audit import AuditGroup, read_groups
from tkmia.experiments.learned_monitor import LEARNED_MONITOR, fit_learned, learned_audit
from tkmia.experiments.records import SORTED_SCORES
from tkmia.experiments.runner import RunConfig, run
from tkmia.experiments.settings import MethodConfig, Setting
from tkmia.score_stats import sorted_sigmoid

from _toys import TopKDataset, make_cnn


def _sorted(rng: np.random.Generator, n: int, d: int, shift: float) -> np.ndarray:
    """``(n, d)`` decreasing sigmoid scores of logits ``4, 2, 0, −1, ...`` plus noise
    (standard deviation 0.3); ``shift`` lowers the second largest logit."""
    logits = np.array([4.0, 2.0, 0.0, -1.0, -2.0, -3.0, -4.0, -5.0][:d])
    logits = logits + 0.3 * rng.normal(size=(n, d))
    logits[:, 1] -= shift
    return np.sort(1 / (1 + np.exp(-logits)), axis=1)[:, ::-1]


def test_sorted_sigmoid_scores_are_the_largest_in_decreasing_order() -> None:
    scores = torch.randn(7, 9, dtype=torch.float64)
    got = sorted_sigmoid(scores, 2)
    assert got.shape == (7, 6)  # min(c, 2k + 2)
    ref = torch.sigmoid(scores).sort(dim=1, descending=True).values[:, :6]
    assert torch.allclose(got, ref, rtol=0, atol=1e-15)
    assert sorted_sigmoid(scores, 5).shape == (7, 9)  # at most c


@pytest.mark.parametrize("shift, low, high", [(1.5, 0.99, 1.0), (0.0, 0.5, 0.56)])
def test_learned_monitor_sees_a_known_shift_and_nothing_without_one(shift, low, high) -> None:
    rng = np.random.default_rng(4)
    n, d = 1000, 6
    clean = _sorted(rng, n, d, 0.0)
    adv = _sorted(rng, n, d, shift)  # other images: nothing but the shift tells them apart
    fit = fit_learned(clean, adv, seed=1)
    assert fit.fit_images == n // 2 and fit.clean.size == n - n // 2
    assert low <= fit.auroc <= high
    # an independent reference: the same split, scikit-learn's fit and AUC
    order = np.random.default_rng([1, n, 2]).permutation(n)
    a, b = order[: n // 2], order[n // 2 :]
    scaler = StandardScaler().fit(np.r_[clean[a], adv[a]])
    reg = LogisticRegression(max_iter=2000).fit(
        scaler.transform(np.r_[clean[a], adv[a]]), np.r_[np.zeros(a.size), np.ones(a.size)]
    )
    ref = reg.decision_function(scaler.transform(np.r_[clean[b], adv[b]]))
    auc = roc_auc_score(np.r_[np.zeros(b.size), np.ones(b.size)], ref)
    assert fit.auroc == pytest.approx(max(auc, 1 - auc), abs=1e-9)
    if shift:  # the shifted feature (the 2nd largest score) carries the largest weight
        assert int(np.argmax(np.abs(fit.coef))) == 1


def _group(clean: np.ndarray, adv: np.ndarray, features: bool = True) -> AuditGroup:
    stats = np.zeros((8, clean.shape[0]))
    return AuditGroup(
        Setting("random", 2, n=1),
        MethodConfig("tkmia", lr=1e-4, lam=1e-3, max_iter=300),
        stats,
        stats,
        (clean, adv) if features else None,
    )


def test_learned_audit_rows_seeds_and_skipped_groups() -> None:
    rng = np.random.default_rng(0)
    clean, adv = _sorted(rng, 200, 6, 0.0), _sorted(rng, 200, 6, 0.3)
    first = learned_audit([_group(clean, adv)], [50, 100], seed=3, draws=300, threshold_draws=600)
    again = learned_audit([_group(clean, adv)], [50, 100], seed=3, draws=300, threshold_draws=600)
    assert [r.batch for r in first.rows] == [50, 100]
    assert all(r.statistic.monitor == LEARNED_MONITOR and r.images == 100 for r in first.rows)
    for r, s in zip(first.rows, again.rows, strict=True):  # equal seeds, equal audit
        assert np.array_equal(r.power, s.power) and r.auroc == s.auroc
    assert first.rows[1].p80 < 0.5 and 0.7 < first.rows[1].auroc < 1
    other = learned_audit([_group(clean, adv)], [100], seed=4, draws=300, threshold_draws=600)
    assert other.rows[0].auroc != first.rows[1].auroc  # the split depends on the seed
    skipped = learned_audit([_group(clean, adv, features=False)], [100])
    assert not skipped.rows and "lack" in skipped.notes[0]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    model = make_cnn()
    data = TopKDataset(model, n=16, seed=5)
    methods = [MethodConfig("tkmia", max_iter=5, lr=5.0, lam=1e-3)]
    config = RunConfig("toy", "cnn", [Setting("random", 3, n=1)], methods, samples=8, seed=0,
                       batch_size=8, examples=0, extra={"classes": data.classes})  # fmt: skip
    out = tmp_path_factory.mktemp("learned")
    run(config, model, data, out, progress=False)
    return out


def test_audit_of_a_folder_has_the_learned_monitor(folder, capsys) -> None:
    args = ["--batch-sizes", "8", "--draws", "100", "--no-figures"]
    assert main(["audit", str(folder), *args]) == 0
    printed = capsys.readouterr().out
    assert "p80 learned" in printed and "AUROC learned" in printed
    with (folder / "audit.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["monitor"] == LEARNED_MONITOR]
    assert len(rows) == 1 and rows[0]["images"] == "4"
    (group,) = read_groups(folder)
    assert group.features is not None and group.features[0].shape == (len(group.clean[0]), 8)
    assert (folder / "audit-learned.csv").read_text().startswith("setting,configuration")


def test_old_records_skip_the_learned_monitor_with_a_note(folder, tmp_path, capsys) -> None:
    old = tmp_path / "old"
    for path in folder.rglob("*"):
        target = old / path.relative_to(folder)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif path.suffix == ".jsonl":  # records as written before the sorted scores
            lines = [json.loads(line) for line in path.read_text().splitlines()]
            keep = [{k: v for k, v in r.items() if k not in SORTED_SCORES} for r in lines]
            target.write_text("".join(json.dumps(r) + "\n" for r in keep))
        elif path.name != "audit-learned.csv":
            target.write_bytes(path.read_bytes())
    assert main(["audit", str(old), "--batch-sizes", "50", "--draws", "100", "--no-figures"]) == 0
    printed = capsys.readouterr().out
    assert "Note: learned monitor skipped" in printed and "p80 learned" not in printed
    assert not (old / "audit-learned.csv").exists()
