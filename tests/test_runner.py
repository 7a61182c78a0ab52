"""The protocol runner on a toy model: records, summary, resume, tables, figures."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from tkmia.errors import InputError
from tkmia.experiments.records import read_records
from tkmia.experiments.runner import RunConfig, run
from tkmia.experiments.settings import MethodConfig, Setting
from tkmia.experiments.summary import PAPER_COLUMNS
from tkmia.reports.render import render

from _toys import make_cnn

C, K = 10, 3


class ToyDataset(torch.utils.data.Dataset):
    """Random images; labels are the toy model's top-6 with one label flipped off: on every
    odd image the second-ranked label, which leaves an irrelevant label in the clean top-k
    (clean P@k < 1, so an attack can raise a measure as well as lower it), on every even
    image the sixth."""

    def __init__(self, model, n: int = 40) -> None:
        g = torch.Generator().manual_seed(3)
        self.images = torch.rand(n, 3, 16, 16, generator=g)
        with torch.no_grad():
            top = model(self.images).topk(6, dim=1).indices
        self.labels = torch.zeros(n, C)
        self.labels.scatter_(1, top, 1)
        flipped = torch.where(torch.arange(n) % 2 == 1, top[:, 1], top[:, 5])
        self.labels[torch.arange(n), flipped] = 0
        self.labels[::4] = 0
        self.labels[::4, :2] = 1  # some images with few labels: ineligible for most settings
        self.classes = [f"l{i}" for i in range(C)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], self.labels[i]


def _config(samples: int = 12) -> RunConfig:
    settings = [
        Setting("global", K, group="g", group_indices=tuple(range(5))),
        Setting("random", K, n=1),
        Setting("random", K, n=2, threshold=1),
    ]
    methods = [
        MethodConfig("tkmia", max_iter=30, lr=5.0, lam=1e-3),
        MethodConfig("kfool", max_iter=5, overshoot=0.0, linearize="image"),
    ]
    return RunConfig("toy", "cnn", settings, methods, samples=samples, seed=0, batch_size=5)


def test_run_writes_records_summary_and_resumes(tmp_path) -> None:
    model = make_cnn()
    data = ToyDataset(model)
    out = tmp_path / "res"
    rows = run(_config(), model, data, out, progress=False)
    assert len(rows) == 3 * 2
    with (out / "summary.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == PAPER_COLUMNS
    for row in table:
        assert int(row["attacked"]) + int(row["skipped"]) <= len(data)
        assert 0 <= float(row["success_rate"]) <= 1
    recs = read_records(out / "records" / "random-k3-n1-t1" / "tkmia-lr5-lam0.001-it30.jsonl")
    assert len(recs) == 12 and len({r["index"] for r in recs}) == 12
    # the mean of the records is the summary
    row = next(
        r for r in table if r["scheme"] == "random" and r["n"] == "1" and r["method"] == "tkmia"
    )
    d_p = sum(r["p_at_k_clean"] - r["p_at_k_adv"] for r in recs) / len(recs)
    assert float(row["d_p_at_k"]) == pytest.approx(d_p, rel=1e-5)
    ok = [r["l2"] for r in recs if r["success"]]
    assert float(row["aper"]) == pytest.approx(sum(ok) / len(ok), rel=1e-5)
    # the flipped label makes drops that are non-zero and differ between the successful
    # and the failed images: the summary averages them over all attacked images
    recs = read_records(out / "records" / "random-k3-n1-t1" / "kfool-it5-os0-linimage.jsonl")
    drops = {
        ok: [r["ndcg_at_k_clean"] - r["ndcg_at_k_adv"] for r in recs if r["success"] == ok]
        for ok in (True, False)
    }
    assert drops[True] and drops[False] and any(drops[True]) and any(drops[False])
    mean = {ok: sum(d) / len(d) for ok, d in drops.items()}
    assert abs(mean[True] - mean[False]) > 0.05
    row = next(
        r for r in table if r["scheme"] == "random" and r["n"] == "1" and r["method"] == "kfool"
    )
    every = drops[True] + drops[False]
    assert float(row["d_ndcg_at_k"]) == pytest.approx(sum(every) / len(every), rel=1e-5)
    assert float(row["delta_n"]) == pytest.approx(
        sum(r["delta_n"] for r in recs) / len(recs), rel=1e-5
    )
    # every record's ΔN decides its success by the rule it was attacked under
    for path in (out / "records").glob("*/*.jsonl"):
        for rec in read_records(path):
            assert rec["success"] == (rec["delta_n"] >= rec["required"])
            assert rec["required"] >= 1

    # resume: drop the last records of one file, rerun, same summary (timing aside)
    path = out / "records" / "global-k3-g" / "kfool-it5-os0-linimage.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:4]) + lines[4][:10])  # a torn last line too
    rows2 = run(_config(), model, data, out, progress=False)
    strip = [{k: v for k, v in r.as_dict().items() if k != "seconds"} for r in rows]
    strip2 = [{k: v for k, v in r.as_dict().items() if k != "seconds"} for r in rows2]
    assert strip == strip2
    # every file holds one record per selected image, written once (none duplicated)
    for setting_dir in (out / "records").iterdir():
        selected = json.loads((setting_dir / "setting.json").read_text())["indices"]
        for path in setting_dir.glob("*.jsonl"):
            lines = path.read_text().splitlines()
            assert sorted(json.loads(line)["index"] for line in lines) == sorted(selected)


def test_selection_takes_the_first_eligible_images(tmp_path) -> None:
    model = make_cnn()
    data = ToyDataset(model)
    run(_config(samples=5), model, data, tmp_path, progress=False)
    recs = read_records(tmp_path / "records" / "global-k3-g" / "tkmia-lr5-lam0.001-it30.jsonl")
    # SPEC §5 on sets: S = Y ∩ G, eligible when |Y| >= k + |S| and S meets the clean top-k
    eligible = []
    with torch.no_grad():
        scores = model(data.images)
    for i in range(len(data)):
        y = set(torch.nonzero(data.labels[i]).flatten().tolist())
        spec = y & set(range(5))
        top = set(scores[i].topk(K).indices.tolist())
        eligible.append(len(y) >= K + len(spec) and bool(spec & top))
    first = [i for i, ok in enumerate(eligible) if ok][:5]
    assert not eligible[0] and not eligible[4]  # images 0, 4, ... have only 2 labels
    assert [r["index"] for r in recs] == first
    setting = json.loads((tmp_path / "records" / "global-k3-g" / "setting.json").read_text())
    assert setting["skipped"] == first[-1] + 1 - 5 > 0


def test_other_configuration_in_the_same_folder_is_refused(tmp_path) -> None:
    model = make_cnn()
    data = ToyDataset(model)
    run(_config(samples=3), model, data, tmp_path, progress=False)
    before = (tmp_path / "summary.csv").read_text()
    with pytest.raises(InputError, match="different run configuration") as err:
        run(_config(samples=4), model, data, tmp_path, progress=False)
    assert "(samples: 3 in the folder, 4 now)" in str(err.value)  # names what differs
    assert (tmp_path / "summary.csv").read_text() == before


def _summary_without_seconds(path) -> list[dict[str, str]]:
    rows = list(csv.DictReader(path.open()))
    for row in rows:
        row.pop("seconds")
    return rows


def test_a_folder_grows_by_new_methods_and_settings_in_any_order(tmp_path) -> None:
    model = make_cnn()
    data = ToyDataset(model)
    whole = _config(samples=3)
    run(whole, model, data, tmp_path / "whole", progress=False)
    out = tmp_path / "grown"
    first = RunConfig(
        **{**whole.__dict__, "settings": whole.settings[:2], "methods": whole.methods[:1]}
    )
    run(first, model, data, out, progress=False)
    tkmia_records = {p: p.read_bytes() for p in out.rglob("tkmia-*.jsonl")}
    # the grid in another order, with one more setting and one more method
    grown = RunConfig(
        **{**whole.__dict__, "settings": whole.settings[::-1], "methods": whole.methods[::-1]}
    )
    rows = run(grown, model, data, out, progress=False)
    # what was done is kept as it was; only what is new was attacked
    assert {p: p.read_bytes() for p in out.rglob("tkmia-*.jsonl") if p in tkmia_records} == (
        tkmia_records
    )
    assert _summary_without_seconds(out / "summary.csv") == _summary_without_seconds(
        tmp_path / "whole" / "summary.csv"
    )
    assert len(rows) == len(whole.settings) * len(whole.methods)
    config = json.loads((out / "config.json").read_text())
    assert config["methods"] == [m.key for m in whole.methods]  # the folder's order, then new
    # a smaller run in the folder attacks nothing new and still renders the whole folder
    again = run(first, model, data, out, progress=False)
    assert [r.method_key for r in again] == [r.method_key for r in rows]


def test_an_other_folder_is_refused_before_any_data_is_read(tmp_path) -> None:
    from tkmia.experiments.results_dir import check_compatible

    model = make_cnn()
    run(_config(samples=3), model, ToyDataset(model), tmp_path, progress=False)
    check_compatible(tmp_path, {"samples": 3, "seed": 0, "methods": ["anything"]})
    check_compatible(tmp_path / "new", {"samples": 99})
    with pytest.raises(InputError, match=r"samples: 3 in the folder, 4 now; seed: 0 in"):
        check_compatible(tmp_path, {"samples": 4, "seed": 1})


def test_config_difference_names_each_differing_key_with_both_values() -> None:
    from tkmia.experiments.results_dir import config_difference

    old = {"samples": 3, "seed": 0, "methods": ["tkmia-lr5-lam0.001-it30"], "k": 1}
    new = {"samples": 4, "seed": 0, "methods": ["kfool-it5"], "split": "val"}
    assert config_difference(old, new, most=5) == (
        "k: 1 in the folder, missing now; "
        'methods: ["tkmia-lr5-lam0.001-it30"] in the folder, ["kfool-it5"] now; '
        'samples: 3 in the folder, 4 now; split: missing in the folder, "val" now'
    )
    assert config_difference(old, new, most=1).endswith("; and 3 more")


def test_render_writes_tables_and_figures(tmp_path) -> None:
    model = make_cnn()
    data = ToyDataset(model)
    run(_config(samples=4), model, data, tmp_path, progress=False)
    text = render(tmp_path, classes=data.classes)
    assert "| TkMIA |" in text and "| kFool |" in text
    assert (tmp_path / "summary.md").is_file()
    tex = (tmp_path / "summary.tex").read_text()
    assert "\\toprule" in tex and "\\bottomrule" in tex
    figs = sorted(p.name for p in (tmp_path / "figures").glob("examples-*.png"))
    assert figs == [
        "examples-global-k3-g.png",
        "examples-random-k3-n1-t1.png",
        "examples-random-k3-n2-t1.png",
    ]


def test_same_seed_gives_a_byte_identical_summary(tmp_path) -> None:
    model = make_cnn()
    data = ToyDataset(model)

    def table(out):
        run(_config(samples=6), model, data, out, progress=False)
        lines = (out / "summary.csv").read_text().splitlines()
        drop = lines[0].split(",").index("seconds")
        return "\n".join(
            ",".join(c for i, c in enumerate(ln.split(",")) if i != drop) for ln in lines
        )

    assert table(tmp_path / "a") == table(tmp_path / "b")


def _folder_dataset(root, n: int = 24):
    """The first ``n`` digits test images as PNG files with a 0/1 label CSV."""
    from PIL import Image

    from tkmia.data.digits import CLASSES, Digits
    from tkmia.experiments.records import to_uint8

    digits = Digits(split="test")
    (root / "img").mkdir(parents=True)
    lines = ["path," + ",".join(CLASSES)]
    for i in range(n):
        image, labels = digits[i]
        Image.fromarray(to_uint8(image).permute(1, 2, 0).numpy()).save(root / "img" / f"{i}.png")
        lines.append(f"img/{i}.png," + ",".join(str(int(v)) for v in labels.tolist()))
    (root / "labels.csv").write_text("\n".join(lines) + "\n")


def test_a_corrupt_image_stops_the_run_or_is_skipped_and_counted(tmp_path, capsys) -> None:
    from tkmia.cli import main
    from tkmia.models.builtin import builtin_checkpoint_path

    root, out = tmp_path / "data", tmp_path / "res"
    _folder_dataset(root)
    cmd = [
        "run", "--dataset", "folder", "--root", str(root), "--csv", str(root / "labels.csv"),
        "--model", str(builtin_checkpoint_path()), "--image-size", "48", "--scheme", "random",
        "--k", "2", "--n", "1", "--samples", "4", "--methods", "kfool", "--max-iter", "3",
        "--examples", "0", "--out", str(out), "--no-progress",
    ]  # fmt: skip
    assert main(cmd) == 0
    setting = out / "records" / "random-k2-n1-t1"
    before = {p.name: p.read_bytes() for p in setting.iterdir()}
    summary = (out / "summary.csv").read_bytes()
    selected = json.loads((setting / "setting.json").read_text())["indices"]
    bad = selected[1]
    (root / "img" / f"{bad}.png").write_bytes(b"this is not a PNG file" * 10)
    capsys.readouterr()
    assert main(cmd) == 2
    err = capsys.readouterr().err
    assert f"{bad}.png" in err and "--skip-bad-images" in err and len(err.splitlines()) == 1
    assert {p.name: p.read_bytes() for p in setting.iterdir()} == before  # nothing lost
    assert (out / "summary.csv").read_bytes() == summary

    assert main([*cmd, "--skip-bad-images"]) == 0
    assert "skipped 1 unreadable image" in capsys.readouterr().err
    data = json.loads((setting / "setting.json").read_text())
    assert data["bad_images"] == 1 and data["bad_image_indices"] == [bad]
    assert bad not in data["indices"] and len(data["indices"]) == 4
    with (out / "summary.csv").open() as fh:
        row = next(csv.DictReader(fh))
    assert int(row["attacked"]) == 4  # the bad image's old record no longer counts
    assert int(row["skipped"]) == data["skipped"] >= 1  # the bad image is among them


def test_normalize_is_the_wrapped_model(tmp_path) -> None:
    """``run(..., normalize=(mean, std))`` scores and attacks through the same normalisation
    as a model wrapped in ``Normalized`` beforehand: the same summary."""
    from tkmia.normalize import Normalized

    model = make_cnn()
    data = ToyDataset(model)
    stats = ([0.4, 0.5, 0.6], [0.5, 0.25, 0.3])
    a = run(_config(samples=4), model, data, tmp_path / "a", progress=False, normalize=stats)
    b = run(_config(samples=4), Normalized(model, *stats), data, tmp_path / "b", progress=False)

    def table(rows):
        return [{k: v for k, v in r.cells().items() if k != "seconds"} for r in rows]

    assert table(a) == table(b)
    assert any(r.attacked for r in a)


@pytest.mark.parametrize("scheme", ["random", "targeted"])
def test_each_images_draw_depends_on_its_index_only_not_on_samples_or_blocks(scheme) -> None:
    """``first_eligible`` scores the split in blocks (of ``max(4·samples, 256)`` images); an
    image's S2 draw (or random targets) is the one of ``(seed, its dataset index)``,
    whatever ``samples`` asks for and wherever its block starts: the protocol's draw for
    that image alone. One image in 8 is eligible, so 40 and 70 samples reach past the first
    block (256 and 280 images)."""
    from tkmia.experiments.plan import first_eligible
    from tkmia.experiments.scoring import CleanScores
    from tkmia.protocol import select_random, select_targets

    from _toys import TopKDataset

    model = make_cnn()
    data = TopKDataset(model, 600, seed=4)  # Y = the clean top-5 of 10 labels
    with torch.no_grad():
        scores = model(data.images)
    order = scores.argsort(dim=1, descending=True)
    for i in range(600):
        if i % 8:  # ineligible: S2 needs |Y| >= k + n, the targeted scheme n labels outside Y
            keep = order[i, :1] if scheme == "random" else order[i, :-1]
            data.labels[i] = torch.zeros(10).scatter_(0, keep, 1.0)
    group = "random" if scheme == "targeted" else None
    setting = Setting(scheme, K, group=group, n=2)
    for samples in (40, 70):
        indices, spec, _ = first_eligible(CleanScores(model, data, 64, "cpu"), setting, samples, 7)
        assert indices == list(range(0, 8 * samples, 8))  # past the first block
        for i, row in zip(indices, spec, strict=True):
            one = (data.labels[i : i + 1], scores[i : i + 1], 2, K)
            if scheme == "random":
                alone, ok = select_random(*one, 7, [i])
            else:
                alone, ok = select_targets(*one, "random", 7, [i])
            assert ok.item() and torch.equal(alone[0], row), (samples, i)
