"""LaRE² detector: EGRE shapes and guidance, aligned crops, save/load, training, CLI."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from conftest import random_photo
from diffsleuth.settings import config_from_dict, config_to_dict
from diffsleuth.detectors.lare2.model import Lare2Config, Lare2Detector, centre_offset, crop_aligned
from diffsleuth.detectors.registry import load_detector
from diffsleuth.detectors.lare2.features import LareConfig


def tiny_config(tiny_sd, tiny_clip, **kw) -> Lare2Config:
    return Lare2Config(lare=LareConfig(backbone=str(tiny_sd), ensemble=1), clip_model=str(tiny_clip),
                       clip_pretrained=None, **kw)


@pytest.fixture(scope="module")
def detector(tiny_sd, tiny_clip):
    torch.manual_seed(0)
    return Lare2Detector.from_config(tiny_config(tiny_sd, tiny_clip)).eval()


def inputs(batch: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 224, 224, generator=gen), torch.rand(batch, 4, 28, 28, generator=gen)


@pytest.mark.parametrize(("batch", "train"), [(1, False), (1, True), (3, True)])
def test_network_shapes_follow_the_loaded_clip(detector, batch, train):
    net = detector.network.train(train)
    try:
        pixels, lare = inputs(batch)
        feats = net.features(pixels, lare)
        assert feats["x_g"].shape == (batch, 32)
        assert feats["x_s"].shape == (batch, 128) and feats["x_c"].shape == (batch, 128)
        assert net(pixels, lare).shape == (batch, 2)
        assert detector(pixels, lare).shape == (batch,)
        assert net.head.in_features == 32 + 2 * 128
    finally:
        net.eval()


@torch.no_grad()
def test_lare_guides_both_refinement_branches(detector):
    net = detector.network.eval()
    pixels, lare = inputs(2)
    base = net.features(pixels, lare)
    bumped = lare.clone()
    bumped[:, :, :14, :14] *= 5
    moved = net.features(pixels, bumped)
    assert torch.equal(base["x_g"], moved["x_g"])
    assert not torch.allclose(base["x_s"], moved["x_s"])
    assert not torch.allclose(base["x_c"], moved["x_c"])
    assert not torch.allclose(net(pixels, lare), net(pixels, bumped))
    flipped = net.features(pixels, lare.flip(-1))
    assert torch.allclose(base["x_c"], flipped["x_c"], atol=1e-6)
    assert not torch.allclose(base["x_s"], flipped["x_s"])


def test_aligned_crop_keeps_pixels_and_latent_cells_together():
    lare = torch.arange(2 * 4 * 32 * 32, dtype=torch.float32).view(2, 4, 32, 32)
    frames = F.interpolate(lare[:, :3], scale_factor=8, mode="nearest")
    for top, left in [(0, 0), (8, 24), (32, 32), (centre_offset(256, 224), centre_offset(256, 224))]:
        pixels, cells = crop_aligned(frames, lare, top, left, 224)
        assert pixels.shape == (2, 3, 224, 224) and cells.shape == (2, 4, 28, 28)
        assert torch.equal(F.interpolate(cells[:, :3], scale_factor=8, mode="nearest"), pixels)
    with pytest.raises(ValueError, match="latent grid"):
        crop_aligned(frames, lare, 4, 0, 224)


def test_config_validation_and_round_trip(tiny_sd, tiny_clip):
    config = tiny_config(tiny_sd, tiny_clip)
    assert config_from_dict(Lare2Config, config_to_dict(config)) == config
    with pytest.raises(ValueError, match="multiple of 32"):
        Lare2Config(preprocess=config.preprocess.__class__(size=200))


def test_predict_is_deterministic_any_batch_and_survives_save_load(detector, tmp_path):
    images = [random_photo(i, (320, 240)) for i in range(3)]
    scores = [p.score for p in detector.predict(images, batch_size=3)]
    singles = [p.score for p in detector.predict(images, batch_size=1)]
    assert scores == pytest.approx(singles, abs=1e-5)
    assert all(0 <= s <= 1 for s in scores)
    folder = detector.save_pretrained(tmp_path / "lare2")
    saved = json.loads((folder / "config.json").read_text())
    assert saved["detector"] == "lare2" and saved["config"]["lare"]["backbone"]
    from safetensors.torch import load_file

    keys = load_file(str(folder / "model.safetensors")).keys()
    assert any(k.startswith("network.visual.") for k in keys)
    assert not any(k.startswith("lare_backbone.") for k in keys)
    loaded = load_detector(folder)
    assert isinstance(loaded, Lare2Detector)
    assert [p.score for p in loaded.predict(images)] == pytest.approx(scores, abs=1e-5)


def test_augmented_training_items_get_lare_of_the_degraded_pixels(detector, tiny_sd, tiny_clip,
                                                                   labelled_folder, tmp_path):
    from diffsleuth.detectors.lare2.training import Lare2TrainConfig, LareCropDataset, batch_inputs
    from diffsleuth.features.cache import FeatureCache, content_hash
    from diffsleuth.features.extract import extract_records
    from diffsleuth.io.datasets import load_records

    records = load_records(labelled_folder)[:2]
    cache = FeatureCache(tmp_path / "cache", detector.lare_backbone.cache_config())
    extract_records(detector.lare_backbone, records, cache, progress=False)
    config = Lare2TrainConfig(detector=detector.config, augment_prob=1.0)
    keys = [content_hash(r.path) for r in records]
    shape = detector.lare_backbone.map_shape()
    torch.manual_seed(0)
    augmented = LareCropDataset(records, keys, cache, shape, config, train=True)[0]
    clean = LareCropDataset(records, keys, cache, shape, config, train=False)[0]
    assert augmented["needs_lare"] and not clean["needs_lare"]
    assert augmented["top"] % 8 == 0 and augmented["left"] % 8 == 0
    batch = {k: (torch.stack([torch.as_tensor(augmented[k])]) if k != "prompt" else [augmented[k]])
             for k in augmented}
    _, lare = batch_inputs(batch, detector, torch.device("cpu"))
    want = detector.lare_backbone.compute(augmented["frame"][None], [augmented["seed"]], [augmented["prompt"]])
    top, left = augmented["top"] // 8, augmented["left"] // 8
    assert torch.allclose(lare[0], want[0, :, top:top + 28, left:left + 28], atol=1e-5)
    assert not torch.allclose(want[0], clean["lare"], atol=1e-3)


@pytest.mark.slow
def test_train_then_scan_on_shared_data(shared_data, tiny_sd, tiny_clip, tmp_path):
    from diffsleuth.cli.main import app

    output, cache = tmp_path / "run", tmp_path / "cache"
    result = CliRunner().invoke(app, [
        "train", "lare2", "--data", str(shared_data / "multigen"), "--output", str(output), "--device", "cpu",
        "--set", "max_images=48", "--set", "epochs=3", "--set", f"cache={cache}",
        "--set", "lr=3e-4", "--set", "detector.lare.ensemble=1",
        "--set", f"detector.lare.backbone={tiny_sd}", "--set", f"detector.clip_model={tiny_clip}",
        "--set", "detector.clip_pretrained=null",
    ])
    assert result.exit_code == 0, result.output
    report = json.loads((output / "training_report.json").read_text())
    losses = [epoch["train_loss"] for epoch in report["history"]]
    assert losses[-1] < losses[0]
    assert report["selected_on"] == "val" and 1 <= report["best_epoch"] <= 3
    assert {"acc", "acc_at_threshold", "threshold"} <= set(report["test"])
    files = sorted((shared_data / "multigen" / "real").rglob("*.webp"))[:3]
    scan = CliRunner().invoke(app, ["scan", *map(str, files), "--detector", str(output), "--format", "json",
                                    "--device", "cpu"])
    assert scan.exit_code == 0, scan.output
    rows = json.loads(scan.stdout)
    assert [r["path"] for r in rows] == list(map(str, files))
    assert all(0 <= r["score"] <= 1 and r["lare_mean"] > 0 for r in rows)
    loaded = load_detector(output)
    predictions = loaded.predict([random_photo(1, (256, 256)), random_photo(2, (200, 300))])
    assert len(predictions) == 2 and all(0 <= p.score <= 1 for p in predictions)
    assert all(set(p.extras) == set(loaded.extra_columns) for p in predictions)


def test_genimage_val_becomes_test_and_validation_is_held_out_of_train(tmp_path):
    from diffsleuth.detectors.lare2.training import Lare2TrainConfig, training_splits

    for split, count in (("train", 20), ("val", 3)):
        for folder in ("ai", "nature"):
            target = tmp_path / "gen" / "sdv4" / split / folder
            target.mkdir(parents=True)
            for i in range(count):
                random_photo(i, (16, 16)).save(target / f"{folder}_{i}.png")
    config = Lare2TrainConfig(data=[str(tmp_path / "gen")], val_fraction=0.25, rename_splits={"val": "test"})
    splits = training_splits(config)
    assert len(splits["test"]) == 6 and all(r.split == "val" for r in splits["test"])
    assert splits["val"] and len(splits["train"]) + len(splits["val"]) == 40
    assert not {r.path for r in splits["val"]} & {r.path for r in splits["train"]}
    assert training_splits(config) == splits


def test_shipped_genimage_config_parses():
    from pathlib import Path

    from diffsleuth.settings import load_json
    from diffsleuth.detectors.lare2.training import Lare2TrainConfig

    path = Path(__file__).resolve().parent.parent / "configs" / "lare2-genimage.json"
    config = config_from_dict(Lare2TrainConfig, load_json(path))
    assert config.rename_splits == {"val": "test"} and config.batch_size == 48 and config.lr == 1e-4
    assert config.detector.lare.timestep == 200 and config.detector.lare.ensemble == 4
    assert config.detector.clip_model == "RN50"


def test_the_relative_lare_map_is_the_score_map(detector):
    pred = detector.predict([random_photo(7, (320, 240))])[0]
    assert pred.score_map.shape == (28, 28)  # the latent cells of the 224 crop CLIP reads
    assert pred.score_map.max() == pytest.approx(1.0) and pred.score_map.min() >= 0
    assert "score_map" not in pred.extras and pred.extras["lare_mean"] > 0
