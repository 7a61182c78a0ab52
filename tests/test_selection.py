"""The selection rule of a hyper-parameter grid, and grids from flags and --config files."""

from __future__ import annotations

import math

import pytest

from tkmia.cli.options import load_config
from tkmia.cli.run import build_methods
from tkmia.errors import InputError
from tkmia.experiments.methods import method_spec
from tkmia.experiments.selection import (
    has_grid,
    load_rule,
    rule_text,
    save_rule,
    select_rows,
)
from tkmia.experiments.settings import MethodConfig, Setting
from tkmia.experiments.summary import PAPER_COLUMNS, SummaryRow, read_summary, write_summary


def _row(
    method="tkmia", lr=1e-3, lam=1e-3, it=100, success=0.5, aper=1.0, attacked=10, group="g", k=2
):
    """A summary row; the hyper-parameters the method lacks are left out."""
    params = {"lr": lr, "lam": lam, "max_iter": it, "overshoot": 0.0, "linearize": "image"}
    config = MethodConfig(
        method, **{n: v for n, v in params.items() if n in method_spec(method).defaults}
    )
    nan = math.nan
    return SummaryRow(
        "d", "m", Setting("global", k, group=group), config, attacked=attacked, skipped=0,
        success_rate=success, success_uint8=nan, d_tkacc=nan, d_p_at_k=nan, d_map_at_k=nan,
        d_ndcg_at_k=nan, delta_n=nan, mean_specified=nan, aper=aper, linf=nan, psnr=nan,
        ssim=nan, mean_iterations=nan, seconds=nan,
    )  # fmt: skip


def _pick(rows, **kw):
    chosen = select_rows(rows, **kw)
    return [
        (r.method, r.value("lr") or "", r.value("lam") or "", r.value("max_iter"), r.setting.group)
        for r in chosen
    ]


def test_highest_success_wins_outside_the_tolerance() -> None:
    rows = [_row(lr=1e-3, success=0.90, aper=0.5), _row(lr=5e-4, success=0.95, aper=2.0)]
    assert _pick(rows) == [("tkmia", 5e-4, 1e-3, 100, "g")]


def test_within_the_tolerance_the_smallest_aper_wins() -> None:
    rows = [
        _row(lr=1e-3, success=0.950, aper=2.0),
        _row(lr=5e-4, success=0.945, aper=1.0),  # within 0.01 of the best: smaller APer
        _row(lr=1e-4, success=0.930, aper=0.1),  # too far below the best
    ]
    assert _pick(rows) == [("tkmia", 5e-4, 1e-3, 100, "g")]
    assert _pick(rows, tol=0.0) == [("tkmia", 1e-3, 1e-3, 100, "g")]
    assert _pick(rows, tol=0.05) == [("tkmia", 1e-4, 1e-3, 100, "g")]
    # the tolerance is inclusive
    rows = [_row(lr=1e-3, success=0.96, aper=2.0), _row(lr=5e-4, success=0.95, aper=1.0)]
    assert _pick(rows, tol=0.01) == [("tkmia", 5e-4, 1e-3, 100, "g")]


def test_ties_go_to_smaller_max_iter_then_lr_then_lam() -> None:
    rows = [
        _row(lr=1e-3, lam=1e-3, it=300),
        _row(lr=1e-3, lam=5e-4, it=100),
        _row(lr=1e-4, lam=1e-3, it=100),
        _row(lr=1e-4, lam=5e-5, it=100),
    ]
    assert _pick(rows) == [("tkmia", 1e-4, 5e-5, 100, "g")]
    assert _pick(list(reversed(rows))) == [("tkmia", 1e-4, 5e-5, 100, "g")]
    kfool = [_row("kfool", it=300), _row("kfool", it=100)]
    assert _pick(kfool) == [("kfool", "", "", 100, "g")]


def test_no_success_has_no_aper_and_comes_last_and_empty_rows_are_never_selected() -> None:
    rows = [
        _row(lr=1e-3, success=0.0, aper=math.nan),
        _row(lr=5e-4, success=0.0, aper=3.0),
        _row(lr=1e-4, success=1.0, aper=0.1, attacked=0),  # attacked nothing
    ]
    assert _pick(rows) == [("tkmia", 5e-4, 1e-3, 100, "g")]
    assert select_rows([_row(attacked=0)]) == []


def test_one_choice_per_setting_and_method_in_row_order() -> None:
    rows = [
        _row(lr=1e-3, success=0.9, group="a"),
        _row(lr=5e-4, success=0.8, group="a"),
        _row("kfool", it=10, success=0.5, group="a"),
        _row(lr=1e-3, success=0.7, group="b"),
        _row(lr=5e-4, success=0.8, group="b"),
    ]
    assert _pick(rows) == [
        ("tkmia", 1e-3, 1e-3, 100, "a"),
        ("kfool", "", "", 10, "a"),
        ("tkmia", 5e-4, 1e-3, 100, "b"),
    ]


