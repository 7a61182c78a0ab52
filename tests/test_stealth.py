"""Monitor-imperceptible success (``success="stealth"``, SPEC §7.6): the permuted target,
the clean IQR, the rule on every iterate, and what a run's records claim."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from tkmia.attacks import TkMIA, TkMLAPU
from tkmia.attacks.stealth import permuted_target
from tkmia.cli import main
from tkmia.errors import InputError
from tkmia.experiments.records import read_all_records
from tkmia.experiments.runner import RunConfig, run
from tkmia.experiments.settings import MethodConfig, Setting
from tkmia.metrics import topk_mask
from tkmia.score_stats import LABEL_FREE_NAMES, label_free_iqr, label_free_stats

from _toys import TopKDataset, make_cnn, make_problem

K = 3


class Scaled(nn.Module):
    """The toy CNN's logits times 30: spread like a trained model's (the random CNN's are
    within a few hundredths of each other, so no two images differ in their count above
    0.5 and the margin's IQR is 0.02)."""

    def __init__(self) -> None:
        super().__init__()
        self.model = make_cnn()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * 30.0


def test_permuted_target_moves_the_specified_labels_out_and_keeps_the_sorted_scores() -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(50, 10, generator=g, dtype=torch.float64)
    order = scores.argsort(dim=1, descending=True)
    labels = torch.zeros(50, 10, dtype=torch.bool)
    labels.scatter_(1, order[:, [0, 1, 2, 5, 7]], True)  # relevant: ranks 1-3, 6 and 8
    specified = torch.zeros_like(labels)
    specified.scatter_(1, order[:, [0, 2]], True)  # two specified labels in the top-3
    max_left = torch.tensor([0, 1] * 25)  # S1-like (both leave) and S2 with t = 1
    target = permuted_target(scores, labels, specified, max_left, K)
    assert torch.equal(target.sort(dim=1).values, scores.sort(dim=1).values)
    assert torch.equal(label_free_stats(target, K), label_free_stats(scores, K))
    in_top = (specified & topk_mask(target, K)).sum(dim=1)
    assert torch.equal(in_top, max_left)
    # the relevant labels outside the top-3 enter first (ranks 6, then 8): none is lost
    hits = (labels & topk_mask(target, K)).sum(dim=1)
    assert torch.equal(hits, torch.full((50,), K))
    # t = 1: the lower-ranked specified label (rank 3) leaves, rank 1 keeps its score
    rows = torch.arange(1, 50, 2)
    assert torch.equal(target[rows, order[rows, 0]], scores[rows, order[rows, 0]])


def test_label_free_iqr_matches_numpy() -> None:
    scores = torch.randn(37, 10, generator=torch.Generator().manual_seed(1))
    stats = label_free_stats(scores.double(), K).numpy()
    ref = np.percentile(stats, 75, axis=0) - np.percentile(stats, 25, axis=0)
    assert np.allclose(label_free_iqr(scores, K).numpy(), ref, rtol=0, atol=1e-12)
    with pytest.raises(InputError, match="at least one image"):
        label_free_iqr(scores[:0], K)


class Recorder(nn.Module):
    """Keeps the scores of every forward pass (the attack's trajectory)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.seen = model, []  # type: ignore[var-annotated]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        self.seen.append(out.detach().clone())
        return out


@pytest.fixture(scope="module")
def problem():
    model = Scaled().eval()
    x, y, s = make_problem(model, 12, K, n_relevant=5, n_specified=1, seed=3)
    with torch.no_grad():
        iqr = label_free_iqr(model(x), K)
    return model, x, y, s, iqr


def _check_claims(atk, result, y, iqr) -> None:
    """Every success meets every condition it claims, recomputed from its scores."""
    ok = result.success
    assert ok.any()
    removed = (result.specified & topk_mask(result.clean_scores, K)).sum(dim=1) - (
        result.specified & topk_mask(result.adv_scores, K)
    ).sum(dim=1)
    assert bool((removed[ok] >= result.required[ok]).all())
    gap = (label_free_stats(result.adv_scores, K) - label_free_stats(result.clean_scores, K)).abs()
    assert bool((gap[ok] <= atk.rho * iqr.float() + 1e-6).all())
    if atk.preserve:
        hits = lambda s: (y.bool() & topk_mask(s, K)).sum(dim=1)  # noqa: E731
        assert bool((hits(result.adv_scores)[ok] >= hits(result.clean_scores)[ok]).all())


@pytest.mark.parametrize("success", ["stealth", "preserve+stealth"])
def test_stealth_successes_meet_their_claims_and_imply_the_paper_rule(problem, success) -> None:
    model, x, y, s, iqr = problem
    rec = Recorder(model)
    atk = TkMIA(rec, K, lr=0.5, lam=1e-3, max_iter=60, success=success)
    atk.set_stealth_reference(iqr, rho=0.25)
    result = atk(x, y, s, batch_size=5)
    _check_claims(atk, result, y, iqr)
    assert result.success.float().mean() >= 0.9
    # every iterate of one image's trajectory: the stealth rule never holds where §5's
    # fails (one image per call, so every forward pass after the first is its iterate)
    paper = TkMIA(model, K)
    implied = 0
    for i in range(4):
        rec.seen = []
        args = (y[i : i + 1].bool(), s[i : i + 1].bool())
        one = atk(x[i : i + 1], *args)
        clean, stats = one.clean_scores, label_free_stats(one.clean_scores, K)
        bound, hits = atk.bounds(clean, *args, one.required)
        p_bound, p_hits = paper.bounds(clean, *args, one.required)
        for scores in rec.seen[1:]:
            strict = atk.rule(scores, *args, bound, hits, stats)
            loose = paper.rule(scores, *args, p_bound, p_hits, stats)
            assert not bool(strict & ~loose)
            implied += int(strict)
        assert implied > 0 or not one.success.any()
    assert implied > 0


def test_stealth_needs_its_reference_and_checks_it(problem) -> None:
    model, x, y, s, iqr = problem
    with pytest.raises(InputError, match="set_stealth_reference"):
        TkMIA(model, K, success="stealth")(x, y, s)
    with pytest.raises(InputError, match="4 finite numbers"):
        TkMIA(model, K, success="stealth").set_stealth_reference([1.0, 2.0])
    with pytest.raises(InputError, match="rho"):
        TkMIA(model, K, success="stealth").set_stealth_reference(iqr, rho=-1)
    # every attack takes the rule (its objective unchanged): the baseline's claims hold too
    base = TkMLAPU(model, K, lr=0.5, lam=1e-3, max_iter=20, success="stealth")
    base.set_stealth_reference(iqr, rho=100.0)  # a loose band: some succeed
    _check_claims(base, base(x, y, s), y, iqr)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    model = Scaled().eval()
    data = TopKDataset(model, n=40, seed=2)
    methods = [
        MethodConfig("tkmia", max_iter=40, lr=0.5, lam=1e-3),
        MethodConfig("tkmia", max_iter=40, lr=0.5, lam=1e-3, success_rule="stealth"),
    ]
    config = RunConfig("toy", "cnn", [Setting("random", K, n=1)], methods, samples=16, seed=0,
                       batch_size=8, examples=0, extra={"classes": data.classes})  # fmt: skip
    out = tmp_path_factory.mktemp("stealth")
    run(config, model, data, out, progress=False)
    return out, methods


def test_run_records_meet_the_claims_with_the_clean_iqr(folder) -> None:
    out, (paper, stealth) = folder
    sdir = out / "records" / "random-k3-n1-t1"
    ref = json.loads((sdir / "stealth.json").read_text())
    got = read_all_records(sdir, stealth.key)
    plain = {r["index"]: r for r in read_all_records(sdir, paper.key)}
    assert len(got) == 16 and ref["images"] == 16
    for name in LABEL_FREE_NAMES:  # the IQR of the clean images only, as numpy has it
        clean = np.array([r[f"{name}_clean"] for r in got])
        iqr = np.percentile(clean, 75) - np.percentile(clean, 25)
        assert ref["iqr"][name] == pytest.approx(iqr, abs=1e-6)
    assert any(r["success"] for r in got)
    for r in got:
        if r["success"]:
            assert r["delta_n"] >= r["required"] and plain[r["index"]]["success"]
            for name in LABEL_FREE_NAMES:
                gap = abs(r[f"{name}_adv"] - r[f"{name}_clean"])
                assert gap <= ref["rho"] * ref["iqr"][name] + 1e-6, (name, r)


def test_equal_seeds_give_equal_audits(folder, tmp_path) -> None:
    out, _ = folder
    args = ["--batch-sizes", "8", "--draws", "100", "--no-figures", "--seed", "7"]
    assert main(["audit", str(out), *args]) == 0
    first = [(out / n).read_bytes() for n in ("audit.csv", "audit-learned.csv")]
    assert main(["audit", str(out), *args]) == 0
    assert [(out / n).read_bytes() for n in ("audit.csv", "audit-learned.csv")] == first
    assert b"tkmia-lr0.5-lam0.001-it40-succstealth" in first[0]
