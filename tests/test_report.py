"""`tkmia report`: tables and figures; 8-bit success; L∞, PSNR and SSIM."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from PIL import Image

from tkmia.cli import main
from tkmia.experiments.records import make_records, quantize_uint8, read_all_records, to_uint8
from tkmia.experiments.runner import RunConfig, quantised_success, run
from tkmia.experiments.settings import MethodConfig, Setting
from tkmia.experiments.summary import PAPER_COLUMNS
from tkmia.metrics import psnr, ssim
from tkmia.reports.figures import BAR_MEASURES

from _toys import TopKDataset, make_cnn, make_problem

C, K = 10, 3


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    model = make_cnn()
    data = TopKDataset(model, n=16, seed=5)
    settings = [
        Setting("global", K, group="g", group_indices=(0, 1, 2, 3, 4)),
        Setting("random", K, n=1),
    ]
    methods = [
        MethodConfig("tkmia", max_iter=20, lr=5.0, lam=1e-3),
        MethodConfig("tkmia", max_iter=20, lr=1.0, lam=1e-3),
        MethodConfig("kfool", max_iter=5, overshoot=0.0, linearize="image"),
    ]
    config = RunConfig(
        "toy",
        "cnn",
        settings,
        methods,
        samples=4,
        seed=0,
        batch_size=4,
        extra={"classes": data.classes},
    )
    out = tmp_path_factory.mktemp("report")
    run(config, model, data, out, progress=False)
    return out, model, data


def test_report_writes_tables_in_three_formats_and_figures(results, capsys) -> None:
    out, _, _ = results
    assert main(["report", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("selected by rule: highest success rate")
    for name in ("summary.csv", "selected.csv", "summary.md", "summary.tex"):
        assert (out / name).stat().st_size > 0, name
    tex = (out / "summary.tex").read_text()
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    assert "\\textbf{TkMIA" in tex
    md = (out / "summary.md").read_text()
    assert "| ΔTkAcc | ΔP@k | ΔmAP@k | ΔNDCG@k | ΔN | APer |" in md
    for _, _, name in BAR_MEASURES:
        png = out / "figures" / f"bars-{name}.png"
        assert png.stat().st_size > 1000, png
        with Image.open(png) as img:
            assert img.format == "PNG" and img.size[0] > 100
    for key in ("global-k3-g", "random-k3-n1-t1"):
        assert (out / "figures" / f"examples-{key}.png").stat().st_size > 1000
    assert not list(out.rglob("*.tmp*"))  # every file was written atomically


def test_report_of_a_folder_with_only_a_summary_csv(results, tmp_path) -> None:
    out, _, _ = results
    (tmp_path / "summary.csv").write_bytes((out / "summary.csv").read_bytes())
    assert main(["report", str(tmp_path)]) == 0
    assert "\\toprule" in (tmp_path / "summary.tex").read_text()
    assert (tmp_path / "figures" / "bars-d_tkacc.png").is_file()
    assert main(["report", str(tmp_path / "nothing")]) == 2


def test_summary_columns_and_8bit_success(results) -> None:
    out, _, _ = results
    with (out / "summary.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == PAPER_COLUMNS
    cols = PAPER_COLUMNS
    assert cols.index("success_uint8") == cols.index("success_rate") + 1
    assert cols[cols.index("aper") : cols.index("aper") + 4] == ["aper", "linf", "psnr", "ssim"]
    issue4 = ["dataset", "model", "scheme", "k", "group", "n", "threshold", "method", "lr",
              "lam", "max_iter", "attacked", "skipped", "success_rate", "d_tkacc", "d_p_at_k",
              "d_map_at_k", "d_ndcg_at_k", "delta_n", "mean_specified", "aper",
              "mean_iterations", "seconds"]  # fmt: skip
    assert [c for c in cols if c in issue4] == issue4
    recs = read_all_records(out / "records" / "random-k3-n1-t1", "kfool-it5-os0-linimage")
    row = next(r for r in table if r["scheme"] == "random" and r["method"] == "kfool")
    mean8 = sum(r["success_uint8"] for r in recs) / len(recs)
    assert float(row["success_uint8"]) == pytest.approx(mean8, rel=1e-5)
    ok = [r for r in recs if r["success"]]
    if ok:
        for col in ("linf", "psnr", "ssim"):
            assert float(row[col]) == pytest.approx(sum(r[col] for r in ok) / len(ok), rel=1e-5)


def test_quantised_success_rescores_the_png_image() -> None:
    model = make_cnn()
    x, labels, spec = make_problem(model, 6, K)
    from tkmia.attacks import KFool

    attack = KFool(model, K, max_iter=10)
    result = attack(x, labels, spec)
    ok8 = quantised_success(attack, result, labels)
    with torch.no_grad():
        scores = model(quantize_uint8(result.adv_images))
    from tkmia.metrics import removed_count

    expect = removed_count(result.clean_scores, scores, result.specified, K) >= result.required
    assert torch.equal(ok8, expect)
    recs = make_records(list(range(6)), x, labels, result, K, 1.0, ok8)
    assert [r["success_uint8"] for r in recs] == ok8.tolist()


def test_png_round_trip_gives_the_quantised_values(tmp_path) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 9, 7, generator=g)
    x[0, 0, :4] = torch.tensor([0.0, 1.0, 0.5 / 255, 254.5 / 255])  # edges and half steps
    u = to_uint8(x)
    path = tmp_path / "adv.png"
    Image.fromarray(u.permute(1, 2, 0).numpy()).save(path)
    with Image.open(path) as img:
        back = torch.from_numpy(np.array(img)).permute(2, 0, 1)
    assert back.dtype == torch.uint8 and torch.equal(back, u)
    assert torch.equal(back.float() / 255, quantize_uint8(x))
    assert torch.equal(quantize_uint8(x), torch.round(x * 255) / 255)
    assert (quantize_uint8(x) - x).abs().max() <= 0.5 / 255 + 1e-7
    assert torch.equal(quantize_uint8(quantize_uint8(x)), quantize_uint8(x))


def _ssim_reference(a: np.ndarray, b: np.ndarray, win: int = 11, sigma: float = 1.5) -> float:
    """Wang et al.'s SSIM written out: every window position, every channel, float64."""
    half = win // 2
    ax = np.arange(-half, half + 1, dtype=np.float64)
    w = np.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / (2 * sigma * sigma))
    w /= w.sum()
    c1, c2 = (0.01 * 1.0) ** 2, (0.03 * 1.0) ** 2
    values = []
    for ch in range(a.shape[0]):
        for i in range(a.shape[1] - win + 1):
            for j in range(a.shape[2] - win + 1):
                pa, pb = a[ch, i : i + win, j : j + win], b[ch, i : i + win, j : j + win]
                ma, mb = (w * pa).sum(), (w * pb).sum()
                va = (w * (pa - ma) ** 2).sum()
                vb = (w * (pb - mb) ** 2).sum()
                cov = (w * (pa - ma) * (pb - mb)).sum()
                values.append(
                    ((2 * ma * mb + c1) * (2 * cov + c2))
                    / ((ma * ma + mb * mb + c1) * (va + vb + c2))
                )
    return float(np.mean(values))


