from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import random_photo
from diffsleuth.backbones import load_ddpm
from diffsleuth.cli.main import app
from diffsleuth.features.cache import FeatureCache
from diffsleuth.detectors.dnf.ddim import ddim_invert, ddim_reconstruct, ddim_step, dire_levels, dnf_levels
from diffsleuth.detectors.dnf.dire import DireConfig, dire_map
from diffsleuth.detectors.dnf.features import dnf_map
from diffsleuth.features.extract import extract_records
from diffsleuth.detectors.dnf.noise import NoiseFeatureConfig, NoiseFeatureExtractor, frame_batch, legacy_quantise
from diffsleuth.io.datasets import load_records

runner = CliRunner()


@pytest.fixture(scope="module")
def ddpm(tiny_ddpm):
    return load_ddpm(str(tiny_ddpm))


def images(batch: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


class Oracle(torch.nn.Module):
    """Predicts the exact noise that separates x_t from a known clean image x0."""

    def __init__(self, x0: torch.Tensor, alphas_cumprod: torch.Tensor) -> None:
        super().__init__()
        self.x0, self.abar = x0, alphas_cumprod

    def forward(self, x: torch.Tensor, t: torch.Tensor):
        a = float(self.abar[int(t[0])])
        return type("Out", (), {"sample": (x - math.sqrt(a) * self.x0) / math.sqrt(1 - a)})()


def test_one_step_dnf_is_the_noise_prediction_at_t0(ddpm):
    unet, scheduler = ddpm
    x = images(3)
    expected = unet(x, torch.zeros(3, dtype=torch.long)).sample
    got = dnf_map(unet, scheduler, x, num_steps=1)
    assert got.shape == x.shape and got.dtype == torch.float32
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())
    assert torch.equal(got, dnf_map(unet, scheduler, x, num_steps=1))


def test_batch_of_one_matches_the_batch(ddpm):
    unet, scheduler = ddpm
    x = images(3)
    together = dnf_map(unet, scheduler, x, num_steps=3)
    alone = dnf_map(unet, scheduler, x[1:2], num_steps=3)
    assert torch.allclose(together[1:2], alone, atol=1e-5)


def test_multi_step_dnf_and_dire_are_deterministic(ddpm):
    unet, scheduler = ddpm
    x = images(2)
    stack = dnf_map(unet, scheduler, x, num_steps=4, return_stack=True)
    assert stack.shape == (2, 4, 3, 32, 32)
    assert torch.allclose(stack.mean(dim=1), dnf_map(unet, scheduler, x, num_steps=4))
    assert torch.equal(dire_map(unet, scheduler, x, num_steps=3), dire_map(unet, scheduler, x, num_steps=3))
    assert (dire_map(unet, scheduler, x, num_steps=3) >= 0).all()


def test_levels_are_the_official_ones(ddpm):
    # Changed on purpose (issue 24): DNF ran over linspace(0, 999), DIRE over S+1 of those levels.
    _, scheduler = ddpm
    assert dnf_levels(scheduler, 1) == [0, 1000]
    assert dnf_levels(scheduler, 5) == [0, 200, 400, 600, 800, 1000]
    assert dire_levels(scheduler, 20) == list(range(0, 1000, 50))
    assert dire_levels(scheduler, 3) == [0, 334, 668]
    with pytest.raises(ValueError):
        dire_levels(scheduler, 0)


def test_k_step_dnf_predicts_the_noise_at_the_first_k_levels(ddpm):
    unet, scheduler = ddpm
    x = images(2)
    stack = dnf_map(unet, scheduler, x, num_steps=2, return_stack=True)
    first = unet(x, torch.zeros(2, dtype=torch.long)).sample
    abar = scheduler.alphas_cumprod
    x500 = ddim_step(x, first, float(abar[0]), float(abar[500]))
    second = unet(x500, torch.full((2,), 500, dtype=torch.long)).sample
    assert torch.allclose(stack[:, 0], first, atol=1e-5) and torch.allclose(stack[:, 1], second, atol=1e-5)


