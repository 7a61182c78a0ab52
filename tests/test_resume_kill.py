"""Killing `tkmia run` at any moment and rerunning it gives the uninterrupted table."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tkmia.experiments.records import read_all_records, read_records, record_files
from tkmia.experiments.runner import RunConfig, run
from tkmia.experiments.settings import MethodConfig, Setting
from tkmia.experiments.summary import TIMING_COLUMNS

from _toys import TopKDataset, make_cnn

ARGS = [
    "--samples", "8", "--methods", "tkmia,kfool", "--max-iter", "30", "--k", "2", "--n", "1",
    "--groups", "sevens", "--batch-size", "1", "--chunk-size", "2", "--seed", "3",
    "--no-progress",
]  # fmt: skip


def _command(out: Path) -> list[str]:
    return [sys.executable, "-m", "tkmia", "run", *ARGS, "--out", str(out)]


def _env() -> dict[str, str]:
    return os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _table(path: Path) -> list[list[str]]:
    """summary.csv without its timing columns."""
    lines = [line.split(",") for line in path.read_text().splitlines()]
    keep = [i for i, name in enumerate(lines[0]) if name not in TIMING_COLUMNS]
    return [[cells[i] for i in keep] for cells in lines]


def _lines(out: Path) -> int:
    return sum(p.read_bytes().count(b"\n") for p in out.glob("records/*/*.jsonl"))


def _run_and_kill(out: Path, when) -> bool:
    """Start the run, SIGKILL it as soon as ``when(out)`` holds; True if it was killed."""
    proc = subprocess.Popen(
        _command(out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if when(out):
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.002)
        assert proc.poll() == 0, proc.stderr.read().decode()
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def _check_consistent(out: Path) -> None:
    """JSON files are whole, and no image has two records."""
    for path in out.rglob("*.json"):
        json.loads(path.read_text())
    for sdir in out.glob("records/*"):
        for mfile in sdir.glob("*-it*.json"):
            raw = [r["index"] for p in record_files(sdir, mfile.stem) for r in read_records(p)]
            assert len(raw) == len(set(raw)), mfile


def test_sigkill_at_several_moments_then_resume_gives_the_same_table(tmp_path) -> None:
    reference = tmp_path / "ref"
    subprocess.run(_command(reference), env=_env(), check=True, stdout=subprocess.DEVNULL)
    out = tmp_path / "killed"
    moments = [
        lambda d: any(p.stat().st_size for p in d.glob("records/*/*.jsonl")),  # first record
        lambda d: _lines(d) >= 13,  # in the middle of the second setting
        lambda d: (d / "summary.csv").is_file(),  # while the tables and figures are drawn
    ]
    killed = 0
    for when in moments:
        killed += _run_and_kill(out, when)
        _check_consistent(out)
    assert killed >= 2  # the run is slow enough for the kills to land before it ends
    subprocess.run(_command(out), env=_env(), check=True, stdout=subprocess.DEVNULL)
    _check_consistent(out)
    assert _table(out / "summary.csv") == _table(reference / "summary.csv")
    assert (out / "summary.md").is_file() and (out / "figures").is_dir()
    assert not list(out.rglob("*.tmp*"))
    n = 2 * 2 * 8  # settings x methods x samples: every image attacked exactly once
    assert _lines(out) == n


def test_a_partly_written_chunk_is_attacked_again_as_a_whole(tmp_path) -> None:
    model = make_cnn()
    data = TopKDataset(model, n=24, seed=2)
    config = RunConfig(
        "toy", "cnn", [Setting("random", 3, n=1)],
        [MethodConfig("tkmia", max_iter=15, lr=5.0, lam=1e-3)],
        samples=10, seed=0, batch_size=2, chunk_size=4,
    )  # fmt: skip
    ref = run(config, model, data, tmp_path / "ref", progress=False)
    out = tmp_path / "out"
    run(config, model, data, out, progress=False)
    path = out / "records" / "random-k3-n1-t1" / "tkmia-lr5-lam0.001-it15.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    # what a SIGKILL inside a write can leave: the second chunk (positions 4..7) half
    # written, its last line torn, the third chunk missing
    path.write_text("".join(lines[:6]) + lines[6][:25])
    rows = run(config, model, data, out, progress=False)
    records = read_records(path)
    assert [r["index"] for r in records] == [
        r["index"] for r in read_all_records(path.parent, "tkmia-lr5-lam0.001-it15")
    ]
    assert len(records) == 10 and len({r["index"] for r in records}) == 10

    def strip(rs):
        return [{k: v for k, v in r.as_dict().items() if k not in TIMING_COLUMNS} for r in rs]

    assert strip(rows) == strip(ref)
    # the redone chunk gives the same records (samples are independent); its samples ran
    # with other batch mates than in the uninterrupted run, so measured distances may
    # differ in the last float bits (batch-size-dependent rounding of the CPU kernels)
    ref_recs = read_records(tmp_path / "ref" / path.relative_to(out))
    by_index = {r["index"]: r for r in ref_recs}
    for rec in records:
        want = {k: v for k, v in by_index[rec["index"]].items() if k != "seconds"}
        got = {k: v for k, v in rec.items() if k != "seconds"}
        assert got.keys() == want.keys()
        for key, value in want.items():
            if isinstance(value, float):
                assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
            else:
                assert got[key] == value, key
