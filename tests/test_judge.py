"""Natural-trace judge: loss behaviour, score and calibration, training determinism, shipped weights."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import random_photo
from safetensors.torch import load_file
from typer.testing import CliRunner

from diffsleuth.cli.main import app
from diffsleuth.settings import config_from_dict
from diffsleuth.detectors.base import WeightsError
from diffsleuth.detectors.image_grid import grid_crops, limit_scale
from diffsleuth.detectors.judge.model import JudgeConfig, JudgeDetector, count_parameters, judge_loss
from diffsleuth.detectors.judge.training import (TRAINING_LOG, JudgeTrainConfig, fit_calibration, run,
                                                 train_batch, weight_average)
from diffsleuth.detectors.registry import SHIPPED, load_detector

TINY_MODEL = {"width": 4, "embed_dim": 8, "proj_hidden": 16, "num_traces": 2,
              "preprocess": {"size": 64, "policy": "center_crop"}}


def tiny_train_config(data, output, **extra) -> JudgeTrainConfig:
    settings = {"data": [str(data)], "output": str(output), "device": "cpu", "seed": 3,
                "val_fraction": 0.3, "test_fraction": 0.0, "epochs": 2, "batch_size": 4,
                "crop_size": 32, "val_size": 32, "threads": 1, "model": TINY_MODEL}
    settings.update(extra)
    return config_from_dict(JudgeTrainConfig, settings)


def traces_and_unit(*vectors):
    return [F.normalize(torch.tensor(v, dtype=torch.float32), dim=-1) for v in vectors]


def test_reals_on_a_trace_cost_less_than_reals_off_it():
    traces = torch.eye(4)[:2]
    labels = torch.tensor([0, 0, 1])
    fake = torch.eye(4)[3]
    on = torch.stack([traces[0], traces[0], fake])
    off = torch.stack(traces_and_unit([0.0, 0.0, 1.0, 0.2], [0.0, 0.1, 1.0, 0.0]) + [fake])
    assert judge_loss(on, labels, traces)["loss"] < judge_loss(off, labels, traces)["loss"]


def test_a_fake_near_a_trace_raises_the_loss():
    traces = torch.eye(4)[:2]
    labels = torch.tensor([0, 1])
    far = torch.stack([traces[0], torch.eye(4)[3]])
    near = torch.stack([traces[0], F.normalize(traces[1] + 0.1 * torch.eye(4)[3], dim=0)])
    loss_far, loss_near = judge_loss(far, labels, traces), judge_loss(near, labels, traces)
    assert loss_near["fake_push"] > loss_far["fake_push"]
    assert loss_near["loss"] > loss_far["loss"]


def test_pull_fakes_and_real_only_batches_are_defined():
    z = F.normalize(torch.randn(6, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    traces = torch.randn(3, 8, generator=torch.Generator().manual_seed(1))
    mixed = torch.tensor([0, 0, 1, 1, 0, 1])
    assert judge_loss(z, mixed, traces, pull_fakes=True)["loss"] != judge_loss(z, mixed, traces)["loss"]
    only_real = judge_loss(z, torch.zeros(6, dtype=torch.long), traces)
    assert torch.isfinite(only_real["loss"]) and only_real["fake_push"] == 0


def test_score_is_calibrated_monotonic_and_uses_the_stored_threshold():
    model = JudgeDetector.from_config(config_from_dict(JudgeConfig, TINY_MODEL)).eval()
    similarity = torch.linspace(-1, 1, 21)
    probs = torch.sigmoid(model.calibrate(similarity))
    assert torch.all(probs[1:] < probs[:-1]), "closer to a trace must mean less likely generated"
    assert probs.min() >= 0 and probs.max() <= 1
    images = [random_photo(i, (80, 70)) for i in range(3)]
    scores = [p.score for p in model.predict(images)]
    assert all(0.0 <= s <= 1.0 for s in scores)
    model.config.threshold = min(scores)
    assert all(p.label == "generated" for p in model.predict(images))
    model.config.threshold = 1.0
    assert all(p.label == "real" for p in model.predict(images))


def test_fit_calibration_is_decreasing_and_bounds_validation_fpr():
    rng = np.random.default_rng(0)
    sims = np.concatenate([rng.normal(0.8, 0.1, 200), rng.normal(0.2, 0.2, 200)])
    labels = np.array([0] * 200 + [1] * 200)
    slope, intercept, threshold = fit_calibration(labels, sims, target_fpr=0.05)
    assert slope < 0 and 0.5 <= threshold < 1
    probs = 1 / (1 + np.exp(-(slope * sims + intercept)))
    assert np.mean(probs[labels == 0] >= threshold) <= 0.05 + 1e-9


def test_grid_crops_keep_native_pixels_and_pad_small_images():
    big = random_photo(1, (400, 300))
    crops = grid_crops(big, 64, 3)
    assert len(crops) == 9 and all(c.size == (64, 64) for c in crops)
    assert np.array_equal(np.asarray(crops[0]), np.asarray(big)[:64, :64])
    assert grid_crops(random_photo(2, (40, 30)), 64, 1)[0].size == (64, 64)
    assert limit_scale(big, 150).size == (200, 150)
    assert limit_scale(big, None) is big and limit_scale(big, 500) is big


def test_training_augmentation_treats_both_classes_alike():
    cfg = tiny_train_config(".", ".")
    preprocess = config_from_dict(JudgeConfig, TINY_MODEL).preprocess
    photo = random_photo(0, (120, 100))
    real = train_batch([photo] * 3, [0, 0, 0], cfg, preprocess, random.Random(0))
    fake = train_batch([photo] * 3, [1, 1, 1], cfg, preprocess, random.Random(0))
    assert real.shape == (3, 3, 32, 32) and torch.equal(real, fake)


def test_history_equalisation_gives_only_generated_images_an_earlier_jpeg():
    from diffsleuth.detectors.judge.training import degrade
    from diffsleuth.io.degrade import jpeg

    cfg = tiny_train_config(".", ".", history_quality=[70, 70], jpeg_prob=0.0, rescale_prob=0.0,
                            blur_prob=0.0)
    photo = random_photo(0, (64, 64))
    assert degrade(photo, 0, cfg, random.Random(0)) is photo
    assert np.array_equal(np.asarray(degrade(photo, 1, cfg, random.Random(0))),
                          np.asarray(jpeg(photo, 70)))


def test_training_is_deterministic_and_round_trips(labelled_folder, tmp_path):
    first = run(tiny_train_config(labelled_folder, tmp_path / "a"))
    second = run(tiny_train_config(labelled_folder, tmp_path / "b"))
    wa, wb = load_file(str(first / "model.safetensors")), load_file(str(second / "model.safetensors"))
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert json.loads((first / "config.json").read_text())["config"] == \
        json.loads((second / "config.json").read_text())["config"]

    images = [random_photo(i, (90, 70)) for i in range(4)]
    model = JudgeDetector.from_config(config_from_dict(JudgeConfig, TINY_MODEL)).eval()
    model.load_state_dict(wa)
    model.config = load_detector(first).config
    reloaded = load_detector(first)
    assert isinstance(reloaded, JudgeDetector)
    assert [p.score for p in model.predict(images)] == [p.score for p in reloaded.predict(images)]
    log = json.loads((first / TRAINING_LOG).read_text())
    assert len(log["history"]) == 2 and 1 <= log["best_epoch"] <= 2


def test_weight_average_is_an_exponential_moving_average_of_weights_and_statistics():
    model = JudgeDetector.from_config(config_from_dict(JudgeConfig, TINY_MODEL))
    assert weight_average(model, None) is None
    average = weight_average(model, 0.9)
    first = {k: v.clone() for k, v in model.state_dict().items()}
    average.update_parameters(model)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(1.0)
    average.update_parameters(model)
    for key, value in average.module.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, first[key] + 0.1, atol=1e-6), key


def test_training_with_a_weight_average_is_deterministic_and_saves_the_average(labelled_folder, tmp_path):
    plain = run(tiny_train_config(labelled_folder, tmp_path / "plain"))
    runs = [run(tiny_train_config(labelled_folder, tmp_path / name, ema_decay=0.5)) for name in "ab"]
    wa, wb, wp = (load_file(str(out / "model.safetensors")) for out in (*runs, plain))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wp[k]) for k in wa)


def test_a_short_training_run_lowers_the_loss():
    torch.manual_seed(0)
    model = JudgeDetector.from_config(config_from_dict(JudgeConfig, TINY_MODEL)).train()
    batch = torch.stack([torch.from_numpy(np.asarray(random_photo(i, (32, 32)), dtype=np.float32) / 127.5 - 1)
                         .permute(2, 0, 1) for i in range(8)])
    labels = torch.tensor([0, 1] * 4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = judge_loss(model.embed(batch), labels, model.traces)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.9


def test_holdout_families_never_reach_training(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    rows = ["file,label,generator,family"]
    for i in range(12):
        random_photo(i, (48, 48)).save(folder / f"{i}.png")
        rows.append(f"{i}.png,{'real' if i % 2 else 'fake'},g,{'keep' if i % 3 else 'held'}")
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    from diffsleuth.detectors.judge.training import usable_splits

    splits = usable_splits(tiny_train_config(folder, tmp_path / "o", holdout_families=["held"]))
    assert all(r.family != "held" for r in splits["train"] + splits["val"])


def test_split_seed_keeps_the_split_while_the_seed_changes(tmp_path):
    from diffsleuth.detectors.training import split_records

    folder = tmp_path / "data"
    folder.mkdir()
    for i in range(40):
        random_photo(i, (16, 16)).save(folder / f"{i}.png")
    (folder / "manifest.csv").write_text(
        "file,label\n" + "".join(f"{i}.png,{'real' if i % 2 else 'fake'}\n" for i in range(40)))

    def split_of(**seeds):
        cfg = tiny_train_config(folder, tmp_path / "o", **seeds)
        return {name: sorted(r.path.name for r in rs) for name, rs in split_records(cfg).items()}

    assert split_of(seed=3, split_seed=0) == split_of(seed=0) == split_of(seed=7, split_seed=0)
    assert split_of(seed=3) != split_of(seed=0)


def test_training_reads_images_at_the_inference_scale_and_repeats_named_families(tmp_path):
    from diffsleuth.detectors.judge.training import load_images, repeat_families
    from diffsleuth.io.datasets import ImageRecord

    random_photo(0, (300, 200)).save(tmp_path / "big.png")
    random_photo(1, (40, 30)).save(tmp_path / "small.png")
    big = ImageRecord(tmp_path / "big.png", 0, family="photos")
    small = ImageRecord(tmp_path / "small.png", 1, family="gen")
    records = repeat_families([big, small], {"photos": 3})
    assert records == [big, big, big, small]
    images = load_images(records, 100, "test")
    assert images[0].size == (150, 100) and images[3].size == (40, 30)
    assert images[0] is images[2]


def test_native_crops_are_unscaled_seeded_and_skip_small_files(tmp_path):
    from diffsleuth.detectors.judge.training import add_native_crops, load_images
    from diffsleuth.io.datasets import ImageRecord

    random_photo(0, (300, 200)).save(tmp_path / "big.png")
    random_photo(1, (40, 30)).save(tmp_path / "small.png")
    big = ImageRecord(tmp_path / "big.png", 0, family="photos")
    small = ImageRecord(tmp_path / "small.png", 0, family="photos")
    records = [big, big, small]
    images = load_images(records, 100, "test")
    out_records, out_images = add_native_crops(records, images, {"photos": 2}, 64, seed=0)
    assert out_records == records + [big, big]
    assert [im.size for im in out_images[3:]] == [(64, 64), (64, 64)]
    original = np.asarray(random_photo(0, (300, 200)))
    for crop in out_images[3:]:
        crop = np.asarray(crop)
        found = any(np.array_equal(window, crop) or np.array_equal(window[:, ::-1], crop)
                    for top in range(0, 200 - 63) for left in range(0, 300 - 63)
                    for window in [original[top:top + 64, left:left + 64]])
        assert found, "a native crop must be a pixel-exact window of the unscaled file"
    again = add_native_crops(records, images, {"photos": 2}, 64, seed=0)[1]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(again[3:], out_images[3:]))


def test_clip_encoder_is_external_and_not_saved(tiny_clip, tmp_path):
    config = config_from_dict(JudgeConfig, {
        "encoder": "clip", "backbone": str(tiny_clip), "front_end": "none", "embed_dim": 8,
        "proj_hidden": 16, "num_traces": 2, "preprocess": {"size": 224, "policy": "center_crop"}})
    model = JudgeDetector.from_config(config).eval()
    assert model.embed(torch.zeros(2, 3, 224, 224)).shape == (2, 8)
    folder = model.save_pretrained(tmp_path / "clip-judge")
    assert not any(k.startswith("encoder.") for k in load_file(str(folder / "model.safetensors")))
    assert load_detector(folder).predict([random_photo(0, (300, 240))])[0].score == \
        model.predict([random_photo(0, (300, 240))])[0].score


@pytest.fixture(scope="module")
def shipped():
    try:
        return load_detector(runtime="torch")  # the torch judge (tests/test_torch_free.py: the runtime)
    except WeightsError as exc:
        pytest.fail(f"the shipped default detector does not load: {exc}")


def test_shipped_default_loads_scores_and_fits_the_size_limits(shipped):
    assert isinstance(shipped, JudgeDetector)
    assert count_parameters(shipped) <= 5_000_000
    assert (SHIPPED["default"] / "model.safetensors").stat().st_size <= 20 * 1024 * 1024
    predictions = shipped.predict([random_photo(0, (640, 480)), random_photo(1, (100, 90))])
    assert len(predictions) == 2 and all(0 <= p.score <= 1 for p in predictions)
    assert all(set(p.extras) == set(shipped.extra_columns) for p in predictions)
    assert 0 < shipped.config.threshold < 1


def test_scan_without_detector_uses_the_shipped_default(tmp_path, shipped):
    image = tmp_path / "photo.jpg"
    random_photo(5, (300, 200)).save(image, quality=90)
    result = CliRunner().invoke(app, ["scan", str(image), "--format", "json"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)[0]
    assert row["error"] is None and row["label"] in ("generated", "real")


def test_model_card_lists_false_positives_of_real_only_sets():
    from diffsleuth.evaluation.judge_card import debian_text, history_text, real_sets_table

    report = {"real_sets": {"debian-photos/val/jpeg:90": {"model_fpr": 0.25, "colour_histogram_fpr": 0.0,
                                                          "n": 4, "rows": []}}}
    assert "| debian-photos/val/jpeg:90 | 25.0% | 0.0% | 4 |" in real_sets_table(report)
    assert real_sets_table({}) == "No real-only data set in this run."
    assert "quality 80-98" in history_text(tiny_train_config(".", ".", history_quality=[80, 98]))
    assert history_text(tiny_train_config(".", ".")) == "off."
    cfg = tiny_train_config("photos/debian-photos.csv", ".", family_repeats={"debian-photos": 3})
    text = debian_text({"debian_packages": {"a-wallpapers": 2, "b-doc": 1}}, cfg)
    assert text.startswith("3 more real photographs") and "`a-wallpapers` (2), `b-doc` (1)" in text
    assert "`photos/debian-photos.csv`" in text and "repeated 3x" in text
    assert debian_text({}, cfg) == "not used in this run."


def test_the_compact_judge_stays_available_by_name():
    compact = load_detector("judge-compact")
    assert isinstance(compact, JudgeDetector) and compact.config.encoder == "cnn"
    assert compact.predict([random_photo(0, (300, 200))])[0].score_map is None  # one centre crop: no map