def test_scope_all_picks_one_configuration_per_method_from_the_means() -> None:
    rows = [
        _row(lr=1e-3, success=1.0, aper=1.0, group="a"),
        _row(lr=5e-4, success=0.9, aper=0.5, group="a"),
        _row(lr=1e-3, success=0.6, aper=1.0, group="b"),
        _row(lr=5e-4, success=0.9, aper=0.5, group="b"),
        _row("kfool", it=10, success=0.5, group="a"),
        _row("kfool", it=10, success=0.5, group="b"),
    ]
    # per setting: lr 1e-3 in a, 5e-4 in b; over all settings 5e-4 (mean 0.9 > 0.8)
    assert [c[1] for c in _pick(rows) if c[0] == "tkmia"] == [1e-3, 5e-4]
    assert _pick(rows, scope="all") == [
        ("tkmia", 5e-4, 1e-3, 100, "a"),
        ("tkmia", 5e-4, 1e-3, 100, "b"),
        ("kfool", "", "", 10, "a"),
        ("kfool", "", "", 10, "b"),
    ]


def test_rows_read_back_from_csv_select_the_same(tmp_path) -> None:
    rows = [
        _row(lr=1e-3, success=0.95, aper=2.0),
        _row(lr=5e-4, success=0.945, aper=1.0),
        _row("kfool", it=5, success=0.2, aper=float("nan")),
    ]
    path = write_summary(tmp_path, rows, name="s.csv")
    text_rows = read_summary(path)
    assert [r.cells()["lr"] for r in select_rows(text_rows)] == ["0.0005", ""]
    assert has_grid(text_rows) and not has_grid(text_rows[1:])


def test_rule_is_stated_stored_and_validated(tmp_path) -> None:
    assert rule_text() == "highest success rate; within 0.01 of it, the smallest APer"
    assert "all settings" in rule_text(tol=0.02, scope="all")
    assert load_rule(tmp_path) == {"rule": "success", "tol": 0.01, "scope": "setting"}
    save_rule(tmp_path, tol=0.05, scope="all")
    assert load_rule(tmp_path) == {"rule": "success", "tol": 0.05, "scope": "all"}
    for kw in ({"rule": "aper"}, {"tol": -0.1}, {"tol": 2}, {"scope": "method"}):
        with pytest.raises(InputError):
            select_rows([_row()], **kw)


def test_list_flags_and_a_toml_config_give_the_same_grid(tmp_path) -> None:
    from tkmia.cli import build_parser
    from tkmia.cli.options import resolve_options

    flags = build_parser().parse_args(
        ["run", "--methods", "tkmia,kfool", "--lr", "1e-3,5e-4", "--lam", "1e-3,5e-5",
         "--max-iter", "100,300", "--k", "2,3", "--select-tol", "0.02",
         "--select-scope", "all"]
    )  # fmt: skip
    toml = tmp_path / "grid.toml"
    toml.write_text(
        'methods = ["tkmia", "kfool"]\nlr = [1e-3, 5e-4]\nlam = [1e-3, 5e-5]\n'
        'max-iter = [100, 300]\nk = [2, 3]\nselect_tol = 0.02\nselect-scope = "all"\n'
        "skip_bad_images = true\n"
    )
    from_file = build_parser().parse_args(["run", "--config", str(toml)])
    a, b = resolve_options(flags), resolve_options(from_file)
    keys = {m.key for m in build_methods(a)}
    assert keys == {m.key for m in build_methods(b)}
    assert len(keys) == 2 * 2 * 2 + 2  # tkmia: lr x lam x max_iter; kfool: max_iter
    for key in ("k", "select_tol", "select_scope"):
        assert a[key] == b[key]
    assert b["skip_bad_images"] is True and "skip_bad_images" not in a
    assert load_config(toml)["lr"] == [1e-3, 5e-4]
    bad = tmp_path / "bad.toml"
    bad.write_text('select_tol = "high"\n')
    with pytest.raises(InputError, match="select_tol"):
        load_config(bad)


def test_a_grid_run_states_its_rule_and_writes_selected_csv(tmp_path, capsys) -> None:
    from tkmia.cli import main

    toml = tmp_path / "grid.toml"
    toml.write_text(
        'methods = ["tkmia", "kfool"]\nlr = [1e-3, 5e-4]\nmax_iter = [3, 6]\nk = 2\n'
        'scheme = "global"\ngroups = ["sevens"]\nsamples = 4\nselect_tol = 0.02\n'
        f'examples = 0\nout = "{(tmp_path / "res").as_posix()}"\n'
    )
    assert main(["run", "--config", str(toml), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "selected by rule: highest success rate; within 0.02 of it, the smallest APer" in (
        printed
    )
    out = tmp_path / "res"
    summary, selected = read_summary(out / "summary.csv"), read_summary(out / "selected.csv")
    assert len(summary) == 2 * 2 + 2 and len(selected) == 2
    assert (out / "selected.csv").read_text().splitlines()[0].split(",") == PAPER_COLUMNS
    assert all(row.cells() in [r.cells() for r in summary] for row in selected)
    expect = select_rows(summary, tol=0.02)
    assert [r.cells() for r in selected] == [r.cells() for r in expect]
    md = (out / "summary.md").read_text()
    assert md.count("** ✓") == 2 and "## Selected configurations" in md
    # `tkmia report` re-selects with another scope without touching the records
    assert main(["report", str(out), "--select-scope", "all"]) == 0
    assert "one configuration per method" in capsys.readouterr().out
