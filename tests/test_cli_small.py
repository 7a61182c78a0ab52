"""Small CLI fixes of issue 35: no abbreviated flags, a suggestion for a misspelled one,
and the whole description in ``tkmia --help``."""

from __future__ import annotations

import pytest

from tkmia.cli import main


def test_an_abbreviated_flag_is_refused_with_a_suggestion(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["run", "--method", "tkmia", "--sampels", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "unrecognized arguments: --method tkmia --sampels 3" in err[0]
    assert "--method: did you mean --methods" in err[0]
    assert "--sampels: did you mean --samples" in err[0]
    assert main(["audit", "results", "--draw", "30"]) == 2
    assert "did you mean --draws" in capsys.readouterr().err


def test_the_help_description_is_whole(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "`tkmia audit`, `tkmia evaluate`, `tkmia certify`." in out
