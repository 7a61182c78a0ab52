"""The defender's audit (SPEC §7.5): false alarms, power against normal theory, AUROC
against scikit-learn, and `tkmia audit` on a results folder."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from tkmia.cli import main
from tkmia.cli.run import _audit as run_audit
from tkmia.experiments.audit import (
    P_GRID,
    STATISTICS,
    AuditGroup,
    audit_groups,
    auroc,
    power_curves,
)
from tkmia.experiments.builtin import default_method
from tkmia.experiments.records import read_records
from tkmia.experiments.runner import RunConfig, run
from tkmia.experiments.settings import MethodConfig, Setting
from tkmia.reports.audit import CSV_COLUMNS

from _toys import TopKDataset, make_cnn

ALPHA, DRAWS = 0.05, 2000


def _kinds(n: int, seed: int = 0) -> np.ndarray:
    """Clean values of very different kinds, ``(6, n)``: continuous, 0/1 mostly 1 (like
    TkAcc), multiples of 1/3 (P@k at k = 3), small counts, a constant, a skewed one."""
    rng = np.random.default_rng(seed)
    return np.stack(
        [
            rng.normal(size=n),
            (rng.random(n) < 0.9).astype(float),
            rng.integers(0, 4, n) / 3,
            rng.poisson(2.0, n).astype(float),
            np.ones(n),
            rng.exponential(size=n),
        ]
    )


@pytest.mark.parametrize("two_sided", [False, True])
@pytest.mark.parametrize("batch", [50, 100])
def test_power_without_attacked_images_is_the_false_alarm_rate(two_sided, batch) -> None:
    clean = _kinds(300)
    sides = np.full(clean.shape[0], two_sided)
    power = power_curves(clean, clean + 1.0, sides, batch, seed=3, draws=DRAWS, attacked=[0])
    # the error of a rate over DRAWS batches, and as much again for the estimated threshold
    tol = 4 * math.sqrt(2 * ALPHA * (1 - ALPHA) / DRAWS)
    assert np.abs(power[:, 0] - ALPHA).max() < tol, power[:, 0]


@pytest.mark.parametrize("two_sided", [False, True])
def test_power_of_a_known_shift_follows_normal_theory(two_sided) -> None:
    n, batch, shift = 2000, 100, 0.5
    clean = np.random.default_rng(1).normal(size=(1, n))
    sides = np.array([two_sided])
    power = power_curves(clean, clean - shift, sides, batch, draws=4000, threshold_draws=16000)[0]
    # m attacked images move the batch mean by exactly -shift * m / N; it is ~ normal
    z = shift * np.arange(batch + 1) / batch / (clean.std() / math.sqrt(batch))
    level = ALPHA / 2 if two_sided else ALPHA
    expected = norm.cdf(z - norm.ppf(1 - level))
    if two_sided:
        expected += norm.cdf(-z - norm.ppf(1 - level))
    assert np.abs(power - expected).max() < 0.05  # seeds 0-7 stay within 0.025
    assert np.all(np.diff(power) >= -0.02)  # grows with p (same batches for every m)
    assert power[-1] > 0.99


def test_p80_on_the_grid_and_nothing_seen_when_adversarial_equals_clean() -> None:
    clean = _kinds(200, seed=2)
    clean = np.concatenate([clean, clean[:2]])[: len(STATISTICS)]
    setting = Setting("random", 3, n=1)
    same = AuditGroup(setting, default_method("kfool"), clean, clean.copy())
    moved = AuditGroup(setting, default_method("mlcwu"), clean, clean - 100.0)
    rows = audit_groups([same, moved], batch_sizes=[50], draws=500, threshold_draws=1000)
    assert len(rows) == 2 * len(STATISTICS)
    for row in rows[: len(STATISTICS)]:
        assert row.p80 > 1 and math.isinf(row.p80), row.statistic
        assert row.power.max() < 0.2
        if row.statistic.two_sided:
            assert row.auroc == 0.5
        else:
            assert math.isnan(row.auroc)
    for row in rows[len(STATISTICS) :]:
        # one image of 50 shifted by 100 moves the batch mean by 2, far beyond the
        # thresholds: p = 0.01 already means one image (m = floor(p N + 0.5))
        assert row.p80 == pytest.approx(0.01), row.statistic
        assert row.power_at(0.1) == 1.0 and row.power_at(0.0) < 0.2
        assert P_GRID[1] == 0.01


def test_auroc_equals_scikit_learn_with_ties() -> None:
    rng = np.random.default_rng(4)
    clean = np.stack([rng.normal(size=40), rng.integers(0, 3, 40).astype(float)])
    adv = np.stack([rng.normal(0.3, size=60), rng.integers(0, 4, 60).astype(float)])
    adv[1, :10] = 0.0  # ties across the two sides
    got = auroc(clean, adv)
    for s in range(2):
        y = np.r_[np.zeros(40), np.ones(60)]
        auc = roc_auc_score(y, np.r_[clean[s], adv[s]])
        assert got[s] == pytest.approx(max(auc, 1 - auc), abs=1e-12)
    assert auroc(adv[:1], clean[:1])[0] == pytest.approx(got[0])  # symmetric


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    model = make_cnn()
    data = TopKDataset(model, n=12, seed=5)
    methods = [
        MethodConfig("tkmia", max_iter=30, lr=5.0, lam=1e-3),  # succeeds on all 6 images
        MethodConfig("kfool", max_iter=3, overshoot=0.0, linearize="image"),  # fails on all
    ]
    config = RunConfig("toy", "cnn", [Setting("random", 3, n=1)], methods, samples=6, seed=0,
                       batch_size=6, examples=0, extra={"classes": data.classes})  # fmt: skip
    out = tmp_path_factory.mktemp("audit")
    run(config, model, data, out, progress=False)
    success = {p.stem: [r["success"] for r in read_records(p)] for p in out.rglob("*.jsonl")}
    assert success == {"tkmia-lr5-lam0.001-it30": [True] * 6, "kfool-it3-os0-linimage": [False] * 6}
    return out


def _csv(path):
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_audit_of_a_folder_is_unchanged_by_report(results, capsys) -> None:
    out = results
    assert main(["audit", str(out), "--batch-sizes", "3,6", "--draws", "200"]) == 0
    printed = capsys.readouterr().out
    assert "p80 P@k" in printed and "AUROC margin" in printed
    first = (out / "audit.csv").read_bytes()
    rows = _csv(out / "audit.csv")
    assert list(rows[0]) == CSV_COLUMNS
    # methods × N × (statistics + the learned monitor)
    assert len(rows) == 2 * 2 * (len(STATISTICS) + 1)
    assert {r["monitor"] for r in rows} == {"labels", "label-free", "learned"}
    assert all(r["auroc"] == "" for r in rows if r["monitor"] == "labels")
    assert all(0.5 <= float(r["auroc"]) <= 1 for r in rows if r["monitor"] == "label-free")
    assert "\\toprule" in (out / "audit.tex").read_text()
    for kind in ("power", "dist"):
        assert (out / "figures" / f"audit-{kind}-random-k3-n1-t1.png").stat().st_size > 1000
    assert main(["report", str(out)]) == 0
    args = ["audit", str(out), "--batch-sizes", "3,6", "--draws", "200", "--no-figures"]
    assert main(args) == 0
    assert (out / "audit.csv").read_bytes() == first


def test_batch_sizes_beyond_the_attacked_images_are_skipped_with_a_note(results, capsys) -> None:
    """6 images attacked per setting: N = 50 would resample them; it is left out, in one
    line per method, and N = 6 keeps exactly the rows it has alone."""
    out = results
    assert main(["audit", str(out), "--batch-sizes", "6", "--draws", "200", "--no-figures"]) == 0
    alone = (out / "audit.csv").read_bytes()
    capsys.readouterr()
    args = ["audit", str(out), "--batch-sizes", "6,50", "--draws", "200", "--no-figures"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert printed.count("N = [50] skipped (only 6 attacked images") == 2  # two methods
    assert "skipped" in (out / "audit.md").read_text()
    rows = _csv(out / "audit.csv")
    assert {r["N"] for r in rows} == {"6"}
    assert (out / "audit.csv").read_bytes() == alone


def test_records_without_the_statistics_name_the_columns(results, tmp_path, capsys) -> None:
    old = tmp_path / "old"
    for path in results.rglob("*"):
        target = old / path.relative_to(results)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif path.suffix == ".jsonl":  # records as written before the audit existed
            lines = [json.loads(line) for line in path.read_text().splitlines()]
            keep = [{k: v for k, v in r.items() if not k.startswith("margin")} for r in lines]
            target.write_text("".join(json.dumps(r) + "\n" for r in keep))
        else:
            target.write_bytes(path.read_bytes())
    assert main(["audit", str(old)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert "['margin_adv', 'margin_clean']" in err and "new --out folder" in err
    assert main(["audit", str(tmp_path / "missing")]) == 2
    assert "not a tkmia results folder" in capsys.readouterr().err
    run_audit(old)  # the end of `tkmia run` on such a folder: a warning, not a failed run
    assert capsys.readouterr().err.startswith("tkmia run: warning: no audit: the records of")


def _hand_records(n: int = 200) -> tuple[list[dict[str, object]], np.ndarray, np.ndarray]:
    """``n`` hand-made records: every other attack succeeded (with the clean values kept,
    as a measure-imperceptible attack would), every failed one lowered each measure and
    raised each label-free statistic by 1. Returns the records and the (S, n) clean and
    adversarial values they hold."""
    rng = np.random.default_rng(8)
    clean = rng.normal(size=(len(STATISTICS), n)) * 0.3
    success = np.arange(n) % 2 == 0
    sign = np.array([-1.0 if not s.two_sided else 1.0 for s in STATISTICS])[:, None]
    adv = clean + np.where(success, 0.0, 1.0) * sign
    records = [
        {"index": i, "success": bool(success[i])}
        | {f"{s.name}_clean": float(clean[j, i]) for j, s in enumerate(STATISTICS)}
        | {f"{s.name}_adv": float(adv[j, i]) for j, s in enumerate(STATISTICS)}
        for i in range(n)
    ]
    return records, clean, adv


def test_audit_reads_clean_and_adversarial_values_of_every_attacked_image() -> None:
    """Hand-made records with known shifts: the audit's adversarial values are the
    records' ``*_adv`` ones, failed attacks included (SPEC §7.5: they are what the attacker
    sends), its clean values the ``*_clean`` ones; the measures' monitors (alarm when the
    mean drops) see the failed attacks' drop: finite p80, power 1 with every image
    attacked."""
    from tkmia.experiments.audit import group_values
    from tkmia.experiments.summary import RecordGroup

    records, clean, adv = _hand_records()
    setting = Setting("random", 3, n=1)
    group = group_values(RecordGroup(setting, default_method("tkmia"), 0, 0, records))
    np.testing.assert_array_equal(group.clean, clean)
    np.testing.assert_array_equal(group.adv, adv)
    rows = audit_groups([group], batch_sizes=[50], draws=300, threshold_draws=900)
    for row in rows:
        # half the images attacked move the batch mean by 0.5 · p: p80 well inside the grid
        assert row.p80 <= 0.5, row.statistic
        assert row.power_at(1.0) == 1.0, row.statistic


def test_the_audits_bootstrap_follows_its_seed(results, tmp_path) -> None:
    """``tkmia audit --seed``: the same seed gives the same power, another seed another."""

    def power(seed: int) -> list[str]:
        args = ["audit", str(results), "--batch-sizes", "6", "--draws", "100", "--no-figures"]
        assert main([*args, "--seed", str(seed)]) == 0
        return [r[c] for r in _csv(results / "audit.csv") for c in r if c.startswith("power")]

    first = power(1)
    assert power(1) == first
    assert power(2) != first
