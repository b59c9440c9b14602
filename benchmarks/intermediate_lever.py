"""Issue #30's intermediate-blocks lever: the judge head on the class token of *every* CLIP block.

The final CLIP embedding summarises content; the class token after the early and middle blocks
still carries lower-level statistics (RINE, ECCV'24: "Leveraging Representations from Intermediate
Encoder-blocks" found them to generalise across GANs and diffusion models). The tower stays
frozen, so this is as cheap to ship as the frozen head: an ONNX graph with 12 more outputs.

Extraction (``--extract``) caches, per image of the protocol's data roots at JPEG q90, a tensor
(views, 12, 768) fp16: the class token after each of the 12 blocks (before the final LayerNorm).
Variants (the judge head of the shipped recipe on each; the same reduced grid and checks as
``lastblock_lever.py``, so its ``frozen`` rows compare):

- ``final``: the frozen embedding (final LayerNorm and projection of block 12's class token),
  i.e. what the shipped default reads: the baseline, from the same cache;
- ``blocks-all`` / ``blocks-mid`` (blocks 4-9) / ``blocks-early`` (blocks 1-6): each block's
  class token centred and scaled to unit length, concatenated (divided by the square root of
  the number of blocks, so a row has unit length).

    PYTHONPATH=src python benchmarks/intermediate_lever.py --cache /tmp/cls --extract
    PYTHONPATH=src python benchmarks/intermediate_lever.py --cache /tmp/cls --out lever.json \\
        --fakes gan,2022-era,stylegan2-faces,sd14 --reals imagenet,ffhq,camera-other
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lastblock_lever import TRAIN_SETS, cache_activations, grid_arguments, load_cached_set, run  # noqa: E402
from protocol_v3 import ROOTS, table  # noqa: E402

from diffsleuth.evaluation.feature_heads import HeadOptions, judge_trainer  # noqa: E402
from diffsleuth.detectors.judge.model import JudgeConfig  # noqa: E402
from diffsleuth.evaluation.loo_protocol import FeatureSet  # noqa: E402
from diffsleuth.features.cache import FeatureCache  # noqa: E402
from diffsleuth.settings import config_from_dict, load_json  # noqa: E402

KEY = {"kind": "clip-vit-b16 class token per block", "degradation": "jpeg:90", "precision": "fp32"}
BLOCKS = {"blocks-all": range(12), "blocks-mid": range(3, 9), "blocks-early": range(0, 6)}


def extract(model: JudgeConfig, roots: Sequence[str], cache_root: Path, threads: int) -> None:
    """Cache (views, 12, 768) fp16 per image: the class token after each block, float32 tower."""

    def class_tokens(tower, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h, cls = tower.tokens(x, 0), []
        for block in tower.blocks:
            h = block(h)
            cls.append(h[:, 0])
        return {"cls": torch.stack(cls, 1).to(torch.float16)}
    cache_activations(model, roots, FeatureCache(cache_root, KEY), threads, torch.float32, class_tokens)


def final_embedding(model: JudgeConfig):
    """Block 12's class token -> the frozen CLIP embedding (final LayerNorm, projection)."""
    from diffsleuth.backbones.clip_torch import load_clip_tower

    tower = load_clip_tower(model.backbone, model.backbone_sha256).eval()

    def embed(cls: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return tower.visual_projection(tower.vision_model.post_layernorm(cls[:, -1].float())).float()
    return embed


def per_block(blocks: Sequence[int]):
    """Each chosen block's class token centred and of unit length, concatenated (unit length overall)."""
    def embed(cls: torch.Tensor) -> torch.Tensor:
        x = cls[:, list(blocks)].float()
        x = x - x.mean(-1, keepdim=True)
        x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        return x.flatten(1) / len(blocks) ** 0.5
    return embed


def load_set(roots: Sequence[str], cache_root: Path, embed) -> FeatureSet:
    """The protocol's FeatureSet, each image's features ``embed`` of its cached class tokens."""
    return load_cached_set(roots, FeatureCache(cache_root, KEY), lambda entry: embed(entry["cls"]))


def main() -> None:
    parser = grid_arguments(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--cache", required=True, type=Path)
    parser.add_argument("--variants", default="final,blocks-all,blocks-mid,blocks-early")
    args = parser.parse_args()
    model = config_from_dict(JudgeConfig, load_json(args.config)["model"])
    roots = [str(Path(args.data) / r) for r in ROOTS]
    if args.extract:
        extract(model, roots, args.cache, args.threads)
        return
    torch.set_num_threads(args.threads)
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    for name in args.variants.split(","):
        embed = final_embedding(model) if name == "final" else per_block(BLOCKS[name])
        data = load_set(roots, args.cache, embed)
        print(json.dumps({"variant": name, "images": len(data.labels), "skipped (not cached)": data.skipped,
                          "dim": int(data.features[0].shape[1])}), flush=True)
        key = f"{args.train}-judge-{name}"
        trainer = judge_trainer(HeadOptions("judge", epochs=args.epochs))
        results[key] = {**run(data, trainer, TRAIN_SETS[args.train], args.fakes.split(","), args.reals.split(",")),
                        "epochs": args.epochs}
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        print(f"{key}: {results[key]['seconds']} s", flush=True)
    print(table(results))


if __name__ == "__main__":
    main()
