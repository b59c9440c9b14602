from __future__ import annotations

import pytest
import torch

from diffsleuth.backbones import (
    BackboneUnavailableError,
    load_clip,
    load_ddpm,
    load_resnet50,
    load_stable_diffusion,
)


def test_tiny_stable_diffusion_round_trips_through_the_loader(tiny_sd):
    parts = load_stable_diffusion(str(tiny_sd))
    assert type(parts.unet).__name__ == "UNet2DConditionModel"
    assert type(parts.vae).__name__ == "AutoencoderKL"
    assert parts.vae.config.scaling_factor == pytest.approx(0.18215)
    assert parts.scheduler.config.beta_schedule == "scaled_linear"
    assert not any(p.requires_grad for p in parts.unet.parameters())
    latents = parts.vae.encode(torch.zeros(1, 3, 256, 256)).latent_dist.mean
    assert latents.shape == (1, 4, 32, 32)
    ids = parts.tokenizer(["a photo"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    hidden = parts.text_encoder(ids)[0]
    assert parts.unet(latents, 200, encoder_hidden_states=hidden).sample.shape == latents.shape


def test_tiny_stable_diffusion_loads_identically_twice(tiny_sd):
    a = load_stable_diffusion(str(tiny_sd)).unet.state_dict()
    b = load_stable_diffusion(str(tiny_sd)).unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_tiny_ddpm_round_trips(tiny_ddpm):
    unet, scheduler = load_ddpm(str(tiny_ddpm))
    assert type(unet).__name__ == "UNet2DModel"
    assert scheduler.config.beta_schedule == "linear"
    assert scheduler.config.beta_start == pytest.approx(1e-4)
    assert unet(torch.zeros(1, 3, 64, 64), 0).sample.shape == (1, 3, 64, 64)


def test_tiny_clip_is_the_rn50_class(tiny_clip):
    model = load_clip(str(tiny_clip))
    assert type(model.visual).__name__ == "ModifiedResNet"
    assert model.encode_image(torch.zeros(2, 3, 224, 224)).shape == (2, 32)


def test_dtype_is_explicit(tiny_ddpm):
    unet, _ = load_ddpm(str(tiny_ddpm), dtype=torch.bfloat16)
    assert next(unet.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize("loader", [
    lambda: load_stable_diffusion("stable-diffusion-v1-5/stable-diffusion-v1-5"),
    lambda: load_ddpm("google/ddpm-bedroom-256"),
])
def test_hub_ids_offline_fail_with_a_helpful_message(loader):
    with pytest.raises(BackboneUnavailableError) as info:
        loader()
    message = str(info.value)
    assert "download it" in message and "pass the folder" in message


def test_clip_hub_tag_offline_fails_helpfully():
    with pytest.raises(BackboneUnavailableError, match="CLIP model 'RN50'"):
        load_clip("RN50", "openai")


def test_resnet50_from_scratch_and_from_local_safetensors(tmp_path):
    from safetensors.torch import save_file

    net = load_resnet50(num_classes=1)
    assert net.fc.out_features == 1
    import torchvision

    backbone = torchvision.models.resnet50(weights=None)
    save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, str(tmp_path / "r50.safetensors"))
    loaded = load_resnet50(str(tmp_path / "r50.safetensors"), num_classes=2)
    assert torch.equal(loaded.conv1.weight, backbone.conv1.weight)
    assert loaded.fc.out_features == 2


@pytest.mark.parametrize("load", [
    "from diffsleuth.backbones.loading import load_clip; load_clip('hf-hub:attacker/evil-clip')",
    "from diffsleuth.backbones.loading import load_stable_diffusion; load_stable_diffusion('attacker/evil-sd')",
    "from diffsleuth.backbones.loading import load_resnet50; load_resnet50('IMAGENET1K_V2')",
])
def test_a_hub_id_from_a_config_never_reaches_the_network_unless_allowed(tmp_path, load):
    """Hub offline mode is NOT set here: the loaders alone must keep a named model local."""
    from no_network import run_guarded

    script = (f"from diffsleuth.backbones.loading import BackboneUnavailableError\n"
              f"try:\n    {load}\nexcept BackboneUnavailableError as exc:\n    print(exc)\n")
    result, refused, sockets = run_guarded(
        ["-c", script], tmp_path, env={"HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch")})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "DIFFSLEUTH_HUB_DOWNLOAD=1" in result.stdout
    assert refused == "" and sockets == []


def test_hub_downloads_are_off_unless_the_variable_allows_them(monkeypatch):
    from diffsleuth.backbones import hub

    monkeypatch.delenv(hub.DOWNLOAD_VARIABLE, raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    probes = []
    monkeypatch.setattr(hub, "hub_reachable", lambda *a: probes.append(a) or True)
    assert hub.check_hub() is False and probes == [] and hub.hub_offline()
    monkeypatch.setenv(hub.DOWNLOAD_VARIABLE, "1")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert hub.check_hub() is True and len(probes) == 1
