"""`tkmia certify` end to end on the built-in model: records, the summary recomputed from
them by the plain-Python theorem loop, resuming without drawing noise again, and user
mistakes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from tkmia.certificate import label_bounds
from tkmia.cli import main
from tkmia.experiments.certify import CertifyConfig, certify_rows
from tkmia.models.smoothed import Smoothed

from _brute import multiguard_e as _brute_e

ARGS = ["certify", "--samples", "6", "--n", "40", "--sigma", "0.25", "--k", "2",
        "--radii", "0,0.05,0.1", "--alpha", "0.05", "--no-progress"]  # fmt: skip


def _summary(out: Path) -> list[dict[str, str]]:
    with (out / "summary.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_certify_writes_records_whose_summary_is_the_theorem(tmp_path: Path) -> None:
    out = tmp_path / "c"
    assert main([*ARGS, "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / "records" / "sigma0.25.jsonl").open()]
    assert len(records) == 6 and all(sum(r["counts"]) == 40 for r in records)
    rows = _summary(out)
    assert [float(r["radius"]) for r in rows] == [0.0, 0.05, 0.1]
    counts = np.array([r["counts"] for r in records])
    relevant = np.zeros(counts.shape, dtype=bool)
    for i, r in enumerate(records):
        relevant[i, r["relevant"]] = True
    lower, upper = label_bounds(counts, 40, 0.05)
    for row in rows:
        e = [_brute_e(lower[i], upper[i], relevant[i], 2, float(row["radius"]), 0.25, 1)
             for i in range(6)]  # fmt: skip
        assert float(row["certified_precision"]) == pytest.approx(sum(e) / 12, abs=1e-6)
        assert float(row["certified_recall"]) == pytest.approx(sum(e) / relevant.sum(), abs=1e-6)
    assert (out / "summary.md").is_file() and (out / "figures" / "certify.png").is_file()


def test_a_rerun_resumes_and_new_radii_reuse_the_counts(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "c"
    assert main([*ARGS, "--out", str(out)]) == 0
    before = (out / "records" / "sigma0.25.jsonl").read_text()

    def no_noise(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("counted again")

    monkeypatch.setattr(Smoothed, "counts", no_noise)
    again = [a if a != "0,0.05,0.1" else "0,0.2" for a in ARGS]
    assert main([*again, "--out", str(out)]) == 0
    assert (out / "records" / "sigma0.25.jsonl").read_text() == before
    assert [float(r["radius"]) for r in _summary(out)] == [0.0, 0.2]


def test_an_interrupted_run_counts_only_what_is_missing(tmp_path: Path) -> None:
    out = tmp_path / "c"
    assert main([*ARGS, "--out", str(out)]) == 0
    path = out / "records" / "sigma0.25.jsonl"
    full = path.read_text()
    lines = full.splitlines(keepends=True)
    path.write_text("".join(lines[:2]) + lines[2][:10])  # two records and a torn third
    assert main([*ARGS, "--out", str(out)]) == 0
    assert path.read_text() == full  # the same counts: noise depends on (seed, image) only


def test_certify_rows_abstain_when_nothing_is_certified() -> None:
    config = CertifyConfig("d", "m", "test", (0.5,), 10, 1, 0, 2, 10, 1, 0.001, (0.0,))
    records = [{"index": 0, "relevant": [0], "counts": [5, 5, 0]},
               {"index": 1, "relevant": [2], "counts": [4, 3, 3]}]  # fmt: skip
    (row,) = certify_rows(records, 0.5, config)
    assert row.certified_precision == 0.0 and row.abstained == 1.0
    assert row.smoothed_precision == 0.5  # image 0's top-1 (label 0) is relevant


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--alpha", "1.5"], "--alpha"),
        (["--sigma", "0"], "--sigma"),
        (["--radii", "-1"], "--radii"),
        (["--n", "0"], "--n"),
        (["--k", "25"], "--k"),
    ],
)
def test_mistakes_are_one_line_and_write_nothing(tmp_path: Path, capsys, extra, match) -> None:
    out = tmp_path / "c"
    assert main([*ARGS, *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0]
    assert not (out / "records").exists()


def test_the_attacked_smoothed_model_never_falls_below_its_certificate(tmp_path: Path) -> None:
    out = tmp_path / "c"
    assert main([*ARGS, "--attack-radii", "0,2", "--out", str(out)]) == 0
    text = (out / "empirical.md").read_text()
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| 0.25")]
    assert [float(r[1]) for r in rows] == [0.0, 2.0]
    certified = [float(r[2]) for r in rows]
    attacked = [float(r[3]) for r in rows]
    # the consistency check: the per-image count of violations, and the bounds' order
    assert all(r[4].strip() == "0 of 6" for r in rows)
    assert all(c <= a for c, a in zip(certified, attacked, strict=True))
    assert attacked[-1] < attacked[0], "the attack must remove labels at a large radius"
    assert (out / "figures" / "certify-vs-attack.png").is_file()
    # resumed: every attacked image is recorded once
    for name in ("attack-sigma0.25-r0.jsonl", "attack-sigma0.25-r2.jsonl"):
        lines = (out / "records" / name).read_text().splitlines()
        assert sorted(json.loads(x)["index"] for x in lines) == sorted(
            json.loads(x)["index"] for x in (out / "records" / "sigma0.25.jsonl").open()
        )
