"""Atomic writes and the removal of the temporary files a killed process leaves."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tkmia.cli import main
from tkmia.files import (
    atomic_path,
    remove_stale_temporaries,
    temporary_path,
    write_text_atomic,
)


def _dead_pid() -> int:
    """The pid of a process that has ended (reaped: no process has it now)."""
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(proc.stdout)


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path) -> None:
    path = tmp_path / "sub" / "a.json"
    write_text_atomic(path, "one\r\n")
    write_text_atomic(path, "two\n")
    assert path.read_bytes() == b"two\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        assert tmp == temporary_path(path) and tmp.parent == path.parent
        tmp.write_text("half")
        raise RuntimeError("the writer failed")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_only_temporaries_of_ended_processes_are_removed(tmp_path) -> None:
    dead = _dead_pid()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "records" / "s").mkdir(parents=True)
        stale = [
            tmp_path / f".selection.json.{dead}.tmp",
            tmp_path / "records" / "s" / f".m.jsonl.{dead}.tmp",
            tmp_path / f".a.json.{10**30}.tmp",  # no process can have that pid
        ]
        kept = [
            tmp_path / f".summary.csv.{os.getpid()}.tmp",  # this process's, being written
            tmp_path / f".summary.md.{alive.pid}.tmp",  # another running process's
            tmp_path / f"x.jsonl.{dead}.tmp",  # not a name tkmia writes
            tmp_path / ".notes.tmp",
            tmp_path / "summary.csv",
        ]
        for path in stale + kept:
            path.write_text("x")
        removed = remove_stale_temporaries(tmp_path)
        assert sorted(removed) == sorted(stale)
        assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
    finally:
        alive.kill()
        alive.wait()
    assert remove_stale_temporaries(tmp_path / "missing") == []


def test_a_rerun_removes_what_a_killed_run_left(tmp_path) -> None:
    out = tmp_path / "res"
    cmd = [
        "run", "--samples", "2", "--methods", "kfool", "--max-iter", "3", "--k", "2",
        "--n", "1", "--examples", "0", "--out", str(out), "--no-progress",
    ]  # fmt: skip
    assert main(cmd) == 0
    summary = (out / "summary.csv").read_text()
    dead = _dead_pid()
    setting = next((out / "records").iterdir())
    left = [  # what a SIGKILL between a write and its rename leaves
        out / f".selection.json.{dead}.tmp",
        out / f".summary.csv.{dead}.tmp",
        setting / f".setting.json.{dead}.tmp",
        out / "figures" / f".bars-delta_n.png.{dead}.tmp",
    ]
    for path in left:
        path.write_text("torn")
    assert main(cmd) == 0
    assert not list(out.rglob("*.tmp"))
    assert (out / "summary.csv").read_text() == summary
