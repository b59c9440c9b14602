"""Issue #30's fine-tuning lever on a CPU: the CLIP tower's last block trained for the class token.

A frozen CLIP embedding summarises an image's content; generation traces may sit in the patch
tokens the class token ignores. This lever makes the last transformer block's *query path*
trainable (the class token's query, the attention output projection, the MLP, the final norm
and projection, initialised from the pinned weights) with the judge head, while the block's
keys and values over the 197 tokens stay frozen: they are computed once per crop and cached,
so a fold trains in seconds instead of running the tower (the "frozen trunk's activations
cacheable" hook of #29).

Extraction (``--extract``) writes, per image of the protocol's data roots at JPEG q90, a tensor
(views, 1 + 2 x 197, 768) fp16: the class token entering block 11, then that block's keys and
values; then the protocol (:mod:`diffsleuth.evaluation.loo_protocol`, the grid, the
PixArt + Kandinsky pair and the shipped-threshold checks, as ``protocol_v3.py`` runs them)
grades the lever against the frozen head on the same images::

    PYTHONPATH=src python benchmarks/lastblock_lever.py --kv-cache /tmp/kv --extract
    PYTHONPATH=src python benchmarks/lastblock_lever.py --kv-cache /tmp/kv --out lastblock.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from protocol_v3 import CAMERAS, CHECKS, DATA, FAKES, REALS, ROOTS, V2_SOURCES, table  # noqa: E402

from diffsleuth.backbones.clip_weights import dequantised_state  # noqa: E402
from diffsleuth.backbones.pypi_weights import resolve_file  # noqa: E402
from diffsleuth.evaluation.feature_heads import (HeadOptions, _batches, _fit, judge_trainer, mean_by_image,  # noqa: E402
                                                 new_judge, row_weights)
from diffsleuth.detectors.judge.model import JudgeConfig, judge_loss, trace_similarity  # noqa: E402
from diffsleuth.evaluation.heldout import HoldOut, gather_samples  # noqa: E402
from diffsleuth.evaluation.loo_protocol import (Fold, FeatureSet, camera_makes, flagged_at_calibration,  # noqa: E402
                                                 grid_folds, protocol_source, run_fold, summarise)
from diffsleuth.features.cache import FeatureCache, content_hash  # noqa: E402
from diffsleuth.settings import config_from_dict, load_json  # noqa: E402

TRAIN_SETS = {"v2": V2_SOURCES, "v2+camera": (*V2_SOURCES, *CAMERAS)}
LAST = 11
TOKENS, WIDTH, HEADS = 197, 768, 12
KV_KEY = {"kind": "clip-vit-b16 last-block keys/values", "block": LAST, "degradation": "jpeg:90"}
# The tower runs in bf16 where the CPU has bf16 kernels and in fp32 where it has none (bf16 was
# 7.5x slower than fp32 on an AVX2-only CPU); the cache key says which, so the two never mix.
EXTRACT_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def last_block_state(model: JudgeConfig) -> dict[str, torch.Tensor]:
    state = dequantised_state(resolve_file(model.backbone, model.backbone_sha256))
    return {k: torch.from_numpy(v) for k, v in state.items()}


def kv_key(precision: str) -> dict:
    return {**KV_KEY, "precision": precision}


def cache_activations(model: JudgeConfig, roots: Sequence[str], cache: FeatureCache, threads: int,
                      dtype: torch.dtype, activations) -> None:
    """Per image not yet in ``cache`` (JPEG q90, the crops the detector reads, the pinned tower in
    ``dtype``): store ``activations(tower, pixels)``, a dict of tensors."""
    from diffsleuth.backbones.clip_torch import load_clip_tower
    from diffsleuth.detectors.judge.model import JudgeDetector
    from diffsleuth.io.decode import decode_image
    from diffsleuth.io.degrade import parse_degradation
    from diffsleuth.io.preprocess import normalize, to_tensor

    torch.set_num_threads(threads)
    tower = load_clip_tower(model.backbone, model.backbone_sha256).to(dtype).eval()

    class _NoEncoder(nn.Module):
        out_dim = 512

    judge = JudgeDetector(model, encoder=_NoEncoder())
    degrade = parse_degradation("jpeg:90")
    samples = [s for root in roots for s in gather_samples([root], HoldOut())]
    started = time.monotonic()
    for n, sample in enumerate(samples):
        key = content_hash(sample.record.path)
        if key in cache:
            continue
        views, _, _ = judge.views(degrade(decode_image(sample.record.path)))
        x = normalize(torch.stack([to_tensor(v) for v in views]), model.preprocess).to(dtype)
        with torch.no_grad():
            cache.put(key, activations(tower, x))
        if n % 200 == 0:
            print(f"{n}/{len(samples)} images, {time.monotonic() - started:.0f} s", flush=True)


def extract(model: JudgeConfig, roots: Sequence[str], cache_root: Path, threads: int, precision: str) -> None:
    """Cache (views, 1 + 2 x 197, 768) per image: the class token entering the last block, its keys, values."""

    def keys_values(tower, x: torch.Tensor) -> dict[str, torch.Tensor]:
        block = tower.blocks[LAST]
        h = tower.tokens(x, LAST)
        normed = block.layer_norm1(h)
        kv = torch.cat([h[:, :1], block.self_attn.k_proj(normed), block.self_attn.v_proj(normed)], 1)
        return {"kv": kv.to(torch.float16)}
    cache_activations(model, roots, FeatureCache(cache_root, kv_key(precision)), threads, EXTRACT_DTYPES[precision],
                      keys_values)


def load_cached_set(roots: Sequence[str], cache: FeatureCache, read) -> FeatureSet:
    """The protocol's FeatureSet (in load_feature_set's order), each image's features ``read(entry)``."""
    feats, labels, sources, generators, skipped = [], [], [], [], 0
    for root in roots:
        makes = camera_makes(root)
        for sample in gather_samples([root], HoldOut()):
            record = sample.record
            entry = cache.get(content_hash(record.path))
            if entry is None:
                skipped += 1
                continue
            feats.append(read(entry))
            labels.append(record.label)
            sources.append(protocol_source(record.label, record.family, record.generator, root, makes, record.path.name))
            generators.append(record.generator or sources[-1])
    return FeatureSet(feats, np.array(labels), np.array(sources), np.array(generators), skipped)


