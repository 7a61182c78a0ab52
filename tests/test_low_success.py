"""A run that mostly fails says so (issue 35, E): the API warns with the figure and what
to try; ``tkmia run`` prints one line per summary row below one half."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest

from tkmia.attacks import TkMIA
from tkmia.cli.run import warn_low_success
from tkmia.errors import LowSuccessWarning

from _toys import make_cnn, make_problem


def test_the_api_warns_below_one_half_and_not_above() -> None:
    model = make_cnn(c=8)
    x, y, s = make_problem(model, 4, 2, n_relevant=4)
    with pytest.warns(LowSuccessWarning, match=r"TkMIA succeeded on 0% of 4 images .*max_iter"):
        res = TkMIA(model, k=2, max_iter=1)(x, y, s)  # one step: nothing can succeed
    assert not res.success.any()
    with warnings.catch_warnings():
        warnings.simplefilter("error", LowSuccessWarning)
        res = TkMIA(model, k=2, lr=1.0, max_iter=300)(x, y, s)
    assert res.success.float().mean() >= 0.5


def test_the_cli_prints_one_line_per_failing_row(capsys: pytest.CaptureFixture[str]) -> None:
    row = {"method_title": "TkMIA", "setting_title": "S2 k=2 n=1", "attacked": 40}
    rows = [
        SimpleNamespace(**row, success_rate=0.25),
        SimpleNamespace(**row, success_rate=0.5),
        SimpleNamespace(**(row | {"attacked": 0}), success_rate=0.0),
    ]
    warn_low_success(rows)  # type: ignore[arg-type]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("tkmia run: warning: TkMIA on S2 k=2 n=1 succeeded on 25% of 40")


def test_to_records_is_one_plain_dict_per_image() -> None:
    model = make_cnn(c=8)
    x, y, s = make_problem(model, 3, 2, n_relevant=4)
    res = TkMIA(model, k=2, lr=1.0, max_iter=50)(x, y, s)
    records = res.to_records(x, k=2)
    assert len(records) == 3
    for i, rec in enumerate(records):
        assert rec["index"] == i and rec["success"] is bool(res.success[i])
        assert rec["iterations"] == int(res.iterations[i])
        assert rec["specified"] == [j for j in range(8) if s[i, j]]
        ref = float(((res.adv_images[i].double() - x[i].double()) ** 2).sum().sqrt())
        assert abs(rec["l2"] - ref) < 1e-9
        order = sorted(range(8), key=lambda j: -float(res.adv_scores[i, j]))
        assert rec["adv_topk"] == order[:2]
    assert set(res.to_records()[0]) == {"index", "success", "iterations", "required", "specified"}
