"""LaRE feature: the pure map against an independent loop, seeded extraction, cache and resume, CLI."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from conftest import random_photo
from diffsleuth.backbones.loading import load_stable_diffusion
from diffsleuth.features.cache import FeatureCache, content_hash
from diffsleuth.features.extract import extract_records, extractor_spec
from diffsleuth.detectors.lare2.features import LareConfig, lare_map, load_lare_extractor
from diffsleuth.io.datasets import ImageRecord, load_records
from diffsleuth.io.decode import decode_image


@pytest.fixture(scope="module")
def sd_parts(tiny_sd):
    return load_stable_diffusion(str(tiny_sd))


def small(tiny_sd, **kw) -> LareConfig:
    """A 64x64 frame and two draws: same code paths as 256/4, a fraction of the CPU time."""
    return LareConfig(**{"backbone": str(tiny_sd), "size": 64, "ensemble": 2, **kw})


@pytest.fixture(scope="module")
def extractor(tiny_sd):
    return load_lare_extractor(small(tiny_sd))


def reference_lare(unet, latents, noise, timestep, context):
    """Loop over images and draws; alphas from the scaled-linear betas written out by hand."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    abar = torch.cumprod(1.0 - betas, dim=0)[timestep]
    out = torch.zeros(latents.shape, dtype=torch.float64)
    for b in range(latents.shape[0]):
        for e in range(noise.shape[1]):
            eps = noise[b, e]
            x_t = (abar.sqrt() * latents[b].double() + (1 - abar).sqrt() * eps.double()).float()
            pred = unet(x_t[None], torch.tensor([timestep]), encoder_hidden_states=context[b:b + 1]).sample[0]
            out[b] += ((pred.double() - eps.double()) ** 2) / noise.shape[1]
    return out


@torch.no_grad()
def test_lare_map_matches_independent_loop(sd_parts):
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 16, 16, generator=gen)
    noise = torch.randn(2, 3, 4, 16, 16, generator=gen)
    context = torch.randn(2, 77, 32, generator=gen)
    got = lare_map(sd_parts.unet, sd_parts.scheduler, latents, noise, 200, context)
    want = reference_lare(sd_parts.unet, latents, noise, 200, context)
    assert got.shape == (2, 4, 16, 16) and got.dtype == torch.float32
    assert torch.allclose(got.double(), want, rtol=1e-4, atol=1e-6 * want.abs().max().item())
    shared = lare_map(sd_parts.unet, sd_parts.scheduler, latents, noise, 200, context[:1])
    want_shared = reference_lare(sd_parts.unet, latents, noise, 200, context[:1].expand(2, -1, -1))
    assert torch.allclose(shared.double(), want_shared, rtol=1e-4, atol=1e-6 * want.abs().max().item())


def test_lare_map_rejects_mismatched_noise(sd_parts):
    with pytest.raises(ValueError, match="noise"):
        lare_map(sd_parts.unet, sd_parts.scheduler, torch.zeros(2, 4, 8, 8), torch.zeros(2, 4, 8, 8), 200,
                 torch.zeros(1, 77, 32))


def test_default_frame_gives_4x32x32(tiny_sd):
    frames, lare = load_lare_extractor(LareConfig(backbone=str(tiny_sd), ensemble=1)).lare_for_images(
        [random_photo(0, (300, 200))])
    assert frames.shape == (1, 3, 256, 256) and lare.shape == (1, 4, 32, 32)
    assert 0 <= frames.min() and frames.max() <= 1


def test_extractor_is_seeded_and_batch_independent(extractor, tiny_sd):
    images = [random_photo(i, (300, 200)) for i in range(3)]
    alone = extractor.lare_for_images(images[1:2])[1]
    batch = extractor.lare_for_images(images)[1]
    again = extractor.lare_for_images(images)[1]
    assert batch.shape == (3, 4, 8, 8) and alone.shape == (1, 4, 8, 8)
    assert torch.equal(batch, again)
    assert torch.allclose(alone[0], batch[1], rtol=1e-4, atol=1e-5)
    reseeded = load_lare_extractor(small(tiny_sd, seed=1)).lare_for_images(images[1:2])[1]
    assert not torch.allclose(reseeded, alone)
    assert (batch >= 0).all()


def test_posterior_mean_option_and_prompts(tiny_sd, extractor):
    image = [random_photo(5)]
    mean = load_lare_extractor(small(tiny_sd, latent="mean")).lare_for_images(image)[1]
    assert not torch.allclose(mean, extractor.lare_for_images(image)[1])
    first = extractor.prompt_embedding("a photo")
    assert extractor.prompt_embedding("a photo") is first
    cat = ImageRecord(path=tiny_sd, label=1, class_name="tabby_cat")
    with_class = extractor.lare_for_images(image, [cat])[1]
    assert not torch.allclose(with_class, extractor.lare_for_images(image)[1])
    with pytest.raises(ValueError, match="latent"):
        LareConfig(latent="mode")


class FailingAfter:
    """Wraps an extractor and raises once ``limit`` images have been processed (a crash mid-run)."""

    def __init__(self, inner, limit: int) -> None:
        self.inner, self.limit, self.seen = inner, limit, 0

    def cache_config(self):
        return self.inner.cache_config()

    def extract(self, images, records):
        if self.seen + len(images) > self.limit:
            raise RuntimeError("simulated crash")
        self.seen += len(images)
        return self.inner.extract(images, records)


def test_cache_hits_and_resume_after_interruption(extractor, labelled_folder, tmp_path):
    records = load_records(labelled_folder)
    cache = FeatureCache(tmp_path / "cache", extractor.cache_config())
    with pytest.raises(RuntimeError, match="simulated crash"):
        extract_records(FailingAfter(extractor, 4), records, cache, batch_size=2, progress=False)
    assert len(cache) == 4
    resumed = extract_records(extractor, records, cache, batch_size=5, progress=False)
    assert (resumed.computed, resumed.cached) == (len(records) - 4, 4)
    rerun = extract_records(extractor, records, cache, batch_size=5, progress=False)
    assert (rerun.computed, rerun.cached) == (0, len(records))
    sample = [records[0], records[-1]]
    direct = extractor.lare_for_images([decode_image(r.path) for r in sample], sample)[1]
    for record, want in zip(sample, direct):
        assert torch.allclose(cache.get(content_hash(record.path))["lare"], want, rtol=1e-4, atol=1e-5)


def test_registered_extractor_and_cache_key(tiny_sd):
    spec = extractor_spec("lare")
    assert spec.config_class is LareConfig
    built = spec.build(LareConfig(backbone=str(tiny_sd), timestep=300), torch.device("cpu"), torch.float32)
    key = built.cache_config()
    assert key["timestep"] == 300 and key["dtype"] == "float32" and key["backbone"] == str(tiny_sd)


def test_extract_cli_with_local_backbone(tiny_sd, labelled_folder, tmp_path):
    from diffsleuth.cli.main import app

    args = ["extract", "lare", "--data", str(labelled_folder), "--cache", str(tmp_path / "c"),
            "--set", f"backbone={tiny_sd}", "--set", "ensemble=2", "--set", "size=64", "--device", "cpu", "--batch-size", "5"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "12 computed, 0 already cached" in first.output
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0 and "0 computed, 12 already cached" in second.output
