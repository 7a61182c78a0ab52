"""Results folders and user files (issue 29): everything read back is validated like user
input, nothing outside --out is written, one writer per folder, and every fault is one
clean error line.

Most cases run on a toy model (:mod:`_toys`) through the library and ``tkmia report`` /
``tkmia audit`` on its folder, which take well under a second each.
"""

from __future__ import annotations

import errno
import json
import math
from pathlib import Path

import pytest
from torch import nn

import tkmia.files
from _cli import lock_held_by_another_process, one_error
from tkmia.cli import main
from tkmia.errors import InputError
from tkmia.experiments.records import read_records
from tkmia.experiments.runner import RunConfig, run
from tkmia.experiments.settings import MethodConfig, Setting
from tkmia.files import LOCK_NAME

from _toys import TopKDataset, make_cnn

SETTING = "random-k3-n1-t1"
METHOD = "tkmia-lr5-lam0.001-it5"


def _config(samples: int = 4) -> RunConfig:
    return RunConfig(
        "toy", "cnn", [Setting("random", 3, n=1)],
        [MethodConfig("tkmia", max_iter=5, lr=5.0, lam=1e-3)],
        samples=samples, seed=0, batch_size=2, examples=0,
    )  # fmt: skip


@pytest.fixture(scope="module")
def toy() -> tuple[nn.Module, TopKDataset]:
    model = make_cnn()
    return model, TopKDataset(model, n=16, seed=2)


@pytest.fixture(scope="module")
def folder(toy, tmp_path_factory) -> Path:
    """A finished toy run (4 records), copied by :func:`results` for each test."""
    out = tmp_path_factory.mktemp("toy") / "out"
    run(_config(), *toy, out, progress=False)
    return out


@pytest.fixture
def results(folder: Path, tmp_path: Path) -> Path:
    import shutil

    out = tmp_path / "out"
    shutil.copytree(folder, out, symlinks=True)
    return out


def _records(out: Path) -> Path:
    return out / "records" / SETTING / f"{METHOD}.jsonl"


def _set_line(path: Path, number: int, line: bytes) -> None:
    lines = path.read_bytes().split(b"\n")
    lines[number - 1] = line
    path.write_bytes(b"\n".join(lines))


def _edit(record: bytes, **changes) -> bytes:
    data = json.loads(record)
    for key, value in changes.items():
        if value is KeyError:
            del data[key]
        else:
            data[key] = value
    return json.dumps(data).encode()


# ----------------------------------------------------------------- records read back
@pytest.mark.parametrize(
    ("kind", "number", "problem"),
    [
        ("garbage", 2, "line 2: it is not valid JSON"),
        ("garbage", 4, "line 4: it is not valid JSON"),  # the last complete line
        ("no success", 1, "line 1: it lacks 'success'"),
        ("success as text", 3, "line 3: 'success' is \"yes\", not true or false"),
        ("not UTF-8", 2, "line 2: it is not UTF-8 text"),
        ("a JSON list", 1, "line 1: it holds a JSON list, not an object"),
        ("index as text", 1, "line 1: 'index' is \"7\""),
        ("measure as text", 2, "line 2: 'l2' is \"big\", not a number"),
    ],
)
def test_a_bad_records_line_is_a_named_error_with_the_fix(
    results, capsys, kind, number, problem
) -> None:
    path = _records(results)
    record = path.read_bytes().split(b"\n")[number - 1]
    bad = {
        "garbage": b"garbage",
        "no success": _edit(record, success=KeyError),
        "success as text": _edit(record, success="yes"),
        "not UTF-8": b"\xff\xfe" + record,
        "a JSON list": b"[1, 2]",
        "index as text": _edit(record, index="7"),
        "measure as text": _edit(record, l2="big"),
    }[kind]
    _set_line(path, number, bad)
    before = path.read_bytes()
    assert main(["report", str(results)]) == 2
    one_error(capsys, str(path), problem, "delete the line (or the file)")
    assert main(["audit", str(results)]) == 2
    one_error(capsys, problem)
    with pytest.raises(InputError, match=problem.split(": ")[0]):
        read_records(path, repair=True)
    assert path.read_bytes() == before  # nothing repaired or rewritten


def test_a_torn_last_line_is_still_repaired(results, toy) -> None:
    path = _records(results)
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"index": 9, "succ')
    assert len(read_records(path, repair=True)) == 4
    assert path.read_bytes() == whole


def test_nan_and_infinite_statistics_in_records_do_not_crash_the_figures(results, capsys) -> None:
    path = _records(results)
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        rec = json.loads(line)
        rec["psnr"] = math.inf
        rec["kth_score_adv"] = math.nan if i % 2 else math.inf
        rec["margin_clean"] = -math.inf
        lines[i] = json.dumps(rec)
    path.write_text("\n".join(lines) + "\n")
    assert main(["report", str(results)]) == 0
    assert main(["audit", str(results), "--batch-sizes", "2,4", "--draws", "20"]) == 0
    assert (results / "figures" / f"audit-dist-{SETTING}.png").is_file()


