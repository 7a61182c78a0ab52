"""User mistakes at the command line (issue 8, point 1).

Every mistake gives exactly one line on stderr, ``tkmia: error: ...`` naming the bad value,
exit code 2, no traceback, and nothing written: validation happens before any image is
generated or read, any attack starts or any file is written. The cases run in-process
through :func:`tkmia.cli.main`; two of them also run as real ``python -m tkmia`` processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tkmia.cli.run
import tkmia.data.digits
import tkmia.experiments.runner
import tkmia.training
from tkmia.cli import main
from tkmia.data.voc import VOC_CLASSES
from tkmia.models import build_model, save_checkpoint

#: the exit code of every user mistake
USAGE = 2


class _Exploit:
    """Pickled, it runs ``exec``: loading it would create the file ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def _checkpoint(path: Path, classes: list[str]) -> Path:
    meta = {
        "arch": "digits_cnn",
        "classes": classes,
        "image_size": 48,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
    }
    return save_checkpoint(path, build_model(meta), meta)


def _make_files(tmp: Path) -> dict[str, str]:
    """The files the cases point at; returns the names used in the case templates."""
    five = _checkpoint(tmp / "five.safetensors", [f"label{i}" for i in range(5)])
    voc = _checkpoint(tmp / "vocnet.safetensors", list(VOC_CLASSES))
    evil = tmp / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Exploit(tmp / "PWNED")}, evil)
    # a pickle disguised as a safetensors checkpoint, with a valid sidecar
    evil_st = tmp / "evil.safetensors"
    evil_st.write_bytes(evil.read_bytes())
    evil_st.with_suffix(".json").write_text(voc.with_suffix(".json").read_text())
    bare = tmp / "bare.safetensors"
    bare.write_bytes(voc.read_bytes())  # no sidecar
    plain = tmp / "plain.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, plain)
    (tmp / "vocroot").mkdir()  # exists, but holds no VOCdevkit
    (tmp / "file.txt").write_text("a regular file\n")
    (tmp / "syntax.toml").write_text("k = [2, 3\nlr = \n")
    (tmp / "unknown.toml").write_text('k = [2]\ncolour = "red"\n')
    (tmp / "badtype.toml").write_text('lr = "fast"\n')
    (tmp / "badscheme.toml").write_text('scheme = "diagonal"\n')
    (tmp / "s2global.toml").write_text('n = 1\nscheme = "global"\n')
    (tmp / "kfoollr.toml").write_text('methods = ["kfool"]\nlr = 1e-3\n')
    return {
        "tmp": str(tmp),
        "five": str(five),
        "voc": str(voc),
        "evil": str(evil),
        "evil_st": str(evil_st),
        "bare": str(bare),
        "plain": str(plain),
    }


OUT = ["--out", "{tmp}/out"]

