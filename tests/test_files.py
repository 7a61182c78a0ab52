"""Atomic writes and the removal of the temporary files a killed process leaves."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from _cli import lock_held_by_another_process
from tkmia.cli import main
from tkmia.errors import InputError
from tkmia.files import (
    LOCK_NAME,
    atomic_path,
    check_inside,
    folder_lock,
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


def _tmp(folder, name: str, pid: int):
    """The temporary tkmia writes ``folder/name`` to in process ``pid``."""
    return folder / f".{name}.tkmia-{pid}.tmp"


def test_only_temporaries_of_ended_processes_are_removed(tmp_path) -> None:
    dead = _dead_pid()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "records" / "s").mkdir(parents=True)
        stale = [
            _tmp(tmp_path, "selection.json", dead),
            _tmp(tmp_path / "records" / "s", "m.jsonl", dead),
            _tmp(tmp_path, "a.json", 10**30),  # no process can have that pid
        ]
        kept = [
            _tmp(tmp_path, "summary.csv", os.getpid()),  # this process's, being written
            _tmp(tmp_path, "summary.md", alive.pid),  # another running process's
            tmp_path / f"x.jsonl.tkmia-{dead}.tmp",  # not a name tkmia writes
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


def test_look_alike_temporaries_and_files_outside_owned_folders_are_kept(tmp_path) -> None:
    """Issue 29: the cleanup once removed any ``.NAME.PID.tmp`` under --out, another
    program's files included, and followed links out of the folder."""
    dead = _dead_pid()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    out = tmp_path / "out"
    (out / "records" / "s").mkdir(parents=True)
    (out / "notes" / "deep").mkdir(parents=True)
    (out / "records" / "link").symlink_to(outside)
    kept = [
        out / f".notes.{dead}.tmp",  # another program's pattern (tkmia's before issue 29)
        out / "records" / "s" / f".m.jsonl.{dead}.tmp",
        _tmp(out / "notes" / "deep", "a.txt", dead),  # tkmia's pattern, not tkmia's folder
        _tmp(outside, "m.jsonl", dead),  # reachable only through the link
    ]
    for path in kept:
        path.write_text("keep me")
    target = outside / "precious.txt"
    target.write_text("keep me")
    (_tmp(out, "summary.csv", dead)).symlink_to(target)  # a link with tkmia's name
    assert remove_stale_temporaries(out) == []
    assert all(p.read_text() == "keep me" for p in [*kept, target])


def test_check_inside_refuses_links_and_paths_outside(tmp_path) -> None:
    out = tmp_path / "out"
    (out / "records").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    assert check_inside(out, out / "records" / "s" / "m.jsonl") == out / "records" / "s" / "m.jsonl"
    (out / "records" / "s").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(InputError, match="'.*records/s' is a symbolic link"):
        check_inside(out, out / "records" / "s" / "m.jsonl")
    with pytest.raises(InputError, match="outside the results folder"):
        check_inside(out, tmp_path / "elsewhere" / "m.jsonl")
    with pytest.raises(InputError, match="'..'"):
        check_inside(out, out / "records" / ".." / "x")
    # while the folder is locked, every atomic write under it is checked
    with folder_lock(out), pytest.raises(InputError, match="symbolic link"):
        write_text_atomic(out / "records" / "s" / "setting.json", "{}")
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_a_folder_lock_refuses_a_second_process_and_takes_over_a_dead_ones(tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    lock = out / LOCK_NAME
    with lock_held_by_another_process(lock) as pid:
        with pytest.raises(InputError, match=f"'{out}' is in use by process {pid}"):
            with folder_lock(out):
                pass
    # the holder died: its lock is gone with it, although its pid is still in the file
    assert lock.read_text() == str(pid)
    with folder_lock(out), folder_lock(out):  # re-entrant within one process
        assert lock.read_text() == f"{os.getpid()}\n"


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
        _tmp(out, "selection.json", dead),
        _tmp(out, "summary.csv", dead),
        _tmp(setting, "setting.json", dead),
        _tmp(out / "figures", "bars-delta_n.png", dead),
    ]
    for path in left:
        path.write_text("torn")
    assert main(cmd) == 0
    assert not list(out.rglob("*.tmp"))
    assert (out / "summary.csv").read_text() == summary