def load_kv_set(roots: Sequence[str], cache_root: Path, precision: str) -> FeatureSet:
    """Each image's cached keys/values as its 'features'."""
    return load_cached_set(roots, FeatureCache(cache_root, kv_key(precision)), lambda entry: entry["kv"])


class QueryBlock(nn.Module):
    """CLIP's last block for the class token only, keys/values given; then the final norm and projection."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        super().__init__()
        prefix = f"vision_model.encoder.layers.{LAST}."
        self.ln1, self.ln2, self.post = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
        self.q, self.out = nn.Linear(WIDTH, WIDTH), nn.Linear(WIDTH, WIDTH)
        self.fc1, self.fc2 = nn.Linear(WIDTH, 3072), nn.Linear(3072, WIDTH)
        self.proj = nn.Linear(WIDTH, 512, bias=False)
        pairs = {"ln1": "layer_norm1", "ln2": "layer_norm2", "q": "self_attn.q_proj", "out": "self_attn.out_proj",
                 "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
        with torch.no_grad():
            for mine, theirs in pairs.items():
                getattr(self, mine).weight.copy_(state[f"{prefix}{theirs}.weight"])
                getattr(self, mine).bias.copy_(state[f"{prefix}{theirs}.bias"])
            self.post.weight.copy_(state["vision_model.post_layernorm.weight"])
            self.post.bias.copy_(state["vision_model.post_layernorm.bias"])
            self.proj.weight.copy_(state["visual_projection.weight"])

    def forward(self, kv: torch.Tensor) -> torch.Tensor:
        kv = kv.float()
        h, keys, values = kv[:, 0], kv[:, 1:1 + TOKENS], kv[:, 1 + TOKENS:]
        b, d = len(h), WIDTH // HEADS
        q = self.q(self.ln1(h)).view(b, HEADS, d) * d ** -0.5
        att = torch.einsum("bhd,bnhd->bhn", q, keys.view(b, TOKENS, HEADS, d)).softmax(-1)
        h = h + self.out(torch.einsum("bhn,bnhd->bhd", att, values.view(b, TOKENS, HEADS, d)).reshape(b, WIDTH))
        mid = self.fc1(self.ln2(h))
        h = h + self.fc2(mid * torch.sigmoid(1.702 * mid))
        return self.proj(self.post(h))


def frozen_trainer(state: dict[str, torch.Tensor], opts: HeadOptions):
    """The shipped recipe's judge head on the frozen tower's embeddings (the block run once per crop)."""
    block, embedded = QueryBlock(state).eval(), {}

    def embed(features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        with torch.no_grad():
            return [block(f) for f in features]

    def train(data: FeatureSet, mask: np.ndarray):
        if id(data) not in embedded:
            embedded[id(data)] = FeatureSet(embed(data.features), data.labels, data.sources, data.generators)
        score = judge_trainer(opts)(embedded[id(data)], mask)
        return lambda features: score(embed(features))
    return train


def lastblock_trainer(state: dict[str, torch.Tensor], opts: HeadOptions, block_lr: float):
    """The judge head trained jointly with :class:`QueryBlock` at ``block_lr``."""

    def train(data: FeatureSet, mask: np.ndarray):
        rows, owner, labels = data.rows(mask)
        torch.manual_seed(opts.seed)
        block, head = QueryBlock(state), new_judge(dim=512)
        params = [{"params": [p for n, p in head.named_parameters() if not n.startswith("encoder.")]},
                  {"params": list(block.parameters()), "lr": block_lr}]
        total = max(1, len(rows) // opts.batch_size) * opts.epochs
        _fit(params, lambda x, y: judge_loss(head.embed_features(block(x)), y, head.traces)["loss"],
             _batches(rows, torch.as_tensor(labels), row_weights(data, owner, opts.balance), opts), total, opts)
        block.eval(), head.eval()

        def score(features: Sequence[torch.Tensor]) -> np.ndarray:
            with torch.no_grad():
                z = torch.cat([head.embed_features(block(part)) for part in torch.cat(list(features)).split(512)])
                sims = trace_similarity(z, head.traces)
            return -mean_by_image(sims.max(1).values, features)
        return score
    return train


def run(data: FeatureSet, trainer, sources: tuple[str, ...], fakes: Sequence[str], reals: Sequence[str]) -> dict:
    mask = np.isin(data.sources, sources)
    out: dict = {"train_sources": list(sources), "held_out_fakes": list(fakes), "held_out_reals": list(reals)}
    started = time.monotonic()
    folds = {"grid": grid_folds(fakes, reals),
             "pixart_kandinsky": [Fold(("pixart", "kandinsky"), r, "pixart_kandinsky") for r in reals]}
    for section, fold_list in folds.items():
        results = [run_fold(data, fold, trainer, mask) for fold in fold_list]
        out[section] = summarise(results)
        out[section]["folds_detail"] = [{"fold": r.fold.name, **r.caught} for r in results]
        print(f"  {section}: {time.monotonic() - started:.0f} s", flush=True)
    camera = np.isin(data.sources, CAMERAS)
    merged = FeatureSet(data.features, data.labels, np.where(camera, "camera", data.sources), data.generators)
    out["checks"] = flagged_at_calibration(merged, trainer, mask, "imagenet", CHECKS)
    out["seconds"] = round(time.monotonic() - started, 1)
    return out


def grid_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options every cached-activation lever shares: data, model config, grid, training, output."""
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--config", default="src/diffsleuth/configs/judge-clip-default.json")
    parser.add_argument("--extract", action="store_true", help="fill the cache, then stop")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fakes", default=",".join(FAKES), help="held-out families of the grid (all 11 by default)")
    parser.add_argument("--reals", default=",".join(REALS), help="held-out real sources of the grid (all 8 by default)")
    parser.add_argument("--train", choices=sorted(TRAIN_SETS), default="v2",
                        help="training sources: v2's, or v2's plus the camera originals (the protocol's best frozen recipe)")
    return parser