def test_dire_clips_the_predicted_x0(ddpm):
    x, eps = torch.tensor([0.5]), torch.tensor([-3.0])
    implied = (0.5 + math.sqrt(0.5) * 3) / math.sqrt(0.5)
    assert ddim_step(x, eps, 0.5, 1.0).item() == pytest.approx(implied)
    assert ddim_step(x, eps, 0.5, 1.0, clip=True).item() == pytest.approx(1.0)
    renoised = math.sqrt(0.2) * 1.0 + math.sqrt(0.8) * (0.5 - math.sqrt(0.5)) / math.sqrt(0.5)
    assert ddim_step(x, eps, 0.5, 0.2, clip=True).item() == pytest.approx(renoised)
    unet, scheduler = ddpm
    out = ddim_reconstruct(unet, scheduler, ddim_invert(unet, scheduler, images(1) * 3, 4), 4)
    assert out.abs().max() <= 1 + 1e-6  # the last step lands on the clipped x0


def test_frame_resizes_the_float_image_with_torchvision():
    """As the official DNF code: read 8 bits, resize the float tensor (antialiased bicubic), no rounding."""
    from torchvision.transforms import InterpolationMode, Resize

    image = random_photo(3, (300, 200))
    pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float()
    want = Resize((32, 32), interpolation=InterpolationMode.BICUBIC, antialias=True)(pixels) / 255 * 2 - 1
    got = frame_batch([image], 32)[0]
    assert torch.equal(got, want)
    assert not torch.allclose(got * 127.5, (got * 127.5).round(), atol=1e-3)  # not 8-bit any more
    assert torch.equal(frame_batch([image.resize((32, 32))], 32)[0],
                       torch.from_numpy(np.asarray(image.resize((32, 32))).copy()).permute(2, 0, 1) / 255 * 2 - 1)


def test_cache_key_carries_the_feature_revision(ddpm):
    unet, scheduler = ddpm
    key = NoiseFeatureExtractor("dnf", NoiseFeatureConfig(backbone="tiny"), unet, scheduler, dnf_map).cache_config()
    assert key["revision"] == 2
    # half-precision entries made before the DDIM trajectory moved to float32 must not be reused
    half = copy.deepcopy(unet).to(torch.float16)
    half_key = NoiseFeatureExtractor("dnf", NoiseFeatureConfig(backbone="tiny"), half, scheduler, dnf_map).cache_config()
    assert half_key["dtype"] == "float16" and half_key["revision"] == 3


def test_dnf_head_starts_from_the_official_initialisation():
    from diffsleuth.detectors.dnf.model import build_classifier

    torch.manual_seed(0)
    weight = build_classifier("resnet18").fc.weight.detach()
    assert abs(float(weight.std()) - 0.02) < 0.004 and abs(float(weight.mean())) < 0.004


def test_ddim_step_matches_the_formula_by_hand():
    x, eps = torch.tensor([0.3]), torch.tensor([-0.7])
    a_from, a_to = 0.9, 0.4
    x0 = (0.3 - math.sqrt(0.1) * -0.7) / math.sqrt(0.9)
    expected = math.sqrt(0.4) * x0 + math.sqrt(0.6) * -0.7
    assert ddim_step(x, eps, a_from, a_to).item() == pytest.approx(expected, rel=1e-6)


def test_inversion_then_reconstruction_returns_the_input_with_an_oracle(ddpm):
    _, scheduler = ddpm
    x0 = images(2, 16)
    oracle = Oracle(x0, scheduler.alphas_cumprod)
    x_t = ddim_invert(oracle, scheduler, x0, 50)
    assert not torch.allclose(x_t, x0)
    assert torch.allclose(ddim_reconstruct(oracle, scheduler, x_t, 50), x0, atol=1e-4)
    assert dire_map(oracle, scheduler, x0, num_steps=50).max() < 1e-4