# (id, argv template, a substring the message must contain: the offending value)
CASES = [
    # --- tkmia run: the settings grid
    ("k-zero", ["run", "--k", "0"], "got 0"),
    ("k-equals-c", ["run", "--k", "20"], "c = 20, got 20"),
    ("k-above-c", ["run", "--k", "25", "--scheme", "global"], "got 25"),
    ("k-not-int", ["run", "--k", "two"], "'two'"),
    ("n-above-k", ["run", "--k", "2", "--n", "3", "--scheme", "random"], "k = 2, got 3"),
    ("n-zero", ["run", "--k", "2", "--n", "0"], "got 0"),
    ("threshold-above-n", ["run", "--k", "3", "--n", "2", "--threshold", "4"], "n = 2, got 4"),
    ("threshold-global", ["run", "--scheme", "global", "--threshold", "1"], "S2 only"),
    # --- options the chosen run would ignore (issue 22: a strict command line)
    ("n-with-global", ["run", "--n", "1", "--scheme", "global"], "--n applies to S2 only"),
    ("groups-with-random", ["run", "--groups", "sevens", "--scheme", "random"], "--groups"),
    ("image-size-digits", ["run", "--image-size", "32"], "--image-size does not apply"),
    ("root-digits", ["run", "--root", "{tmp}"], "--root does not apply to the built-in"),
    ("csv-not-folder", ["run", "--dataset", "voc2012", "--csv", "x.csv"], "--csv is the label"),
    ("split-folder", ["run", "--dataset", "folder", "--split", "val"], "--split does not"),
    ("lr-kfool-only", ["run", "--methods", "kfool", "--lr", "1e-3"], "--lr is a hyper-param"),
    ("config-n-global", ["run", "--config", "{tmp}/s2global.toml"], "key 'n' in config file"),
    ("config-lr-kfool", ["run", "--config", "{tmp}/kfoollr.toml"], "key 'lr' in config file"),
    ("unknown-scheme", ["run", "--scheme", "diagonal"], "'diagonal'"),
    ("unknown-method", ["run", "--methods", "tkmia,fgsm"], "'fgsm'"),
    ("unknown-group", ["run", "--groups", "unicorns"], "'unicorns'"),
    ("unknown-label", ["run", "--groups", "red_7+purple_3"], "'purple_3'"),
    # --- hyper-parameters and counts
    ("lr-zero", ["run", "--lr", "0"], "--lr must be a finite number > 0, got 0.0"),
    ("lr-negative", ["run", "--lr", "-0.5"], "-0.5"),
    ("lr-nan", ["run", "--lr", "nan"], "got nan"),
    ("lam-negative", ["run", "--lam", "-0.25"], "-0.25"),
    ("lam-inf", ["run", "--lam", "inf"], "got inf"),
    ("max-iter-zero", ["run", "--max-iter", "0"], "--max-iter must be a positive integer, got 0"),
    ("samples-zero", ["run", "--samples", "0"], "--samples must be a positive integer, got 0"),
    ("samples-negative", ["run", "--samples", "-3"], "got -3"),
    ("batch-size-zero", ["run", "--batch-size", "0"], "--batch-size"),
    ("chunk-size-zero", ["run", "--chunk-size", "0"], "--chunk-size must be a positive integer"),
    ("seed-negative", ["run", "--seed", "-7"], "got -7"),
    ("examples-negative", ["run", "--examples", "-4"], "got -4"),
    ("unknown-device", ["run", "--device", "quantum"], "'quantum'"),
    ("unknown-flag", ["run", "--frobnicate"], "--frobnicate"),
    # --- datasets
    ("unknown-dataset", ["run", "--dataset", "imagenet"], "'imagenet'"),
    ("digits-bad-split", ["run", "--split", "dev"], "'dev'"),
    (
        "voc-missing-root",
        ["run", "--dataset", "voc2012", "--root", "/nonexistent/voc", "--model", "{voc}"],
        "/nonexistent/voc",
    ),
    (
        "voc-root-without-vocdevkit",
        ["run", "--dataset", "voc2012", "--root", "{tmp}/vocroot", "--model", "{voc}"],
        "VOCdevkit",
    ),
    ("voc-no-root", ["run", "--dataset", "voc2012", "--model", "{voc}"], "needs --root"),
    ("voc-no-model", ["run", "--dataset", "voc2012", "--root", "{tmp}/vocroot"], "needs --model"),
    # --- model files
    ("missing-model", ["run", "--model", "{tmp}/nope.safetensors"], "nope.safetensors"),
    ("model-other-classes", ["run", "--model", "{five}"], "5 classes but the dataset has 20"),
    ("model-pickle", ["run", "--model", "{evil}"], "evil.pt"),
    ("model-pickle-as-safetensors", ["run", "--model", "{evil_st}"], "not a valid safetensors"),
    ("model-without-sidecar", ["run", "--model", "{bare}"], "bare.json"),
    ("model-voc-classes-on-digits", ["run", "--model", "{voc}"], "other classes"),
    # --- config files and --out
    ("config-syntax-error", ["run", "--config", "{tmp}/syntax.toml"], "not valid TOML"),
    ("config-unknown-key", ["run", "--config", "{tmp}/unknown.toml"], "'colour'"),
    ("config-bad-type", ["run", "--config", "{tmp}/badtype.toml"], "'fast'"),
    ("config-bad-scheme", ["run", "--config", "{tmp}/badscheme.toml"], "'diagonal'"),
    ("config-missing", ["run", "--config", "{tmp}/nope.toml"], "nope.toml"),
    ("out-under-a-file", ["run", "--out", "{tmp}/file.txt/results"], "file.txt/results"),
    ("out-is-a-file", ["run", "--out", "{tmp}/file.txt"], "file.txt"),
    # --- tkmia train
    (
        "train-epochs-zero",
        ["train", "--dataset", "digits", "--epochs", "0"],
        "--epochs must be a positive integer, got 0",
    ),
    ("train-lr-zero", ["train", "--dataset", "digits", "--lr", "0"], "got 0.0"),
    (
        "train-batch-size-zero",
        ["train", "--dataset", "digits", "--batch-size", "0"],
        "--batch-size",
    ),
    (
        "train-unknown-arch",
        ["train", "--dataset", "digits", "--arch", "resnet9000"],
        "'resnet9000'",
    ),
    (
        "train-missing-weights",
        ["train", "--dataset", "digits", "--arch", "resnet18", "--weights", "{tmp}/nope.pth"],
        "nope.pth",
    ),
    (
        "train-pickle-weights",
        ["train", "--dataset", "digits", "--arch", "resnet18", "--weights", "{evil}"],
        "refusing to load",
    ),
    (
        "train-weights-for-builtin-arch",
        ["train", "--dataset", "digits", "--weights", "{plain}"],
        "plain.pth",
    ),
    ("train-unknown-dataset", ["train", "--dataset", "imagenet"], "'imagenet'"),
    (
        "train-voc-missing-root",
        ["train", "--dataset", "voc2012", "--root", "/nonexistent/voc"],
        "/nonexistent/voc",
    ),
    ("train-folder-without-csv", ["train", "--dataset", "folder", "--root", "{tmp}"], "--csv"),
    (
        "train-unknown-optimizer",
        ["train", "--dataset", "digits", "--optimizer", "lbfgs"],
        "'lbfgs'",
    ),
    ("train-seed-negative", ["train", "--dataset", "digits", "--seed", "-7"], "got -7"),
    (
        "train-num-workers-negative",
        ["train", "--dataset", "digits", "--num-workers", "-2"],
        "got -2",
    ),
    ("train-unknown-device", ["train", "--dataset", "digits", "--device", "quantum"], "'quantum'"),
    (
        "train-out-under-a-file",
        ["train", "--dataset", "digits", "--out", "{tmp}/file.txt/run"],
        "file.txt/run",
    ),
    ("train-no-dataset", ["train"], "--dataset"),
    # --- tkmia report and the command itself
    ("report-not-a-results-folder", ["report", "{tmp}"], "no config.json"),
    ("no-command", [], "command"),
    ("unknown-command", ["attack"], "'attack'"),
]


