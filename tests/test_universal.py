"""Universal TkMIA (SPEC §7.4): the fit, its projection, evaluation, resuming, bad input,
and `tkmia universal` end to end on a small slice of the built-in benchmark."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import tkmia.data.digits
from tkmia.attacks import Universal
from tkmia.attacks.universal import load_delta, project_l2
from tkmia.cli import main
from tkmia.errors import InputError
from tkmia.experiments.settings import Setting
from tkmia.experiments.universal import UniversalConfig, run_universal
from tkmia.losses import tkmia_loss
from tkmia.metrics import ndcg_at_k, topk_accuracy

from _toys import TopKDataset, make_cnn, make_problem

K = 2


@pytest.fixture(scope="module")
def problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    model = make_cnn()
    x, labels, spec = make_problem(model, 48, K, n_relevant=5, n_specified=1, seed=3)
    return model, x, labels, spec


class Interrupting(nn.Module):
    """``model`` that raises KeyboardInterrupt on its ``after + 1``-th forward pass."""

    def __init__(self, model: nn.Module, after: int) -> None:
        super().__init__()
        self.model, self.after, self.calls = model, after, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > self.after:
            raise KeyboardInterrupt
        return self.model(x)


def test_projection_keeps_delta_in_the_ball(problem) -> None:
    g = torch.Generator().manual_seed(0)
    for scale in (0.1, 1.0, 10.0):
        d = torch.randn(3, 16, 16, generator=g) * scale
        p = project_l2(d, 2.0)
        assert float(p.norm()) <= 2.0 * (1 + 1e-6)
        if float(d.norm()) <= 2.0:
            assert torch.equal(p, d)  # inside: unchanged
        else:  # outside: the radial projection, the same direction
            assert torch.allclose(p, d * 2.0 / d.norm())
    model, x, labels, spec = problem
    # steps of 3·eps each: every step leaves the ball unless projected back
    atk = Universal(model, K, eps=0.5, lr=3.0, epochs=2, batch_size=8)
    delta = atk.fit(x, labels, spec)
    assert float(delta.norm()) == pytest.approx(0.5, rel=1e-5)


def test_fitted_delta_beats_random_deltas_of_the_same_norm(problem) -> None:
    model, x, labels, spec = problem
    atk = Universal(model, K, eps=3.0, lr=0.2, epochs=4, batch_size=16)
    delta = atk.fit(x, labels, spec)
    with torch.no_grad():

        def objective(d: torch.Tensor) -> float:  # SPEC §4 TkMIA at clip(x + d), mean
            return float(tkmia_loss(model((x + d).clamp(0, 1)), labels, spec, K).mean())

        fitted, clean = objective(delta), objective(torch.zeros_like(delta))
        g = torch.Generator().manual_seed(1)
        randoms = []
        for _ in range(8):
            r = torch.randn(delta.shape, generator=g)
            randoms.append(objective(r * delta.norm() / r.norm()))
    assert fitted < min(randoms) and fitted < clean, (fitted, clean, randoms)


def _written_out(objective: str, scores, labels, spec) -> torch.Tensor:
    """The per-image objective written out on sorted scores (SPEC §4): TkML-AP-U
    ``ATk_{c−k}(max_Y f − f)``; TkMIA ``ATk_{c−k}(max_S f − f) + ATk_k(f − min_R f)``,
    R = Y minus S (``ATk_m``: the mean of the m largest)."""
    c = scores.shape[1]
    hide_set = labels if objective == "tkmlapu" else spec
    gap = scores.masked_fill(hide_set == 0, -1e9).amax(1, keepdim=True) - scores
    hide = gap.sort(dim=1, descending=True).values[:, : c - K].mean(dim=1)
    if objective == "tkmlapu":
        return hide
    remaining = (labels == 1) & (spec == 0)
    lift = scores - scores.masked_fill(~remaining, 1e9).amin(1, keepdim=True)
    return hide + lift.sort(dim=1, descending=True).values[:, :K].mean(dim=1)


@pytest.mark.parametrize("objective", ["tkmlapu", "tkmia"])
def test_fit_is_the_projected_normalised_gradient_loop_written_out(problem, objective) -> None:
    """SPEC §7.4's fit by hand: epoch e visits the images in NumPy's permutation of
    (seed, e), each minibatch steps δ by lr·eps along −g/‖g‖ of the mean objective and
    projects onto the ball."""
    model, x, labels, spec = problem
    eps, lr, seed, bs = 1.5, 0.4, 7, 20
    delta = Universal(model, K, objective, eps, lr, 2, bs, seed).fit(x, labels, spec)
    d = torch.zeros(3, 16, 16)
    for epoch in range(2):
        order = np.random.default_rng([seed, epoch]).permutation(x.shape[0]).tolist()
        for start in range(0, len(order), bs):
            rows = order[start : start + bs]
            leaf = d.clone().requires_grad_(True)
            scores = model((x[rows] + leaf).clamp(0, 1))
            loss = _written_out(objective, scores, labels[rows], spec[rows]).mean()
            (g,) = torch.autograd.grad(loss, leaf)
            d = d - lr * eps * g / g.norm()
            d = d * min(1.0, eps / float(d.norm()))
    assert torch.allclose(delta, d, atol=1e-5), float((delta - d).abs().max())


def test_evaluate_equals_scoring_the_clipped_images_by_hand(problem) -> None:
    model, x, labels, spec = problem
    # the second half: both top-2 labels specified, so success needs ΔN = 2, not 1
    spec = torch.cat([spec[:24], make_problem(model, 48, K, 5, 2, seed=3)[2][24:]])
    delta = Universal(model, K, eps=2.0, lr=0.2, epochs=3, batch_size=16).fit(x, labels, spec)
    atk = Universal(model, K, eps=2.0, batch_size=x.shape[0])
    res = atk.evaluate(delta, x, labels, spec)
    adv = (x + delta).clamp(0, 1)
    with torch.no_grad():
        clean_scores, adv_scores = model(x), model(adv)
    assert torch.equal(res.adv_images, adv)
    assert torch.allclose(res.adv_scores, adv_scores, atol=1e-6)
    assert torch.allclose(res.clean_scores, clean_scores, atol=1e-6)
    expected = []
    for i in range(x.shape[0]):  # S1: every specified label of the clean top-k has left it
        before = set(clean_scores[i].argsort(descending=True)[:K].tolist())
        after = set(adv_scores[i].argsort(descending=True)[:K].tolist())
        hidden = {j for j in torch.nonzero(spec[i]).flatten().tolist() if j in before}
        expected.append(not (hidden & after))
    assert res.success.tolist() == expected
    assert 0 < sum(expected) < len(expected)  # both outcomes occur: the rule is exercised
    assert res.required.tolist() == [1] * 24 + [2] * 24
    m = res.measures
    assert torch.equal(m["ndcg_at_k_adv"], ndcg_at_k(res.adv_scores, labels, K))
    assert torch.equal(m["tkacc_clean"], topk_accuracy(res.clean_scores, labels, K))
    assert m["delta_n"].tolist() == [
        len(set(torch.nonzero(spec[i]).flatten().tolist()) & set(s.topk(K).indices.tolist()))
        - len(set(torch.nonzero(spec[i]).flatten().tolist()) & set(a.topk(K).indices.tolist()))
        for i, (s, a) in enumerate(zip(clean_scores, adv_scores, strict=True))
    ]


def test_resume_after_an_interrupted_fit_gives_the_uninterrupted_delta(
    problem, tmp_path: Path
) -> None:
    model, x, labels, spec = problem
    args = {"eps": 2.0, "lr": 0.3, "epochs": 3, "batch_size": 16, "seed": 5}
    whole = Universal(model, K, **args).fit(x, labels, spec)
    path = tmp_path / "delta.safetensors"
    meta = {"model": "toy", "dataset": "toys", "group": "g"}
    steps = x.shape[0] // 16
    broken = Universal(Interrupting(model, after=steps + 1), K, **args)
    with pytest.raises(KeyboardInterrupt):
        broken.fit(x, labels, spec, checkpoint=path, meta=meta)
    saved, info = load_delta(path)
    assert info["epoch"] == 1
    for key, value in (meta | {"k": K, "eps": 2.0, "objective": "tkmia"}).items():
        assert info[key] == value
    resumed = Universal(model, K, **args).fit(x, labels, spec, checkpoint=path, meta=meta)
    assert torch.equal(resumed, whole)
    assert load_delta(path)[1]["epoch"] == 3
    again = Universal(model, K, **args).fit(x, labels, spec)  # deterministic for a seed
    assert torch.equal(again, whole)
    with pytest.raises(InputError, match="other settings.*eps"):
        Universal(model, K, **(args | {"eps": 1.0})).fit(x, labels, spec, checkpoint=path)


def test_bad_input_is_an_input_error(problem) -> None:
    model, x, labels, spec = problem
    for bad in (0.0, -1.0):
        with pytest.raises(InputError, match="eps must be a number > 0"):
            Universal(model, K, eps=bad)
    with pytest.raises(InputError, match="objective must be one of"):
        Universal(model, K, objective="kfool")
    atk = Universal(model, K, epochs=1)
    with pytest.raises(InputError, match="no images given"):
        atk.fit(x[:0], labels[:0], spec[:0])
    small = torch.rand(4, 3, 8, 8)
    with pytest.raises(InputError, match="first chunk's device, dtype, image shape"):
        atk.fit([(x[:4], labels[:4], spec[:4]), (small, labels[:4], spec[:4])])
    with pytest.raises(InputError, match=r"delta must have the images' shape \(C, H, W\)"):
        atk.evaluate(torch.zeros(3, 8, 8), x, labels, spec)


def test_a_group_without_eligible_images_is_refused(tmp_path: Path) -> None:
    model = make_cnn()
    data = TopKDataset(model, 16, seed=0)  # 5 relevant labels per image, c = 10
    # k = 9 needs |Y| >= 9 + |S|: no image is eligible
    setting = Setting("global", 9, group="g", group_indices=(0, 1))
    config = UniversalConfig("toys", "cnn", [setting], ["tkmia"], [1.0], epochs=1)
    with pytest.raises(InputError, match="no eligible image in the train split"):
        run_universal(config, model, data, data, tmp_path / "out")


@pytest.fixture
def small_val(monkeypatch: pytest.MonkeyPatch) -> None:
    """The built-in val split cut to its first 300 images (fast to generate)."""
    monkeypatch.setitem(tkmia.data.digits.SPLIT_SIZES, "val", 300)


def _cli(tmp_path: Path, *extra: str) -> list[str]:
    return ["universal", "--fit-split", "val", "--split", "val", "--groups", "red_low",
            "--out", str(tmp_path / "u"), *extra]  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--eps", "0"], "--eps must be a positive number, got 0.0"),
        (["--eps", "2,-1"], "--eps must be a positive number, got -1.0"),
        (["--objectives", "tkmia,kfool"], "--objectives must be one of tkmia, tkmlapu"),
        (["--k", "19"], "no eligible image in the val split"),
    ],
)
def test_cli_mistakes_are_one_line_and_exit_2(tmp_path, capsys, small_val, flags, message) -> None:
    assert main(_cli(tmp_path, "--epochs", "1", *flags)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tkmia: error: ") and message in err, err


def test_cli_fits_evaluates_writes_and_resumes(tmp_path: Path, capsys, small_val) -> None:
    argv = _cli(tmp_path, "--k", "2", "--eps", "3", "--epochs", "1", "--fit-samples", "64",
                "--samples", "24", "--objectives", "tkmia", "--examples", "2")  # fmt: skip
    assert main(argv) == 0
    out = tmp_path / "u"
    lines = (out / "records/global-k2-red_low/tkmia-eps3.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    (row,) = list(csv.DictReader((out / "summary.csv").open()))
    assert len(records) == int(row["attacked"]) == 24
    assert int(row["n_fit"]) == 64 and row["objective"] == "tkmia" and float(row["eps"]) == 3
    success = sum(r["success"] for r in records) / 24
    assert float(row["universal_success"]) == pytest.approx(success, abs=1e-6)
    d_ndcg = sum(r["ndcg_at_k_clean"] - r["ndcg_at_k_adv"] for r in records) / 24
    assert float(row["d_ndcg_at_k"]) == pytest.approx(d_ndcg, abs=1e-5)
    assert max(r["l2"] for r in records) <= 3.0 + 1e-5
    delta, info = load_delta(out / "deltas/global-k2-red_low/tkmia-eps3.safetensors")
    assert info["epoch"] == 1 and info["group"] == "red_low" and info["model"] == "builtin"
    assert (out / "figures/universal-global-k2-red_low.png").is_file()
    assert "| TkMIA | 3 |" in (out / "summary.md").read_text()
    first = (out / "summary.csv").read_text()
    capsys.readouterr()
    assert main(["report", str(out)]) == 2  # a `tkmia run` renderer would crash on it
    assert "holds tkmia universal results" in capsys.readouterr().err
    assert main(argv) == 0  # the same command again reads the finished fit back
    assert (out / "summary.csv").read_text() == first


def test_config_file_keys_are_the_universal_flags(tmp_path: Path) -> None:
    from tkmia.cli.options import check_values, complete, load_config
    from tkmia.cli.universal import UNIVERSAL_OPTIONS

    path = tmp_path / "u.toml"
    path.write_text('eps = 3\nfit-samples = 50\nobjectives = ["tkmlapu"]\n')
    opts = complete(load_config(path, UNIVERSAL_OPTIONS), UNIVERSAL_OPTIONS)
    assert opts["eps"] == [3] and opts["fit_samples"] == 50 and opts["objectives"] == ["tkmlapu"]
    assert opts["lr"] == 0.1 and opts["epochs"] == 10 and opts["k"] == [2, 3]  # the defaults
    check_values(opts, UNIVERSAL_OPTIONS)
    path.write_text("methods = ['tkmia']\n")  # a `tkmia run` key
    with pytest.raises(InputError, match=r"unknown keys \['methods'\]"):
        load_config(path, UNIVERSAL_OPTIONS)
    with pytest.raises(InputError, match="--lr must be a positive number"):
        check_values({"lr": 0.0}, UNIVERSAL_OPTIONS)
