"""`torchrun -m tkmia run`: ranks share the work and the table is a single process's."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tkmia.errors import InputError
from tkmia.experiments.distributed import DistInfo, info_from_env
from tkmia.experiments.plan import chunks
from tkmia.experiments.records import read_all_records, read_records
from tkmia.experiments.summary import TIMING_COLUMNS

ARGS = [
    "--samples", "6", "--methods", "tkmia,kfool", "--max-iter", "5", "--k", "2",
    "--n-labels", "1", "--groups", "sevens", "--batch-size", "1", "--chunk-size", "2",
    "--no-progress",
]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    return env | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _table(path: Path) -> list[list[str]]:
    lines = [line.split(",") for line in path.read_text().splitlines()]
    keep = [i for i, name in enumerate(lines[0]) if name not in TIMING_COLUMNS]
    return [[cells[i] for i in keep] for cells in lines]


def test_two_ranks_give_the_single_process_table(tmp_path) -> None:
    single, multi = tmp_path / "single", tmp_path / "multi"
    torchrun = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        f"--master-port={_free_port()}", "--master-addr=127.0.0.1",
    ]  # fmt: skip
    done = subprocess.run(
        [*torchrun, "-m", "tkmia", "run", *ARGS, "--out", str(multi)],
        env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert done.stdout.count("tkmia run: digits") == 1  # rank 0 alone reports
    assert "2 processes" in done.stdout
    subprocess.run(
        [sys.executable, "-m", "tkmia", "run", *ARGS, "--out", str(single)],
        env=_env(), check=True, stdout=subprocess.DEVNULL, timeout=300,
    )  # fmt: skip
    assert _table(multi / "summary.csv") == _table(single / "summary.csv")
    for sdir in (multi / "records").iterdir():
        for method in ("kfool-it5-os0-linimage", "tkmia-lr0.0001-lam0.001-it5"):
            assert not (sdir / f"{method}.jsonl").exists()
            parts = [read_records(sdir / f"{method}.rank{r}.jsonl") for r in (0, 1)]
            idx = [{rec["index"] for rec in part} for part in parts]
            assert idx[0] and idx[1] and not idx[0] & idx[1]  # disjoint shares
            # the per-image records are those of the single process, timing aside
            one = read_all_records(single / "records" / sdir.name, method)
            both = read_all_records(sdir, method)
            assert [{k: v for k, v in r.items() if k != "seconds"} for r in both] == [
                {k: v for k, v in r.items() if k != "seconds"} for r in one
            ]
    # a single process resumes a sharded run's folder: nothing is left to attack
    again = subprocess.run(
        [sys.executable, "-m", "tkmia", "run", *ARGS, "--out", str(multi)],
        env=_env(), check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert _table(multi / "summary.csv") == _table(single / "summary.csv")
    assert not list((multi / "records").glob("*/*-it5.jsonl")), again.stdout


def test_rank_bookkeeping(monkeypatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert info_from_env() == DistInfo(0, 1, 0)
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    info = info_from_env()
    assert info == DistInfo(2, 3, 0) and info.active and not info.is_main
    assert info.records_name("kfool-it5-os0-linimage") == "kfool-it5-os0-linimage.rank2.jsonl"
    assert DistInfo().records_name("kfool-it5-os0-linimage") == "kfool-it5-os0-linimage.jsonl"
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(InputError):
        info_from_env()
    # every chunk of the selected list goes to exactly one rank
    parts = chunks(11, 3)
    assert [list(c) for c in parts] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10]]
    owners = [[r for r in range(3) if DistInfo(r, 3).owns(b)] for b in range(len(parts))]
    assert owners == [[0], [1], [2], [0]]
