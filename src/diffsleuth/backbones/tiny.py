"""Tiny random models of the real backbone classes, saved in the real on-disk layouts.

Tests, CLI checks and timing scripts build these instead of downloading gigabytes, and load them
back through :mod:`diffsleuth.backbones.loading`, the same code that loads real weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def _byte_vocab() -> dict[str, int]:
    """A CLIP-style byte-level vocabulary with no merges: every token is a single byte."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = iter(range(256, 512))
    chars = [chr(b) if b in printable else chr(next(extra)) for b in range(256)]
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}


def make_tiny_stable_diffusion(directory: str | Path, seed: int = 0) -> Path:
    """A diffusers Stable Diffusion folder (vae/unet/text_encoder/tokenizer/scheduler), ~1 M params.

    Same classes and latent geometry as SD v1.x: 4 latent channels, 8x spatial downsampling,
    scaling factor 0.18215, scaled-linear schedule 0.00085..0.012 over 1000 steps.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    directory = Path(directory)
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4,
        sample_size=256, scaling_factor=0.18215,
    )
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        attention_head_dim=4, norm_num_groups=8,
    )
    vocab = _byte_vocab()
    (directory / "tokenizer").mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer" / "vocab.json").write_text(json.dumps(vocab))
    (directory / "tokenizer" / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(directory / "tokenizer" / "vocab.json"),
                              str(directory / "tokenizer" / "merges.txt"), model_max_length=77)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77,
        bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    ))
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", prediction_type="epsilon",
                              clip_sample=False)
    vae.save_pretrained(directory / "vae")
    unet.save_pretrained(directory / "unet")
    text_encoder.save_pretrained(directory / "text_encoder")
    tokenizer.save_pretrained(directory / "tokenizer")
    scheduler.save_pretrained(directory / "scheduler")
    (directory / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline",
        "vae": ["diffusers", "AutoencoderKL"], "unet": ["diffusers", "UNet2DConditionModel"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDPMScheduler"],
    }, indent=2))
    return directory


def make_tiny_ddpm(directory: str | Path, seed: int = 0) -> Path:
    """An unconditional ``UNet2DModel`` + linear ``DDPMScheduler`` folder, like google/ddpm-*."""
    from diffusers import DDPMScheduler, UNet2DModel

    directory = Path(directory)
    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=32, in_channels=3, out_channels=3, layers_per_block=1,
        block_out_channels=(16, 32), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8,
    )
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                              beta_schedule="linear", prediction_type="epsilon")
    unet.save_pretrained(directory)
    scheduler.save_pretrained(directory)
    return directory


TINY_CLIP_CFG = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "layers": [1, 1, 1, 1], "width": 8, "patch_size": None},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 1},
}


def make_tiny_clip(directory: str | Path, seed: int = 0) -> Path:
    """An open_clip ModifiedResNet CLIP (the RN50 class, 8x narrower) in the hub folder layout.

    Its layer-3 map has 128 channels at 14x14 for a 224 input (RN50: 1024 channels).
    """
    import open_clip
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = {"model_cfg": TINY_CLIP_CFG,
              "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                                 "std": [0.26862954, 0.26130258, 0.27577711]}}
    (directory / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    model = open_clip.create_model(f"local-dir:{directory}", load_weights=False)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "open_clip_model.safetensors"))
    return directory
