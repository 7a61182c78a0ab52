"""Typed summary rows: parsed once from records or from summary.csv, written back the same;
titles and labels; the chunk reader's hand-back; experiments never import reports."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from tkmia.errors import InputError
from tkmia.experiments.chunk_reader import ChunkReader
from tkmia.experiments.records import append_records
from tkmia.experiments.settings import MethodConfig, Setting
from tkmia.experiments.summary import (
    PAPER_COLUMNS,
    SUMMARY_COLUMNS,
    SummaryRow,
    collect_rows,
    read_summary,
    write_summary,
)
from tkmia.reports.labels import config_label

S1 = Setting("global", 2, group="sevens", group_indices=(0, 1))
S2 = Setting("random", 3, n=2)


def _row(setting: Setting, config: MethodConfig, aper: float = 0.25) -> SummaryRow:
    return SummaryRow(
        "digits", "builtin", setting, config, attacked=4, skipped=7, success_rate=0.75,
        success_uint8=0.5, d_tkacc=0.125, d_p_at_k=1 / 3, d_map_at_k=0.2, d_ndcg_at_k=0.1,
        delta_n=1.25, mean_specified=2.0, aper=aper, linf=0.01, psnr=55.5, ssim=0.999,
        mean_iterations=12.5, seconds=3.25,
    )  # fmt: skip


def test_a_written_summary_reads_back_typed_and_writes_the_same_bytes(tmp_path) -> None:
    rows = [
        _row(S1, MethodConfig("tkmia", lr=1e-4, lam=1e-3, max_iter=300)),
        _row(
            S2, MethodConfig("kfool", max_iter=5, overshoot=0.0, linearize="image"), aper=math.nan
        ),
    ]
    first = write_summary(tmp_path, rows).read_text()
    lines = first.splitlines()
    assert lines[0].split(",") == PAPER_COLUMNS
    assert lines[1].startswith("digits,builtin,global,2,sevens,,all,tkmia,0.0001,0.001,300,,,4,7,")
    assert lines[2].startswith("digits,builtin,random,3,,2,2,kfool,,,5,0,image,4,7,0.75,0.5,")
    assert ",0.333333," in lines[1] and ",nan," in lines[2]
    back = read_summary(tmp_path / "summary.csv")
    assert write_summary(tmp_path, back, name="again.csv").read_text() == first
    s1, s2 = back
    assert s1.setting.k == 2 and s1.value("threshold") == "all" and s1.value("n") is None
    assert s2.value("group") is None and s2.value("threshold") == 2 and s2.attacked == 4
    assert s2.value("lr") is None and s2.config == MethodConfig(
        "kfool", max_iter=5, overshoot=0.0, linearize="image"
    )
    assert s1.config.params == {
        "lr": 1e-4,
        "lam": 1e-3,
        "max_iter": 300,
        "success_rule": "paper",
        "quantize": 0,
    }
    assert math.isnan(s2.aper) and s1.psnr == 55.5
    assert s1.setting_key == S1.key and s2.setting_key == S2.key
    assert (s1.method_key, s2.method_title) == ("tkmia-lr0.0001-lam0.001-it300", "kFool")
    assert list(s1.as_dict()) == SUMMARY_COLUMNS and s1.cells()["lr"] == "0.0001"


@pytest.mark.parametrize(
    ("column", "value", "match"),
    [
        ("k", "two", "'k' holds 'two'; expected int"),
        ("aper", "small", "'aper' holds 'small'; expected"),
        ("scheme", "local", "'scheme' holds 'local'; expected global, random"),
        ("method", "pgd", "unknown method 'pgd'"),
    ],
)
def test_a_malformed_summary_is_an_input_error_naming_the_line(
    tmp_path, column, value, match
) -> None:
    write_summary(
        tmp_path, [_row(S1, MethodConfig("kfool", max_iter=5, overshoot=0.0, linearize="image"))]
    )
    path = tmp_path / "summary.csv"
    header, line = path.read_text().splitlines()
    cells = line.split(",")
    cells[header.split(",").index(column)] = value
    path.write_text(f"{header}\n{','.join(cells)}\n")
    with pytest.raises(InputError, match=match) as err:
        read_summary(path)
    assert "line 2" in str(err.value)
    path.write_text("dataset,model\nd,m\n")
    with pytest.raises(InputError, match="no column"):
        read_summary(path)


def test_optional_columns_only_when_a_method_takes_them_and_old_files_load(tmp_path) -> None:
    """kFool's later hyper-parameters make columns only in summaries with kFool rows: a
    summary of the loss-based methods keeps its layout, and a summary written before the
    columns existed loads, its kFool rows with the values they were made with."""
    tk = _row(S1, MethodConfig("tkmia", lr=1e-4, lam=1e-3, max_iter=300))
    text = write_summary(tmp_path, [tk]).read_text()
    old_header = [c for c in PAPER_COLUMNS if c not in ("overshoot", "linearize")]
    assert text.splitlines()[0].split(",") == old_header
    assert text.splitlines()[1].startswith("digits,builtin,global,2,sevens,,all,tkmia,0.0001,")
    assert ",300,4,7," in text.splitlines()[1]
    old = "kfool,,,5,4,7,"  # a kFool row of a file without the columns
    cells = text.splitlines()[1].replace("tkmia,0.0001,0.001,300,4,7,", old)
    (tmp_path / "old.csv").write_text(f"{','.join(old_header)}\n{text.splitlines()[1]}\n{cells}\n")
    tk_back, kf_back = read_summary(tmp_path / "old.csv")
    assert tk_back.config == tk.config
    assert kf_back.config == MethodConfig("kfool", max_iter=5, overshoot=0.02, linearize="tanh")
    assert kf_back.method_key == "kfool-it5"  # the old records' file name


def test_titles_and_labels() -> None:
    tk = MethodConfig("tkmia", lr=5.0, lam=1e-3, max_iter=20)
    kf = MethodConfig("kfool", max_iter=5, overshoot=0.0, linearize="image")
    s1, s2 = _row(S1, tk), _row(S2, kf)
    assert s1.setting_title == "digits · S1 global · group sevens · k=2"
    assert s2.setting_title == "digits · S2 random · n=2 · t=2 · k=3"
    assert s1.setting_short_title == "S1 sevens\nk=2"
    assert s2.setting_short_title == "S2 n=2 t=2\nk=3"
    assert config_label(tk) == "TkMIA" and config_label(kf) == "kFool"
    assert config_label(tk, detailed=True) == "TkMIA (lr=5.0, λ=0.001, it=20)"
    assert config_label(kf, detailed=True) == "kFool (it=5, os=0.0, lin=image)"
    lr = MethodConfig("mlcwu", lr=1e-4, lam=5e-5, max_iter=300)
    assert config_label(lr, detailed=True) == "ML-CW-U (lr=0.0001, λ=5e-05, it=300)"


def test_collect_rows_reads_the_records_once_into_typed_rows(tmp_path) -> None:
    config = MethodConfig("kfool", max_iter=5, overshoot=0.0, linearize="image")
    (tmp_path / "config.json").write_text(
        json.dumps({"dataset": "d", "model": "m", "settings": [S1.key], "methods": [config.key]})
    )
    sdir = tmp_path / "records" / S1.key
    sdir.mkdir(parents=True)
    setting = {"scheme": "global", "k": 2, "group": "sevens", "group_indices": [0, 1],
               "n": None, "threshold": None, "skipped": 3, "bad_images": 1,
               "bad_image_indices": [4], "indices": [5, 6]}  # fmt: skip
    (sdir / "setting.json").write_text(json.dumps(setting))
    (sdir / f"{config.key}.json").write_text(json.dumps(config.as_dict()))
    record = {
        "success": True, "iterations": 3, "n_specified": 1, "delta_n": 1, "l2": 0.5,
        "linf": 0.1, "psnr": 40.0, "ssim": 0.9, "success_uint8": False, "seconds": 1.0,
    }  # fmt: skip
    for name in ("tkacc", "p_at_k", "map_at_k", "ndcg_at_k"):
        record |= {f"{name}_clean": 1.0, f"{name}_adv": 0.5}
    append_records(sdir / f"{config.key}.jsonl", [record | {"index": i} for i in (5, 6, 9)])
    (row,) = collect_rows(tmp_path)
    assert isinstance(row, SummaryRow) and row.setting == S1 and row.config == config
    assert (row.attacked, row.skipped, row.bad_images) == (2, 3, 1)  # index 9 is not selected
    assert row.d_p_at_k == 0.5 and row.aper == 0.5 and row.success_uint8 == 0.0
    assert row.seconds == 2.0
    with pytest.raises(InputError, match="no config.json"):
        collect_rows(tmp_path / "records")


def test_the_chunk_reader_hands_back_chunks_in_order_with_their_reading_time() -> None:
    images = torch.rand(6, 3, 4, 4)
    labels = torch.eye(6)
    dataset = list(zip(images, labels, strict=True))
    indices = [5, 3, 1]
    specified = torch.tensor([[1, 0], [0, 1], [1, 1]]).bool()
    reader = ChunkReader(dataset, indices, specified, [[0, 1], [2]], "cpu")
    assert len(reader) == 2
    read = list(reader)
    assert torch.equal(read[1][2], specified[[2]])
    first, seconds = reader.finished()
    assert first.positions == [0, 1] and first.indices == [5, 3] and seconds > 0
    assert torch.equal(first.images, images[[5, 3]]) and torch.equal(first.labels, labels[[5, 3]])
    second, seconds = reader.finished()
    assert second.indices == [1] and seconds == 0.0  # the reading time was handed back
    with pytest.raises(IndexError):
        reader.finished()


def test_experiments_never_import_reports_or_the_cli() -> None:
    modules = ["summary", "runner", "selection", "plan", "scoring", "chunk_reader",
               "results_dir", "records", "distributed"]  # fmt: skip
    code = (
        "import sys\n"
        + "".join(f"import tkmia.experiments.{m}\n" for m in modules)
        + "print(sorted(m for m in sys.modules if m.startswith(('tkmia.reports', 'tkmia.cli'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


#: each table header and the SummaryRow field under it, written out here (not read from
#: tkmia.reports.tables), with the LaTeX header of the same column
_UNDER = {
    ("ΔTkAcc", r"$\Delta$TkAcc"): "d_tkacc",
    ("ΔP@k", r"$\Delta$P@$k$"): "d_p_at_k",
    ("ΔmAP@k", r"$\Delta$mAP@$k$"): "d_map_at_k",
    ("ΔNDCG@k", r"$\Delta$NDCG@$k$"): "d_ndcg_at_k",
    ("ΔN", r"$\Delta N$"): "delta_n",
    ("APer", "APer"): "aper",
    ("L∞", r"$L_\infty$"): "linf",
    ("PSNR", "PSNR"): "psnr",
    ("SSIM", "SSIM"): "ssim",
    ("success", "success"): "success_rate",
    ("success 8-bit", "success 8-bit"): "success_uint8",
    ("iters", "iters"): "mean_iterations",
    ("attacked", "attacked"): "attacked",
    ("skipped", "skipped"): "skipped",
}


def _distinct_row(setting: Setting, config: MethodConfig, scale: float) -> SummaryRow:
    """A row whose every column holds a different value (a swap of two columns shows)."""
    return SummaryRow(
        "digits", "builtin", setting, config, attacked=int(4 * scale), skipped=int(7 * scale),
        success_rate=0.75 / scale, success_uint8=0.5 / scale, d_tkacc=0.1111 * scale,
        d_p_at_k=0.2222 * scale, d_map_at_k=0.3333 * scale, d_ndcg_at_k=0.4444 * scale,
        delta_n=1.5555 * scale, mean_specified=2.0, aper=0.6666 * scale, linf=0.0777 * scale,
        psnr=48.88 * scale, ssim=0.9876 / scale, mean_iterations=12.25 * scale, seconds=3.0,
    )  # fmt: skip


def _table_rows(lines: list[str], sep: str, header_start: str) -> list[dict[str, str]]:
    """The data rows of the tables in ``lines`` as ``{header: cell}``."""
    out, header = [], None
    for line in lines:
        cells = [c.strip() for c in line.strip().strip("|").removesuffix("\\\\").split(sep)]
        if line.startswith(header_start):
            header = cells[1:]
        elif header and len(cells) == len(header) + 1 and not set(cells[1]) <= set("-:"):
            out.append(dict(zip(header, cells[1:], strict=True)))
    return out


def test_every_table_cell_is_the_summary_value_under_its_header(tmp_path) -> None:
    """summary.md and summary.tex as `tkmia report` writes them from a summary.csv: every
    cell equals (to its printed digits) the SummaryRow field its header names."""
    from tkmia.cli import main
    from tkmia.experiments.summary import write_summary

    rows = [
        _distinct_row(S1, MethodConfig("tkmia", lr=1e-4, lam=1e-3, max_iter=300), 1.0),
        _distinct_row(S1, MethodConfig("mlcwu", lr=5e-4, lam=1e-3, max_iter=300), 2.0),
        _distinct_row(S2, MethodConfig("tkmia", lr=1e-4, lam=1e-3, max_iter=300), 3.0),
    ]
    write_summary(tmp_path, rows)
    assert main(["report", str(tmp_path)]) == 0
    md = (tmp_path / "summary.md").read_text().splitlines()
    tex = (tmp_path / "summary.tex").read_text().splitlines()
    for table, index in (
        (_table_rows(md, "|", "| method"), 0),
        (_table_rows(tex, "&", "Method"), 1),
    ):
        assert len(table) == len(rows)
        for row, cells in zip(rows, table, strict=True):
            assert len(cells) == len(_UNDER)
            for headers, field in _UNDER.items():
                value, cell = float(getattr(row, field)), cells[headers[index]]
                digits = 2 if field in ("psnr", "mean_iterations") else 4
                digits = 0 if field in ("attacked", "skipped") else digits
                assert float(cell) == pytest.approx(value, abs=0.51 * 10**-digits), (field, cell)
