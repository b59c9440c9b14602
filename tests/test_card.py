"""``diffsleuth card``: any detector, numbers from evaluation code, reproducible, out-of-domain inputs."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from diffsleuth.cli.main import app
from diffsleuth.detectors.judge.model import JudgeDetector
from diffsleuth.evaluation.card_render import render_card
from diffsleuth.evaluation.out_of_domain import non_photos
from diffsleuth.settings import config_from_dict
from diffsleuth.detectors.judge.model import JudgeConfig


def test_non_photos_are_seeded_and_of_three_kinds():
    first, second = non_photos(2, seed=3), non_photos(2, seed=3)
    assert sorted(first) == ["chart:0", "chart:1", "screenshot:0", "screenshot:1", "text:0", "text:1"]
    for name, image in first.items():
        assert image.mode == "RGB" and min(image.size) >= 384
        assert np.array_equal(np.asarray(image), np.asarray(second[name]))
    assert not np.array_equal(np.asarray(first["text:0"]), np.asarray(non_photos(1, seed=4)["text:0"]))


def tiny_judge(folder):
    config = config_from_dict(JudgeConfig, {"width": 4, "embed_dim": 8, "proj_hidden": 16, "num_traces": 2,
                                            "preprocess": {"size": 64, "policy": "center_crop"}})
    JudgeDetector.from_config(config).save_pretrained(folder)
    return folder


def test_card_writes_reproducible_metrics_and_states_the_domain(labelled_folder, tmp_path):
    detector = tiny_judge(tmp_path / "det")
    args = ["card", str(detector), "--data", str(labelled_folder), "--roles", "train,val,test",
            "--bootstrap", "20", "--non-photos", "1", "--batch-size", "4"]
    runner = CliRunner()
    first = runner.invoke(app, [*args, "--output", str(tmp_path / "a")])
    assert first.exit_code == 0, first.output
    second = runner.invoke(app, [*args, "--output", str(tmp_path / "b")])
    assert second.exit_code == 0, second.output
    metrics = (tmp_path / "a" / "card_metrics.json").read_text()
    assert metrics == (tmp_path / "b" / "card_metrics.json").read_text()
    report = json.loads(metrics)
    assert report["detector"] == "judge" and len(report["non_photos"]["rows"]) == 3
    assert {key.rsplit("/", 1)[1] for key in report["sources"]} == {"jpeg:90", "jpeg:75"}
    card = (tmp_path / "a" / "MODEL_CARD.md").read_text()
    assert "Intended domain: camera photographs" in card and "screenshot:0" in card
    assert f"--data {labelled_folder}" in card


def test_card_render_only_rewrites_the_card_from_the_metrics(labelled_folder, tmp_path):
    detector = tiny_judge(tmp_path / "det")
    runner = CliRunner()
    args = ["card", str(detector), "--data", str(labelled_folder), "--roles", "test,val", "--bootstrap", "10",
            "--non-photos", "1"]
    assert runner.invoke(app, args).exit_code == 0
    notes = tmp_path / "notes.md"
    notes.write_text("## Method\nA tiny untrained judge.\n")
    result = runner.invoke(app, [*args, "--render-only", "--notes", str(notes), "--title", "Tiny"])
    assert result.exit_code == 0, result.output
    card = (detector / "MODEL_CARD.md").read_text()
    assert card.startswith("# Tiny") and "A tiny untrained judge." in card


def test_card_refuses_an_unknown_detector_or_degradation(labelled_folder, tmp_path):
    runner = CliRunner()
    assert runner.invoke(app, ["card", str(tmp_path / "nope"), "--data", str(labelled_folder)]).exit_code == 2
    detector = tiny_judge(tmp_path / "det")
    result = runner.invoke(app, ["card", str(detector), "--data", str(labelled_folder), "--degradation", "zip:3"])
    assert result.exit_code == 2


def test_rendered_rates_carry_counts_and_intervals():
    report = {"detector": "judge", "parameters": 10, "threshold": 0.7, "operating_point": None,
              "roles": ["test"], "degradations": ["jpeg:90"], "trained_on_sources": ["a"],
              "holdout": {"seed": 0, "val_fraction": 0.15, "test_fraction": 0.15, "holdout_families": [],
                          "calibration_sources": [], "check_sources": []},
              "sets": {}, "sources": {"imagenet/check/jpeg:90": {"label": "real", "role": "check",
                                                                 "model": {"rate": 0.05, "k": 2, "n": 40,
                                                                           "ci95": [0.006, 0.169]}}},
              "non_photos": {"rows": [], "model": {"rate": 0.0, "k": 0, "n": 0, "ci95": [float("nan")] * 2}},
              "wheel_photos": {"rows": [], "model": {"rate": 0.0, "k": 0, "n": 0, "ci95": [float("nan")] * 2}}}
    card = render_card(report, "T")
    assert "| real | check | imagenet | 5.0% [0.6%, 16.9%] (2/40) |" in card
