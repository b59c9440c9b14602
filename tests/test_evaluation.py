"""Evaluation runs: per-generator protocol, unreadable files, protocols, sweeps and the three reports."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import random_photo
from diffsleuth.cli.app import EXIT_OK, EXIT_PARTIAL, EXIT_USAGE
from diffsleuth.cli.main import app
from diffsleuth.detectors.registry import load_detector
from diffsleuth.evaluation.metrics import METRIC_KEYS
from diffsleuth.evaluation.robustness import DEFAULT_SWEEP, parse_sweep
from diffsleuth.evaluation.runner import ScoredSet, evaluate_scored, group_rows, score_records
from diffsleuth.io.datasets import ImageRecord, assign_splits, load_records
from diffsleuth.io.decode import decode_image
from diffsleuth.io.degrade import jpeg
from toy_detector import ToyConfig, ToyDetector, saved_toy

runner = CliRunner()
PROTOCOLS = Path(__file__).resolve().parent.parent / "configs" / "protocols"


def scored_set(rows: list[tuple[int, str, float]]) -> ScoredSet:
    records = [ImageRecord(Path(f"{i}.png"), label, generator) for i, (label, generator, _) in enumerate(rows)]
    return ScoredSet(records, np.array([s for *_, s in rows], dtype=float))


def test_generator_rows_share_all_reals_and_survive_one_class_subsets():
    rows = [(0, "real", 0.1), (0, "real", 0.6), (1, "a", 0.9), (1, "a", 0.8), (1, "b", 0.3)]
    result = group_rows(scored_set(rows), "generator", val_threshold=None, n_bootstrap=20, seed=0,
                        expected=["c"])
    assert result["a"]["n_real"] == 2 and result["a"]["n_fake"] == 2 and result["a"]["reals"] == "shared"
    assert result["a"]["auc"] == 1.0
    assert result["b"]["auc"] == pytest.approx(0.5) and result["b"]["fake_acc"] == 0.0
    assert math.isnan(result["c"]["auc"]) and "no generated images" in result["c"]["notes"][0]


def test_generator_rows_use_own_reals_when_the_generator_has_them():
    rows = [(0, "a", 0.1), (0, "b", 0.9), (1, "a", 0.8), (1, "b", 0.95)]
    result = group_rows(scored_set(rows), "generator", val_threshold=None, n_bootstrap=0, seed=0)
    assert result["a"]["reals"] == "own" and result["a"]["n_real"] == 1 and result["a"]["auc"] == 1.0
    assert result["b"]["n_real"] == 1 and result["b"]["auc"] == 1.0


def test_validation_threshold_and_oracle_are_reported_separately():
    rows = [(0, "r", 0.6), (0, "r", 0.65), (1, "a", 0.7), (1, "a", 0.9)]
    result = evaluate_scored(scored_set(rows), val_threshold=0.68, n_bootstrap=0)
    overall = result["overall"]
    assert overall["acc"] == 0.5  # at 0.5 every real is flagged
    assert overall["val_threshold"]["acc"] == 1.0 and overall["val_threshold"]["threshold"] == 0.68
    assert overall["oracle"]["balanced_acc"] == 1.0 and "upper bound" in overall["oracle"]["note"]


def test_empty_scored_set_is_a_clear_error():
    with pytest.raises(ValueError, match="nothing to evaluate"):
        evaluate_scored(ScoredSet([], np.array([])))


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return saved_toy(tmp_path_factory.mktemp("toy") / "toy")


def test_unreadable_files_are_reported_not_fatal(labelled_folder, toy):
    (labelled_folder / "1_fake" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    records = load_records(labelled_folder)
    scored = score_records(load_detector(toy), records, batch_size=4, progress=False)
    assert len(scored.records) == 12 and len(scored.failures) == 1
    assert scored.failures[0][0].endswith("broken.png")


def test_equalize_transform_is_applied_to_every_image(labelled_folder, toy):
    model = load_detector(toy)
    records = load_records(labelled_folder)
    scored = score_records(model, records, transform=lambda im: jpeg(im, 90), progress=False)
    direct = [p.score for p in model.predict([jpeg(decode_image(r.path), 90) for r in scored.records])]
    assert np.allclose(scored.scores, direct)


def test_parse_sweep():
    assert parse_sweep("default") == list(DEFAULT_SWEEP)
    assert parse_sweep(["jpeg:75, blur:1", "jpeg:75"]) == ["jpeg:75", "blur:1"]
    assert "down:0.5+jpeg:75" in DEFAULT_SWEEP
    with pytest.raises(ValueError, match="unknown degradation"):
        parse_sweep("sharpen:2")


def test_eval_cli_writes_scores_metrics_and_reports(labelled_folder, toy, tmp_path):
    (labelled_folder / "0_real" / "empty.png").write_bytes(b"")
    out = tmp_path / "out"
    result = runner.invoke(app, ["eval", "--detector", str(toy), "--data", str(labelled_folder), "--output",
                                 str(out), "--bootstrap", "50", "--sweep", "jpeg:50", "--equalize", "png"])
    assert result.exit_code == EXIT_PARTIAL, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    for section in (metrics["overall"], *metrics["per_generator"].values()):
        assert set(METRIC_KEYS) <= set(section) and set(section["ci"]) >= {"acc", "ap", "auc"}
    assert metrics["equalize"] == "png" and metrics["failures"][0]["path"].endswith("empty.png")
    assert [row["condition"] for row in metrics["robustness"]["summary"]] == ["clean", "jpeg:50"]
    with (out / "scores.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {"path", "label", "generator", "score"} <= set(rows[0]) and len(rows) == 13
    assert (out / "report.md").read_text().count("| overall |") >= 1
    # ROC, reliability, robustness; no per-generator bars: the one group ("unknown") is the overall set
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 3
    assert "unknown" not in (out / "report.md").read_text()


def test_eval_cli_usage_errors(labelled_folder, toy, tmp_path):
    base = ["eval", "--output", str(tmp_path / "o"), "--detector", str(toy)]
    assert runner.invoke(app, base).exit_code == EXIT_USAGE
    bad_sweep = runner.invoke(app, [*base, "--data", str(labelled_folder), "--sweep", "melt:3"])
    assert bad_sweep.exit_code == EXIT_USAGE and "unknown degradation" in bad_sweep.output
    no_split = runner.invoke(app, [*base, "--data", str(labelled_folder), "--split", "nowhere"])
    assert no_split.exit_code == EXIT_USAGE and "nowhere" in no_split.output


def write_genimage_tree(root: Path, subsets: dict[str, str]) -> None:
    """Distributed GenImage nesting: <Name>/<subset>/val/{ai,nature}, 3 images per class."""
    for index, (name, subset) in enumerate(subsets.items()):
        for cls, offset in (("ai", 0), ("nature", 50)):
            folder = root / name / subset / "val" / cls
            folder.mkdir(parents=True)
            for i in range(3):
                random_photo(index * 100 + offset + i, (48, 48)).save(folder / f"{i}.png")


def test_genimage_protocol_rows_own_reals_and_missing_generators(tmp_path, toy):
    root = tmp_path / "GenImage"
    write_genimage_tree(root, {"ADM": "imagenet_ai_0508_adm", "stable_diffusion_v_1_4": "imagenet_ai_0419_sdv4"})
    out = tmp_path / "out"
    result = runner.invoke(app, ["eval", "--protocol", str(PROTOCOLS / "genimage.json"), "--root", f"genimage={root}",
                                 "--detector", str(toy), "--output", str(out), "--bootstrap", "20"])
    assert result.exit_code == EXIT_OK, result.output
    per_generator = json.loads((out / "metrics.json").read_text())["per_generator"]
    assert per_generator["ADM"]["reals"] == "own" and per_generator["ADM"]["n"] == 6
    assert per_generator["SD v1.4"]["n_fake"] == 3
    assert per_generator["Midjourney"]["auc"] is None and per_generator["Midjourney"]["n"] == 0
    missing_root = runner.invoke(app, ["eval", "--protocol", str(PROTOCOLS / "genimage.json"), "--detector",
                                       str(toy), "--output", str(out)])
    assert missing_root.exit_code == EXIT_USAGE and "--root genimage=" in missing_root.output


def test_genimage_matrix_protocol_takes_one_detector_per_training_generator(tmp_path, toy):
    root = tmp_path / "GenImage"
    write_genimage_tree(root, {"ADM": "imagenet_ai_0508_adm", "VQDM": "imagenet_ai_0419_vqdm"})
    second = saved_toy(tmp_path / "toy2", seed=1)
    out = tmp_path / "out"
    result = runner.invoke(app, ["eval", "--protocol", str(PROTOCOLS / "genimage-matrix.json"), "--root",
                                 f"genimage={root}", "--detector", f"adm={toy}", "--detector", f"VQDM={second}",
                                 "--output", str(out), "--bootstrap", "0", "--report", "json"])
    assert result.exit_code == EXIT_OK, result.output
    matrix = json.loads((out / "matrix.json").read_text())
    assert set(matrix["auc"]) == {"ADM", "VQDM"} and matrix["auc"]["ADM"]["VQDM"] is not None
    assert (out / "ADM" / "metrics.json").is_file() and "| ADM |" in (out / "matrix.md").read_text()


def test_protocol_presets_load():
    from diffsleuth.evaluation.protocols import load_protocol

    presets = {p.stem: load_protocol(p) for p in PROTOCOLS.glob("*.json")}
    assert {"genimage", "genimage-matrix", "forensynths"} <= set(presets)
    assert len(presets["genimage"].generators) == 8 and presets["genimage"].train_generators == ["SD v1.4"]
    assert presets["genimage-matrix"].kind == "matrix" and len(presets["forensynths"].generators) == 13


def train_toy(records: list[ImageRecord], folder: Path, steps: int = 40) -> Path:
    """A small trained detector: the toy CNN fitted for a few full-batch steps on JPEG-equalised images."""
    torch.manual_seed(0)
    model = ToyDetector(ToyConfig())
    batch = model.preprocess([jpeg(decode_image(r.path), 90) for r in records])
    labels = torch.tensor([float(r.label) for r in records])
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.save_pretrained(folder)


def test_end_to_end_on_held_out_shared_data(shared_data, tmp_path):
    records = assign_splits(load_records(shared_data / "multigen"), 0.15, 0.15, seed=0)
    train = [r for r in records if r.split == "train"][::8]
    detector = train_toy(train, tmp_path / "trained")
    out = tmp_path / "eval"
    result = runner.invoke(app, ["eval", "--detector", str(detector), "--data", str(shared_data / "multigen"),
                                 "--split", "test", "--val-split", "val", "--max-images", "80",
                                 "--equalize", "jpeg:90", "--sweep", "jpeg:50,down:0.5+jpeg:75",
                                 "--bootstrap", "100", "--output", str(out)])
    assert result.exit_code == EXIT_OK, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    test_paths = {str(r.path) for r in records if r.split == "test"}
    with (out / "scores.csv").open() as handle:
        scored = list(csv.DictReader(handle))
    assert len(scored) == 80 and all(row["path"] in test_paths for row in scored)
    assert metrics["overall"]["n"] == 80 and metrics["thresholds"]["validation"] is not None
    assert "per_family" in metrics and metrics["split"] == "test"
    assert [r["condition"] for r in metrics["robustness"]["summary"]] == ["clean", "jpeg:50", "down:0.5+jpeg:75"]
    lo, hi = metrics["overall"]["ci"]["auc"]
    assert lo <= metrics["overall"]["auc"] <= hi
    html = (out / "report.html").read_text()
    # ROC per family, ROC panels per generator, per-generator bars, reliability, robustness
    assert html.count("data:image/png;base64,") == 5 and "Robustness" in html
    assert "down:0.5+jpeg:75 (shared online)" in (out / "report.md").read_text()


def family_scored_set(n_families: int = 3, generators_per_family: int = 9, fakes: int = 12) -> ScoredSet:
    """Reals plus fakes of many generators in a few families; generator g of family f scores around g / n."""
    rng = np.random.default_rng(0)
    records, scores = [], []
    for i in range(40):
        records.append(ImageRecord(Path(f"real/{i}.png"), 0))
        scores.append(float(rng.uniform(0, 0.6)))
    for f in range(n_families):
        for g in range(generators_per_family):
            count = 2 if (f, g) == (0, 0) else fakes
            for i in range(count):
                records.append(ImageRecord(Path(f"fake/{f}/{g}/{i}.png"), 1, f"family{f}-generator-{g}-with-a-long-name",
                                           family=f"family{f}"))
                scores.append(float(np.clip(rng.normal(0.3 + 0.5 * g / generators_per_family, 0.15), 0, 1)))
    return ScoredSet(records, np.array(scores))


def test_report_tables_have_one_header_each_and_say_when_n_is_too_small(tmp_path):
    from diffsleuth.evaluation.reports import MIN_CI_COUNT, TOO_SMALL, detail_rows, markdown_report, table_rows

    scored = family_scored_set()
    result = evaluate_scored(scored, n_bootstrap=50, threshold=0.42)
    result["thresholds"] = {"accuracy": 0.42, "detector": 0.42}
    for header, cells in (table_rows(result["per_generator"]), detail_rows(result["per_generator"])):
        assert len(header) == len(set(header)) <= 11 and all(len(c) == len(header) for c in cells)
    header, cells = table_rows(result["per_generator"])
    tiny = next(c for c in cells if c[0].startswith("family0-generator-0-"))  # 2 fakes
    assert tiny[header.index("AUC 95% CI")] == TOO_SMALL and tiny[header.index("acc 95% CI")] == TOO_SMALL
    large = next(c for c in cells if c[0].startswith("family1-generator-3-"))  # 12 fakes, 40 reals
    assert large[header.index("AUC 95% CI")].startswith("[") and MIN_CI_COUNT <= 12
    report = markdown_report(result, "t")
    assert "threshold 0.4200" in report and "## Per family" in report and "unknown" not in report
    assert report.count("tpr_at_1fpr is coarse (every row)") == 2  # once per section, not once per row
    at_half = evaluate_scored(scored, n_bootstrap=0)["overall"]["acc"]
    assert result["overall"]["acc"] != at_half  # accuracy follows the given threshold, not 0.5


def test_report_plots_small_multiples_per_family_and_skip_what_repeats_overall(tmp_path):
    import base64
    import io

    from PIL import Image

    from diffsleuth.evaluation import plots

    scored = family_scored_set()
    assert [len(names) for _, names in plots._panels(scored)] == [7, 2, 7, 2, 7, 2]  # 9 generators: 2 panels each
    for image in (plots.roc_overview(scored), plots.roc_panels(scored)):
        png = Image.open(io.BytesIO(base64.b64decode(image)))
        assert png.width >= 600 and png.height >= 500
    single = ScoredSet([ImageRecord(Path("a.png"), 0), ImageRecord(Path("b.png"), 1)], np.array([0.2, 0.7]))
    assert plots.roc_panels(single) is None and plots.bars_plot({"unknown": {}}, 10) is None
    assert plots.roc_overview(single) is not None