def main() -> None:
    parser = grid_arguments(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--kv-cache", required=True, type=Path)
    parser.add_argument("--variants", default="frozen,lastblock")
    parser.add_argument("--block-lr", type=float, default=1e-5)
    parser.add_argument("--lastblock-epochs", type=int, help="epochs of the lever (default: --epochs)")
    parser.add_argument("--extract-precision", choices=sorted(EXTRACT_DTYPES), default="bf16",
                        help="the tower precision of the cached keys/values (fp32 on CPUs without bf16 kernels)")
    args = parser.parse_args()
    model = config_from_dict(JudgeConfig, load_json(args.config)["model"])
    roots = [str(Path(args.data) / r) for r in ROOTS]
    if args.extract:
        extract(model, roots, args.kv_cache, args.threads, args.extract_precision)
        return
    torch.set_num_threads(args.threads)
    data = load_kv_set(roots, args.kv_cache, args.extract_precision)
    print(json.dumps({"images": len(data.labels), "skipped (not cached)": data.skipped}), flush=True)
    state = last_block_state(model)
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    for name in args.variants.split(","):
        epochs = args.epochs if name == "frozen" else (args.lastblock_epochs or args.epochs)
        opts = HeadOptions("judge", epochs=epochs)
        trainer = frozen_trainer(state, opts) if name == "frozen" else lastblock_trainer(state, opts, args.block_lr)
        key = f"{args.train}-judge-{name}"
        results[key] = {**run(data, trainer, TRAIN_SETS[args.train], args.fakes.split(","), args.reals.split(",")),
                        "block_lr": 0.0 if name == "frozen" else args.block_lr, "epochs": epochs}
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        print(f"{key}: {results[key]['seconds']} s", flush=True)
    print(table(results))


if __name__ == "__main__":
    main()