def test_ssim_matches_a_direct_reference() -> None:
    g = torch.Generator().manual_seed(1)
    a = torch.rand(2, 3, 14, 13, generator=g)
    b = (a + 0.1 * torch.randn(2, 3, 14, 13, generator=g)).clamp(0, 1)
    got = ssim(a, b)
    for i in range(2):
        ref = _ssim_reference(a[i].double().numpy(), b[i].double().numpy())
        assert float(got[i]) == pytest.approx(ref, abs=1e-6)
    assert torch.allclose(ssim(a, a), torch.ones(2))
    small = torch.rand(1, 3, 7, 8, generator=g)  # smaller than 11: a 7 x 7 window
    ref = _ssim_reference(small[0].double().numpy(), (small[0] * 0.9).double().numpy(), win=7)
    assert float(ssim(small, small * 0.9)[0]) == pytest.approx(ref, abs=1e-6)


def test_ssim_matches_scikit_image() -> None:
    """scikit-image is in the dev extra; without it this test is reported as skipped."""
    metrics = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(1)
    a = torch.rand(3, 3, 14, 13, generator=g)
    b = (a + 0.1 * torch.randn(3, 3, 14, 13, generator=g)).clamp(0, 1)
    got = ssim(a, b)
    for i in range(3):
        sk = metrics.structural_similarity(
            a[i].numpy(), b[i].numpy(), gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False, data_range=1.0, channel_axis=0,
        )  # fmt: skip
        assert float(got[i]) == pytest.approx(sk, abs=1e-5)


def test_psnr() -> None:
    a = torch.zeros(1, 3, 4, 4)
    b = a + 0.1
    assert float(psnr(a, b)[0]) == pytest.approx(20.0, abs=1e-4)
    assert math.isfinite(float(psnr(a, a)[0]))


def test_importing_and_drawing_leave_the_callers_matplotlib_alone(results, tmp_path) -> None:
    """No tkmia module picks a matplotlib backend or leaves pyplot figures open."""
    import subprocess
    import sys

    out, _, _ = results
    code = f"""
import pkgutil, importlib, matplotlib
matplotlib.use("svg")
import matplotlib.pyplot as plt
import tkmia
for mod in pkgutil.walk_packages(tkmia.__path__, "tkmia."):
    if mod.name != "tkmia.__main__":
        importlib.import_module(mod.name)
from tkmia.reports.render import render
render(__import__("pathlib").Path({str(out)!r}))
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
assert plt.get_fignums() == [], plt.get_fignums()
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
