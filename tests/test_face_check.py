"""The close-up-face domain check: it wins over any score, both runtimes agree, the shipped one holds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from diffsleuth.detectors import load_detector
from diffsleuth.detectors.judge.domain import DomainConfig, domain_verdict
from diffsleuth.detectors.judge.face_check import reference_half
from diffsleuth.detectors.judge.head_training import encode_views
from diffsleuth.detectors.judge.model import JudgeDetector
from diffsleuth.detectors.registry import resolve_detector_path
from diffsleuth.evaluation.heldout import HoldOut, gather_samples
from diffsleuth.verdict import GENERATED, OUTSIDE_DOMAIN, decide_detector_verdict
from tiny_onnx import tiny_judge_config

FACE = "a close-up face"


def test_a_face_overrides_a_score_at_the_threshold_and_other_checks_do_not():
    assert decide_detector_verdict(0.9, 0.5, 0.2, outside_domain=True, overrides=True) == OUTSIDE_DOMAIN
    assert decide_detector_verdict(0.9, 0.5, 0.2, outside_domain=True) == GENERATED
    assert decide_detector_verdict(0.9, 0.5, 0.2, outside_domain=False, overrides=True) == GENERATED
    domain = DomainConfig(centroids=2, max_distance=0.5, face_centroids=2, max_face_margin=0.05)
    face = domain_verdict((512, 512), 0.1, 0.3, 0.06, domain)
    assert face["outside_overrides"] is True and face["outside_domain"].startswith(FACE)
    assert domain_verdict((512, 512), 0.1, 0.3, 0.05, domain) == {"outside_domain": None}
    assert domain_verdict((32, 32), 0.1, 0.3, 0.0, domain)["outside_domain"].startswith("too small")
    assert domain_verdict((512, 512), 0.9, None, None, DomainConfig(centroids=2, max_distance=0.5)).keys() == {
        "outside_domain"}


def noise_image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def face_judge(tmp_path_factory):
    """The tiny ONNX judge whose face centroid is the embedding of a flat grey image."""
    folder = tmp_path_factory.mktemp("face-judge")
    config = tiny_judge_config(folder, centroids=3, max_distance=2.0)
    config.domain.face_centroids, config.domain.max_face_margin, config.threshold = 1, 0.0, 0.0
    config.uncertain_threshold = 0.0
    model = JudgeDetector.from_config(config)
    generator = torch.Generator().manual_seed(1)
    grey = Image.new("RGB", (256, 256), (128, 128, 128))
    model.domain_faces = encode_views(model, [grey])[0][:1].float()
    # the noise image is the training reference itself: its face margin is negative
    model.domain_centroids = torch.cat([encode_views(model, [noise_image()])[0][:1].float(),
                                        torch.randn(2, 8, generator=generator)])
    model.domain_outside = torch.randn(2, 8, generator=generator)
    return model.save_pretrained(folder / "detector"), grey


def test_both_runtimes_put_the_face_outside_whatever_its_score(face_judge):
    folder, grey = face_judge
    noise = noise_image()
    runtime, torch_judge = load_detector(folder), load_detector(folder, runtime="torch")
    for model in (runtime, torch_judge):
        assert "face_margin" in model.extra_columns
        face, other = model.predict([grey, noise])
        assert face.score >= 0.0 and face.detector_verdict == OUTSIDE_DOMAIN and face.outside_overrides
        assert face.outside_domain.startswith(FACE) and face.extras["face_margin"] > 0
        assert not other.outside_overrides and other.detector_verdict == GENERATED  # threshold 0: all flagged
    ours, theirs = runtime.predict([grey, noise]), torch_judge.predict([grey, noise])
    for a, b in zip(ours, theirs):
        assert a.extras["face_margin"] == pytest.approx(b.extras["face_margin"], abs=2e-6)


def test_the_reference_is_a_seeded_half_of_each_face_family(tmp_path):
    lines = ["file,label,generator,family"]
    for i in range(6):
        for label, family in (("real", "faces"), ("fake", "gan-faces")):
            path = tmp_path / f"{family}-{i}.png"
            Image.new("RGB", (8, 8), (i, 3 * i, 7)).save(path)
            lines.append(f"{path.name},{label},x,{family}")
    Image.new("RGB", (8, 8)).save(tmp_path / "other.png")
    lines.append("other.png,real,x,landscapes")
    (tmp_path / "manifest.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    samples = gather_samples([str(tmp_path)], HoldOut())
    half = reference_half(samples, seed=0)
    assert [s.record.family for s in half].count("faces") == 3 and len(half) == 6
    assert [s.record.path for s in half] == [s.record.path for s in reference_half(list(reversed(samples)), 0)]
    assert {s.record.path for s in half} != {s.record.path for s in reference_half(samples, seed=1)}


def test_shipped_default_puts_unseen_close_up_faces_outside_and_keeps_camera_photos_in():
    folder = resolve_detector_path("default")
    config = json.loads((folder / "config.json").read_text())["config"]["domain"]
    assert config["face_centroids"] == 8 and len(config["reference"]["faces"]["sha256"]) == 115
    rates = json.loads((folder / "card_metrics.json").read_text())["verdict_rates"]
    for spec in ("jpeg:90", "jpeg:75"):
        unseen = rates["sets"][f"real FFHQ faces (not in the face reference)/{spec}"]
        assert unseen["generated"]["rate"] <= 0.03 and unseen[OUTSIDE_DOMAIN]["rate"] >= 0.95
        name = f"camera photos (camera-originals)/{spec}"
        not_faces = sum(n for why, n in rates["outside_reasons"][name].items() if why != FACE)
        assert not_faces / rates["sets"][name][OUTSIDE_DOMAIN]["n"] <= 0.05  # >= 95% pass the other checks