def test_legacy_mode_clamps_and_quantises():
    feature = torch.randn(2, 3, 8, 8)
    legacy = legacy_quantise(feature)
    assert legacy.min() >= 0 and legacy.max() <= 1
    assert torch.allclose(legacy * 255, (legacy * 255).round(), atol=1e-4)
    assert (legacy[feature < 0] == 0).all()
    assert legacy_quantise(feature, jpeg_quality=90).shape == feature.shape


def test_extraction_uses_the_cache_and_resumes(ddpm, tmp_path, labelled_folder):
    unet, scheduler = ddpm
    config = NoiseFeatureConfig(backbone="tiny", size=32)
    extractor = NoiseFeatureExtractor("dnf", config, unet, scheduler, dnf_map)
    records = load_records(labelled_folder)

    class Crashing:
        calls = 0

        def cache_config(self):
            return extractor.cache_config()

        def extract(self, imgs, recs):
            Crashing.calls += 1
            if Crashing.calls > 2:
                raise KeyboardInterrupt
            return extractor.extract(imgs, recs)

    cache = FeatureCache(tmp_path / "cache", extractor.cache_config())
    with pytest.raises(KeyboardInterrupt):
        extract_records(Crashing(), records, cache, batch_size=2, progress=False)
    assert len(cache) == 4
    report = extract_records(extractor, records, cache, batch_size=2, progress=False)
    assert (report.cached, report.computed) == (4, len(records) - 4)
    again = extract_records(extractor, records, cache, batch_size=2, progress=False)
    assert again.computed == 0 and again.cached == len(records)
    stored = next(iter(cache.directory.glob("*/*.safetensors")))
    from safetensors.torch import load_file

    assert load_file(str(stored))["dnf"].dtype == torch.float16


def test_cli_extract_train_and_scan(tiny_ddpm, tmp_path, shared_data):
    cache = tmp_path / "cache"
    result = runner.invoke(app, ["extract", "dnf", "--data", str(shared_data / "multigen" / "real"),
                                 "--cache", str(cache), "--set", f"backbone={tiny_ddpm}", "--set", "size=32",
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    for recipe, steps in (("dnf", 1), ("dire", 2)):
        out = tmp_path / recipe
        result = runner.invoke(app, [
            "train", recipe, "--data", str(shared_data / "multigen"), "--output", str(out), "--device", "cpu",
            "--set", "max_images=48", "--set", "epochs=3", "--set", f"cache={cache}",
            "--set", "detector.arch=resnet18", "--set", "detector.feature.size=32",
            "--set", f"detector.feature.num_steps={steps}", "--set", f"detector.feature.backbone={tiny_ddpm}"])
        assert result.exit_code == 0, result.output
        import json

        history = json.loads((out / "training_report.json").read_text())["history"]
        assert history[-1]["train_loss"] < history[0]["train_loss"]
        photo = tmp_path / "photo.png"
        random_photo(4).save(photo)
        scan = runner.invoke(app, ["scan", str(photo), "--detector", str(out), "--format", "json"])
        assert scan.exit_code == 0, scan.output
        assert 0 <= json.loads(scan.stdout)[0]["score"] <= 1


def test_dire_config_defaults_to_twenty_steps():
    assert DireConfig().num_steps == 20


def test_a_half_precision_unet_leaves_the_ddim_trajectory_in_float32(ddpm):
    """Only the UNet runs in bf16: a half-precision state loses the image where DDIM divides by
    sqrt(alpha_bar) (about 0.006 at DIRE's top level), which once cost DIRE in bf16 half its value."""
    import copy

    unet, scheduler = ddpm
    half = copy.deepcopy(unet).to(torch.bfloat16)
    seen = []
    half.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    x = images(1, 16)
    x_t = ddim_invert(half, scheduler, x, 2)
    assert x_t.dtype == torch.float32 and seen == [torch.bfloat16] * 2
    assert ddim_reconstruct(half, scheduler, x_t, 2).dtype == torch.float32
    assert all(noise.dtype == torch.float32 for noise in dnf_map(half, scheduler, x, 2, return_stack=True))
    assert dire_map(half, scheduler, x.to(torch.bfloat16), 2).dtype == torch.float32
