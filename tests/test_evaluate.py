"""`tkmia evaluate`'s protocol (SPEC §7.7): monotone in ε by construction, the ensemble's
worst case at most each attack's per image, the robust measures from the records, resuming,
growing a folder with more attacks, and the options object."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from tkmia.errors import InputError
from tkmia.experiments.evaluate import (
    ATTACKS,
    ENSEMBLE,
    EvaluateConfig,
    ensemble_log,
    evaluate,
    robust_rows,
)
from tkmia.experiments.records import check_indexed, read_records

from _toys import make_cnn

C, K = 10, 3


class _Toy:
    """A dataset of 7 random images whose relevant labels are the model's clean top-4."""

    classes = [f"l{i}" for i in range(C)]

    def __init__(self) -> None:
        model = make_cnn(C)
        g = torch.Generator().manual_seed(2)
        self.x = torch.rand(7, 3, 16, 16, generator=g)
        with torch.no_grad():
            order = model(self.x).argsort(dim=1, descending=True)
        self.y = torch.zeros(7, C)
        self.y.scatter_(1, order[:, :4], 1)

    def __len__(self) -> int:
        return 7

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


def _records(path):  # noqa: ANN001, ANN202
    """An evaluation records file, read back with the check every record passes."""
    return read_records(path, check=check_indexed)


def _config(**kw: object) -> EvaluateConfig:
    base: dict[str, object] = dict(
        dataset="toy", model="cnn", split="test", k=K, norm="linf",
        eps=(1 / 255, 3 / 255, 6 / 255), attacks=tuple(ATTACKS), iterations=6, restarts=1,
        queries=25, samples=5, seed=0, batch_size=3,
    )  # fmt: skip
    return EvaluateConfig(**(base | kw))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, EvaluateConfig]:
    out = tmp_path_factory.mktemp("evaluate")
    config = _config()
    evaluate(config, make_cnn(C), _Toy(), out)
    return out, config


def test_monotone_in_eps_and_the_ensemble_is_at_most_each_attack(
    folder: tuple[Path, EvaluateConfig],
) -> None:
    out, config = folder
    per_attack = {}
    for name in config.attacks:
        recs = _records(out / "records" / f"{name}.jsonl")
        assert sorted(r["index"] for r in recs) == list(range(5))
        for r in recs:
            assert r["hits"] == sorted(r["hits"], reverse=True)  # never rises with ε
            assert all(h <= f for h, f in zip(r["hits"], r["found"], strict=True))
            assert all(h <= r["clean_hits"] for h in r["hits"])
            assert max(r["linf"]) <= config.eps[-1]
        per_attack[name] = {r["index"]: r["hits"] for r in recs}
    log = ensemble_log(out, config)
    assert len(log) == 5 * len(config.eps)
    for entry in log:
        j = config.eps.index(entry["eps"])
        mine = [per_attack[a][entry["index"]][j] for a in config.attacks]
        assert entry["hits"] == min(mine)
        if entry["set_by"] != "-":
            assert per_attack[entry["set_by"]][entry["index"]][j] == entry["hits"]
    rows = robust_rows(out, config)
    for name in [*config.attacks, ENSEMBLE]:
        curve = [r.precision for r in rows if r.attack == name]
        assert len(curve) == len(config.eps)
        assert curve == sorted(curve, reverse=True)
        assert curve[0] <= rows[0].precision  # the clean row, ε = 0
    for eps in config.eps:
        at = {r.attack: r for r in rows if r.eps == eps}
        assert all(at[ENSEMBLE].precision <= at[a].precision for a in config.attacks)


def test_robust_measures_from_the_records_by_hand(folder: tuple[Path, EvaluateConfig]) -> None:
    out, config = folder
    recs = _records(out / "records" / "square.jsonl")
    rows = [r for r in robust_rows(out, config) if r.attack == "square"]
    for j, row in enumerate(rows):
        hits = [r["hits"][j] for r in recs]
        assert row.precision == pytest.approx(sum(hits) / (K * 5))
        assert row.recall == pytest.approx(sum(hits) / sum(r["n_relevant"] for r in recs))
        assert row.hidden == pytest.approx(sum(h == 0 for h in hits) / 5)
        assert row.queries == pytest.approx(sum(r["queries"][j] for r in recs) / 5)


