"""SPEC §7.1–7.3 in a run: records, summary columns, the targeted scheme, the CLI."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from test_runner import C, K, ToyDataset
from tkmia.cli.run import build_methods, build_settings
from tkmia.data.digits import CLASSES as DIGITS_CLASSES
from tkmia.errors import InputError
from tkmia.experiments.records import read_all_records
from tkmia.experiments.runner import RunConfig, run
from tkmia.experiments.settings import MethodConfig, Setting
from tkmia.experiments.summary import read_summary
from tkmia.metrics import topk_mask
from tkmia.protocol import select_targets

from _toys import make_cnn

TK = {"lr": 5.0, "lam": 1e-3, "max_iter": 30}


class WaitingDataset(ToyDataset):
    """Labels: the toy model's top-6 but its 4th: an irrelevant label waits just below the
    clean top-3, ready to take the place of a hidden label (so the paper's rule lets P@k
    drop)."""

    def __init__(self, model, n: int = 12) -> None:
        super().__init__(model, n)
        with torch.no_grad():
            top = model(self.images).topk(6, dim=1).indices
        self.labels = torch.zeros(n, C).scatter_(1, top, 1)
        self.labels[torch.arange(n), top[:, K]] = 0


def test_preserve_and_8_bit_records_in_a_run(tmp_path) -> None:
    """Every image that TkMIA with ``preserve`` reports successful keeps TkAcc and P@k;
    with ``quantize=8`` the 8-bit success is the success; both have their own rows and
    keys, and the summary says the rule and the bits."""
    model = make_cnn()
    methods = [
        MethodConfig("tkmia", **TK),
        MethodConfig("tkmia", **TK, success_rule="preserve"),
        MethodConfig("tkmia", **TK, quantize=8),
    ]
    config = RunConfig("toy", "cnn", [Setting("random", K, n=1)], methods, 8, 0, 4)
    config.method_samples = {methods[2].key: 5}  # the 8-bit variant: its first 5 images
    rows = run(config, model, WaitingDataset(model), tmp_path, progress=False)
    assert [m.key for m in methods] == [
        "tkmia-lr5-lam0.001-it30",
        "tkmia-lr5-lam0.001-it30-succpreserve",
        "tkmia-lr5-lam0.001-it30-q8",
    ]
    folder = tmp_path / "records" / "random-k3-n1-t1"
    paper, keep, q8 = (read_all_records(folder, m.key) for m in methods)
    dropped = [r for r in paper if r["success"] and r["p_at_k_adv"] < r["p_at_k_clean"]]
    assert dropped  # the paper's rule lets P@k drop on this toy ...
    assert any(r["success"] for r in keep)  # ... preserve succeeds without a drop
    for rec in keep:
        if rec["success"]:
            assert rec["tkacc_adv"] >= rec["tkacc_clean"]
            assert rec["p_at_k_adv"] >= rec["p_at_k_clean"]
    assert [r["index"] for r in q8] == [r["index"] for r in paper][:5]
    assert [r.attacked for r in rows] == [8, 8, 5]
    assert any(r["success"] for r in q8)
    assert all(r["success_uint8"] == r["success"] for r in q8)
    with (tmp_path / "summary.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert [(r["success_rule"], r["quantize"]) for r in table] == [
        ("paper", "0"),
        ("preserve", "0"),
        ("paper", "8"),
    ]
    back = read_summary(tmp_path / "summary.csv")
    assert [r.config for r in back] == methods
    assert [r.method_title for r in rows] == ["TkMIA", "TkMIA (preserve)", "TkMIA (8-bit)"]


def test_targeted_method_runs_on_the_targeted_settings_only(tmp_path) -> None:
    model = make_cnn()
    data = ToyDataset(model)
    settings = [Setting("random", K, n=1), Setting("targeted", K, group="random", n=1)]
    methods = [
        MethodConfig("tkmia", lr=5.0, lam=1e-3, max_iter=10),
        MethodConfig("tkmlapt", lr=50.0, lam=1e-5, max_iter=20, tie=0.0),
    ]
    config = RunConfig("toy", "cnn", settings, methods, 6, 0, 6)
    rows = run(config, model, data, tmp_path, progress=False)
    assert [(r.setting_key, r.method_key) for r in rows] == [
        ("random-k3-n1-t1", "tkmia-lr5-lam0.001-it10"),
        ("targeted-k3-n1-random", "tkmlapt-lr50-lam1e-05-it20"),
    ]
    recs = read_all_records(tmp_path / "records" / "targeted-k3-n1-random", methods[1].key)
    assert len(recs) == 6 and any(r["success"] for r in recs)
    with torch.no_grad():
        scores = model(data.images)
    for rec in recs:
        i, (target,) = rec["index"], rec["specified"]
        assert data.labels[i, target] == 0  # a label outside Y
        in_clean = int(topk_mask(scores[i : i + 1], K)[0, target])
        assert rec["success"] == (rec["delta_n"] == in_clean - 1)  # it entered the top-k
        assert rec["success_uint8"] in (True, False)
    back = read_summary(tmp_path / "summary.csv")
    assert [r.setting.key for r in back] == [s.key for s in settings]
    assert back[1].setting == settings[1]
    assert back[1].setting_title == "toy · targeted · random targets · n=1 · k=3"


@pytest.mark.parametrize("choice", ["random", "best", "worst"])
def test_targets_are_chosen_as_spec_7_3_says(choice) -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(30, C, generator=g)
    labels = (torch.rand(30, C, generator=g) < 0.4).float()
    labels[0] = 1  # no label outside Y: never eligible
    n, seed = 2, 7
    targets, eligible = select_targets(labels, scores, n, K, choice, seed, range(100, 130))
    for i in range(30):
        y = set(torch.nonzero(labels[i]).flatten().tolist())
        top = set(scores[i].topk(K).indices.tolist())
        pool = [j for j in range(C) if j not in y and (choice != "best" or j not in top)]
        assert bool(eligible[i]) == (len(pool) >= n)
        if not eligible[i]:
            assert not targets[i].any()
            continue
        got = set(torch.nonzero(targets[i]).flatten().tolist())
        ranked = sorted(pool, key=lambda j: float(scores[i, j]), reverse=choice == "best")
        if choice == "random":
            draw = np.random.default_rng([seed, 100 + i]).choice(len(pool), size=n, replace=False)
            assert got == {pool[int(j)] for j in draw}
        else:
            assert got == set(ranked[:n])
    # the draw of an image does not depend on its batch mates
    alone, _ = select_targets(labels[5:6], scores[5:6], n, K, choice, seed, [105])
    assert torch.equal(alone[0], targets[5])


def test_the_cli_builds_targeted_settings_and_the_default_variants() -> None:
    classes = list(DIGITS_CLASSES)
    opts = {"methods": ["tkmlapt"], "targets": ["random", "best"], "n": [1], "k": [3]}
    keys = [s.key for s in build_settings(opts, "digits", classes)]
    assert keys == ["targeted-k3-n1-random", "targeted-k3-n1-best"]
    both = [
        s.key for s in build_settings(opts | {"methods": ["tkmia", "tkmlapt"]}, "digits", classes)
    ]
    assert both[-2:] == keys and "random-k3-n1-t1" in both
    default = [c.key for c in build_methods({})]
    assert default[:3] == [
        "tkmia-lr0.0001-lam0.001-it300",
        "tkmia-lr0.0001-lam0.001-it300-succpreserve",
        "tkmia-lr0.0001-lam0.001-it300-q8",
    ]
    assert not any(k.startswith("tkmlapt") for k in default) and len(default) == 6
    assert len(build_methods({"dataset": "voc2012"})) == 4
    assert len(build_methods({"lr": [1e-4]})) == 4  # a grid is not the built-in benchmark
    with pytest.raises(InputError, match="targets must be one of"):
        build_settings(opts | {"targets": ["near"]}, "digits", classes)