def _argv(template: list[str], files: dict[str, str]) -> list[str]:
    argv = [part.format(**files) for part in template]
    if argv and argv[0] in ("run", "train") and "--out" not in argv:
        argv += [part.format(**files) for part in OUT]
    return argv


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _assert_one_error_line(err: str, expect: str) -> None:
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].strip(), err
    assert lines[0].startswith("tkmia: error:"), lines[0]
    assert expect in lines[0], (expect, lines[0])


@pytest.fixture
def no_heavy_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail loudly if a case gets past validation: no images, no attacks, no training."""

    def forbidden(what: str):
        def fail(*args, **kwargs):
            raise AssertionError(f"{what} started before validation rejected the input")

        return fail

    monkeypatch.setattr(tkmia.data.digits, "_sources", forbidden("digits image generation"))
    monkeypatch.setattr(tkmia.experiments.runner, "run", forbidden("the attack run"))
    monkeypatch.setattr(tkmia.training, "train_model", forbidden("training"))


@pytest.mark.parametrize(("template", "expect"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_user_mistake_is_one_line_exit_2_and_writes_nothing(
    template, expect, tmp_path, monkeypatch, capsys, no_heavy_work
) -> None:
    files = _make_files(tmp_path)
    monkeypatch.chdir(tmp_path)  # a default results/ or runs/ folder would land here
    before = _snapshot(tmp_path)
    rc = main(_argv(template, files))
    _assert_one_error_line(capsys.readouterr().err, expect)
    assert rc == USAGE
    assert not (tmp_path / "out").exists()
    assert _snapshot(tmp_path) == before  # nothing written, nothing damaged
    assert not (tmp_path / "PWNED").exists()  # the pickle was never executed


def test_the_pickle_fixture_really_executes_code(tmp_path: Path) -> None:
    """Guards the test above: loading the file with pickle would run the payload."""
    files = _make_files(tmp_path)
    torch.load(files["evil"], weights_only=False)
    assert (tmp_path / "PWNED").exists()


def test_failing_rerun_leaves_existing_results_unchanged_and_lam_zero_is_accepted(
    tmp_path: Path, capsys
) -> None:
    out = tmp_path / "res"
    tiny = [
        "run",
        "--samples",
        "2",
        "--methods",
        "tkmia",
        "--lr",
        "0.01",
        "--lam",
        "0",
        "--max-iter",
        "1",
        "--k",
        "2",
        "--scheme",
        "random",
        "--n",
        "1",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert main(tiny) == 0  # lam = 0 means no penalty: accepted
    capsys.readouterr()
    method = json.loads(
        (out / "records" / "random-k2-n1-t1" / "tkmia-lr0.01-lam0-it1.json").read_text()
    )
    assert method["lam"] == 0.0
    before = _snapshot(out)
    assert before and any(name.startswith("records") for name in before)
    for bad in (["--lam", "-1"], ["--k", "25"], ["--methods", "fgsm"]):
        assert main(tiny + bad) == USAGE
        _assert_one_error_line(capsys.readouterr().err, bad[1])
        assert _snapshot(out) == before


def test_keyboard_interrupt_exits_130_with_one_line(monkeypatch, capsys) -> None:
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(tkmia.cli.run, "command", interrupted)
    assert main(["run"]) == 130
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tkmia: interrupted")


@pytest.mark.parametrize(
    ("template", "expect"),
    [
        (["run", "--k", "25", "--out", "{tmp}/out"], "got 25"),
        (
            [
                "train",
                "--dataset",
                "digits",
                "--arch",
                "resnet18",
                "--weights",
                "{evil}",
                "--out",
                "{tmp}/out",
            ],
            "refusing to load",
        ),
    ],
    ids=["run-k-above-c", "train-pickle-weights"],
)
def test_end_to_end_process(template, expect, tmp_path: Path) -> None:
    files = _make_files(tmp_path)
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, "-m", "tkmia", *[part.format(**files) for part in template]],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert proc.returncode == USAGE, proc.stderr
    _assert_one_error_line(proc.stderr, expect)
    assert proc.stdout == ""
    assert not (tmp_path / "out").exists() and not (tmp_path / "PWNED").exists()


def test_a_run_that_attacks_nothing_warns_and_exits_3(tmp_path, capsys) -> None:
    """k = 19 of 20 labels: no image has |Y| >= k + |S|; the run says so and exits 3."""
    from tkmia.cli import main

    out = tmp_path / "res"
    code = main([
        "run", "--split", "val", "--scheme", "global", "--groups", "sevens", "--k", "19",
        "--samples", "2", "--methods", "kfool", "--max-iter", "1", "--examples", "0",
        "--out", str(out), "--no-progress",
    ])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 3
    assert "no image was eligible (1000 looked at and skipped" in err
    assert "|Y| >= k + |S| = 19 + |S|" in err and "exit code 3" in err
    assert (out / "summary.csv").is_file()  # the (empty) results are still written
    assert "skipped: the ineligible images" in (out / "summary.md").read_text()