def test_resume_and_equal_seeds_give_the_same_records(
    folder: tuple[Path, EvaluateConfig], tmp_path: Path
) -> None:
    out, config = folder
    again = tmp_path / "again"
    evaluate(config, make_cnn(C), _Toy(), again)
    path = again / "records" / "apgd-margin.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:3]) + lines[3][:10])  # interrupted in the middle of a line
    evaluate(config, make_cnn(C), _Toy(), again)
    for name in config.attacks:

        def strip(recs: list[dict]) -> list[dict]:
            return sorted(({k: v for k, v in r.items() if k != "seconds"} for r in recs),
                          key=lambda r: r["index"])  # fmt: skip

        mine = strip(_records(again / "records" / f"{name}.jsonl"))
        theirs = strip(_records(out / "records" / f"{name}.jsonl"))
        assert len(mine) == len(theirs) == 5
        for a, b in zip(mine, theirs, strict=True):
            assert a["hits"] == b["hits"] and a["queries"] == b["queries"]


def test_more_attacks_extend_a_folder_and_another_grid_is_refused(tmp_path: Path) -> None:
    first = _config(attacks=("apgd-margin",), samples=2)
    evaluate(first, make_cnn(C), _Toy(), tmp_path)
    evaluate(_config(attacks=("apgd-margin", "square"), samples=2), make_cnn(C), _Toy(), tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["methods"] == [
        "apgd-margin",
        "square",
    ]
    with pytest.raises(InputError, match="different run configuration"):
        evaluate(_config(eps=(2 / 255,), samples=2), make_cnn(C), _Toy(), tmp_path)


def _options(**flags: object) -> object:
    from tkmia.cli.evaluate import evaluate_options

    return evaluate_options({key: value for key, value in flags.items()})


def test_options_object_defaults_and_fractions(tmp_path: Path) -> None:
    from tkmia.cli.evaluate import EvaluateOptions

    opts = _options(out=tmp_path / "o", eps=["8/255", "4/255", "4/255"])
    assert isinstance(opts, EvaluateOptions)
    assert opts.eps == (4 / 255, 8 / 255) and opts.norm == "linf" and opts.queries == 5000
    assert opts.attacks == tuple(ATTACKS) and opts.split == "test"
    with pytest.raises(AttributeError):
        opts.k = 2  # type: ignore[misc]  # frozen
    l2 = _options(out=tmp_path / "o", norm="l2", attacks=["square", "apgd-margin"])
    assert l2.eps == (0.5, 1.0) and l2.attacks == ("apgd-margin", "square")  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        ({"eps": ["0"]}, "--eps must be positive"),
        ({"eps": ["eight"]}, "--eps must be numbers or fractions"),
        ({"eps": ["1/0"]}, "--eps must be numbers"),
        ({"norm": "l1"}, "--norm must be one of"),
        ({"attacks": ["fab"]}, "--attacks must be one of"),
        ({"queries": 1}, "--queries must be an integer >= 2"),
        ({"dataset": "voc2012"}, "needs --model"),
    ],
)
def test_bad_options_are_one_clear_error(flags: dict, match: str, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=match):
        _options(out=tmp_path / "o", **flags)


def test_the_command_is_registered() -> None:
    from tkmia.cli import build_parser

    args = build_parser().parse_args(["evaluate", "--eps", "4/255,8/255", "--norm", "l2"])
    assert isinstance(args, argparse.Namespace) and args.eps == ["4/255", "8/255"]


class _Erratic:
    """An attack that finds ê = 0 at the smallest ε only and ignores its start point: the
    evaluation alone must keep the curve monotone."""

    def __init__(self, smallest: float) -> None:
        self.smallest = smallest

    def __call__(self, images, labels, eps, indices=None, start=None):  # noqa: ANN001, ANN204
        from tkmia.attacks.budget import BudgetResult

        clean = torch.full((images.shape[0],), 2)
        found = torch.zeros_like(clean) if eps == self.smallest else clean
        scores = torch.zeros(images.shape[0], C)
        return BudgetResult(images, scores, scores, found, clean, torch.ones_like(clean))


def test_the_evaluation_keeps_the_curve_monotone_whatever_the_attack_finds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tkmia.experiments.evaluate as module

    config = _config(attacks=("apgd-margin",), samples=3)
    monkeypatch.setattr(module, "build_attack", lambda *a: _Erratic(config.eps[0]))
    evaluate(config, make_cnn(C), _Toy(), tmp_path)
    for rec in _records(tmp_path / "records" / "apgd-margin.jsonl"):
        assert rec["found"] == [0, 2, 2] and rec["hits"] == [0, 0, 0]