# ------------------------------------------------------------- config and settings
@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{bad", "is not valid JSON"),
        ("", "is empty"),
        ("[]", "holds a JSON list, not an object"),
        ("{}", "lacks 'dataset'"),
        ("\udcff", "is not UTF-8 text"),
        (None, "'settings' must be a list of setting names"),
        (None, "'samples' must be an integer"),
    ],
)
def test_a_damaged_config_json_is_a_named_error_for_every_command(
    results, toy, capsys, text, problem
) -> None:
    path = results / "config.json"
    if text is None:  # a list as a string (once split into characters), a text count
        config = json.loads(path.read_text())
        key = problem.split("'")[1]
        config[key] = SETTING if key == "settings" else "4"
        text = json.dumps(config)
    path.write_bytes(text.encode("utf-8", errors="surrogateescape"))
    before = path.read_bytes()
    for argv in (["report", str(results)], ["audit", str(results)]):
        assert main(argv) == 2
        one_error(capsys, str(path), problem, "pass another --out")
    with pytest.raises(InputError, match=problem.replace("[", r"\[")):
        run(_config(), *toy, results, progress=False)
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ("[1]", "holds a JSON list, not an object"),
        ({"skipped": "3"}, "'skipped' must be an integer >= 0"),
        ({"indices": [1, "x"]}, "'indices' must be a list of image indices"),
        ({"colour": 1}, "the keys of a setting"),
    ],
)
def test_a_damaged_setting_json_is_a_named_error(results, capsys, change, problem) -> None:
    path = results / "records" / SETTING / "setting.json"
    if isinstance(change, str):
        path.write_text(change)
    else:
        path.write_text(json.dumps(json.loads(path.read_text()) | change))
    assert main(["report", str(results)]) == 2
    one_error(capsys, str(path), problem, "delete that setting's folder")


def test_a_damaged_method_json_is_a_named_error(results, capsys) -> None:
    path = results / "records" / SETTING / f"{METHOD}.json"
    path.write_text(json.dumps({"method": "fgsm"}))
    assert main(["report", str(results)]) == 2
    one_error(capsys, str(path), "is not a method configuration")


# -------------------------------------------------------------- nothing outside --out
def test_a_records_file_linked_outside_is_refused_and_left_alone(results, toy, tmp_path) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("the user's own file\n")  # no newline-terminated JSON: torn-looking
    path = _records(results)
    path.unlink()
    path.symlink_to(precious)
    with pytest.raises(InputError, match="is a symbolic link"):
        run(_config(), *toy, results, progress=False)
    assert main(["report", str(results)]) == 2
    assert precious.read_text() == "the user's own file\n"


def test_a_dangling_records_link_creates_nothing_outside(results, toy, tmp_path) -> None:
    target = tmp_path / "elsewhere.jsonl"
    path = _records(results)
    path.unlink()
    path.symlink_to(target)
    with pytest.raises(InputError, match="is a symbolic link"):
        run(_config(), *toy, results, progress=False)
    assert not target.exists()


def test_a_setting_folder_linked_outside_is_refused(results, toy, tmp_path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    setting = results / "records" / SETTING
    setting.rename(tmp_path / "moved")
    setting.symlink_to(elsewhere)
    with pytest.raises(InputError, match=f"'{setting}' is a symbolic link"):
        run(_config(), *toy, results, progress=False)
    assert list(elsewhere.iterdir()) == []


def test_a_summary_linked_outside_is_refused_and_left_alone(results, tmp_path, capsys) -> None:
    precious = tmp_path / "precious.csv"
    precious.write_text("mine\n")
    (results / "summary.csv").unlink()
    (results / "summary.csv").symlink_to(precious)
    assert main(["report", str(results)]) == 2
    one_error(capsys, f"'{results / 'summary.csv'}' is a symbolic link", "remove the link")
    assert precious.read_text() == "mine\n"


# -------------------------------------------------------------------- one writer


def test_a_second_writer_on_a_folder_is_refused_and_records_stay_unique(
    results, toy, capsys
) -> None:
    with lock_held_by_another_process(results / LOCK_NAME) as pid:
        busy = f"'{results}' is in use by process {pid}"
        for argv in (["report", str(results)], ["audit", str(results)]):
            assert main(argv) == 2
            one_error(capsys, busy)
        before = _records(results).read_bytes()
        _records(results).write_bytes(before[:-20])  # a torn line the run would repair
        with pytest.raises(InputError, match=busy):
            run(_config(), *toy, results, progress=False)
        assert _records(results).read_bytes() == before[:-20]  # not even repaired
    # its process is gone: the lock is taken over, the torn chunk redone, once
    run(_config(), *toy, results, progress=False)
    indices = [r["index"] for r in read_records(_records(results))]
    assert len(indices) == 4 == len(set(indices))


# ------------------------------------------------------------------- audit's input
def test_audit_refuses_an_empty_folder_and_batch_sizes_beyond_memory(results, capsys) -> None:
    assert main(["audit", str(results), "--batch-sizes", "1000000000"]) == 2
    one_error(capsys, "--batch-sizes up to 1000000000", "use batch sizes up to")
    import shutil

    shutil.rmtree(results / "records")
    (results / "records").mkdir()
    assert main(["audit", str(results)]) == 2
    one_error(capsys, "holds no records to audit")
    assert not (results / "audit.md").exists()


def test_a_full_disk_is_one_error_line(results, monkeypatch, capsys) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tkmia.files.os, "fsync", full)
    assert main(["report", str(results)]) == 1
    one_error(capsys, "No space left on device", "free some disk space")
    assert not list(results.rglob("*.tmp"))


@pytest.mark.parametrize("text", ['{"tol": "wide"}', '{"scope": ["all"]}', '{"rule": 3}'])
def test_a_damaged_selection_json_is_a_named_error(results, capsys, text) -> None:
    path = results / "selection.json"
    path.write_text(text)
    assert main(["report", str(results)]) == 2
    one_error(capsys, f"'{path}' holds a bad selection rule", "delete it to use the defaults")
    path.write_text('["rule"]')  # not an object: no stored rule, the defaults
    assert main(["report", str(results)]) == 0
