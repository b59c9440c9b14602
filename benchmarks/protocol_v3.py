"""Choose the default judge head by the leave-one-family-out x leave-one-real-source-out protocol.

Reads CLIP features from the cache that ``diffsleuth train judge-head`` fills (fill it first,
e.g. by training with ``--set cache=DIR`` on these data roots, or by calling
``head_training.cached_features`` on them), then for each variant
(a training recipe and a head) runs every fold of :mod:`diffsleuth.evaluation.loo_protocol`:

- grid: 11 fake families x 8 real sources (the 7 multigen families, SD 1.4, the 2022-era pair,
  the 5 GANs, StyleGAN2 faces; BSDS500, Unsplash, ImageNet, three camera-make groups, FFHQ, the
  GANs' matched reals), threshold at 5% and 1% of the held-out real source;
- each GAN generator alone, and PixArt + Kandinsky together (v2's held-out pair), x the 8 sources;
- shipped-threshold check: trained without ImageNet and without FFHQ / camera / GAN reals, the
  threshold flagging 5% of ImageNet; share of the unseen faces, camera photos, GAN reals flagged.

    PYTHONPATH=src python benchmarks/protocol_v3.py --cache /tmp/v3-cache/features \
        --variants v2-judge,all-bal-judge --out /tmp/v3/protocol.json

``--card-metrics FOLDER --card-variant NAME`` stores that variant's summary and the issue's
targets (met or missed) under ``protocol`` in FOLDER/card_metrics.json, which the model card shows.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from diffsleuth.detectors.judge.model import JudgeConfig
from diffsleuth.evaluation.card import store_card_metrics
from diffsleuth.evaluation.feature_heads import HeadOptions, trainer_for
from diffsleuth.evaluation.loo_protocol import (Fold, FeatureSet, cached_keys, flagged_at_calibration,
                                                 grid_folds, load_feature_set, run_fold, summarise)
from diffsleuth.settings import config_from_dict, load_json

DATA = "../shared/data"
ROOTS = ("sd14-vs-unsplash", "multigen", "imagenet-samples", "generalisation", "camera-originals")
MULTIGEN = ("sdxl", "pixart", "kandinsky", "hunyuandit", "playground", "kolors", "cascade")
FAKES = (*MULTIGEN, "sd14", "2022-era", "gan", "stylegan2-faces")
GANS = ("cyclegan", "gaugan", "stargan", "crn", "imle")
CAMERAS = ("camera-canon", "camera-nikon-sony-panasonic", "camera-other")
REALS = ("bsds500", "unsplash", "imagenet", *CAMERAS, "ffhq", "gan-real")
V2_SOURCES = (*MULTIGEN, "sd14", "bsds500", "unsplash", "imagenet")
BREADTH_SOURCES = (*FAKES, "bsds500", "unsplash", "imagenet")
CHECKS = ("ffhq", "camera", "gan-real")
HARD_REALS = (*CAMERAS, "ffhq", "gan-real")
# a social-media-like delivery: JPEG, downscale, WebP, JPEG again (the same for both classes)
CHAIN = "jpeg:85+down:0.75+webp:80+jpeg:80"

# name -> (sources a fold may train on; None = all, head options[, deliveries added to training])
VARIANTS: dict[str, tuple] = {
    "v2-judge": (V2_SOURCES, HeadOptions("judge")),
    "v2-logreg": (V2_SOURCES, HeadOptions("logreg")),
    "breadth-bal-judge": (BREADTH_SOURCES, HeadOptions("judge", balance=True)),
    "breadth-bal-logreg": (BREADTH_SOURCES, HeadOptions("logreg", balance=True)),
    "v2+hard-reals-judge": ((*V2_SOURCES, *HARD_REALS), HeadOptions("judge")),
    "v2+camera-judge": ((*V2_SOURCES, *CAMERAS), HeadOptions("judge")),
    "v2+2022+gan-judge": ((*V2_SOURCES, "2022-era", "gan", "gan-real"), HeadOptions("judge")),
    "all-but-faces-judge": ((*V2_SOURCES, "2022-era", "gan", "gan-real", *CAMERAS), HeadOptions("judge")),
    "all-logreg": (None, HeadOptions("logreg")),
    "all-judge": (None, HeadOptions("judge")),
    "all-bal-judge": (None, HeadOptions("judge", balance=True)),
    "all-bal-blend-judge": (None, HeadOptions("judge", balance=True, blend=0.25)),
    "all-bal-logreg": (None, HeadOptions("logreg", balance=True)),
    "all-bal-mlp": (None, HeadOptions("mlp", balance=True)),
    "all-bal-mlp-positive": (None, HeadOptions("mlp", balance=True, positive=True)),
    "all-bal-blend-mlp-positive": (None, HeadOptions("mlp", balance=True, positive=True, blend=0.25)),
    "v2-judge+q75": (V2_SOURCES, HeadOptions("judge"), ("jpeg:75",)),
    "v2-judge+chain": (V2_SOURCES, HeadOptions("judge"), (CHAIN,)),
    "v2+camera-judge+q75": ((*V2_SOURCES, *CAMERAS), HeadOptions("judge"), ("jpeg:75",)),
    "all-bal-judge+q75": (None, HeadOptions("judge", balance=True), ("jpeg:75",)),
    "all-bal-judge+chain": (None, HeadOptions("judge", balance=True), (CHAIN,)),
    "all-bal-logreg+q75": (None, HeadOptions("logreg", balance=True), ("jpeg:75",)),
    "all-bal-logreg+chain": (None, HeadOptions("logreg", balance=True), (CHAIN,)),
}


def train_mask(data: FeatureSet, sources: tuple[str, ...] | None) -> np.ndarray:
    return np.ones(len(data.labels), bool) if sources is None else np.isin(data.sources, sources)


def run_variant(data: FeatureSet, name: str, sections: set[str], deliveries: dict[str, FeatureSet]) -> dict:
    sources, opts, *extra = VARIANTS[name]
    if extra:
        data = data.with_extra([deliveries[spec] for spec in extra[0]])
    trainer, mask = trainer_for(opts), train_mask(data, sources)
    out: dict = {"options": asdict(opts), "train_sources": sources or "all"}
    started = time.monotonic()
    folds = {"grid": grid_folds(FAKES, REALS),
             "per_gan": grid_folds(GANS, REALS, "per_gan"),
             "pixart_kandinsky": [Fold(("pixart", "kandinsky"), r, "pixart_kandinsky") for r in REALS]}
    for section, fold_list in folds.items():
        if section in sections:
            results = [run_fold(data, fold, trainer, mask) for fold in fold_list]
            out[section] = summarise(results)
            out[section]["folds_detail"] = [{"fold": r.fold.name, **r.caught} for r in results]
    if "checks" in sections:
        camera = np.isin(data.sources, CAMERAS)
        merged = FeatureSet(data.features, data.labels, np.where(camera, "camera", data.sources), data.generators,
                            extra=data.extra)
        out["checks"] = flagged_at_calibration(merged, trainer, mask, "imagenet", CHECKS)
    out["seconds"] = round(time.monotonic() - started, 1)
    return out


def targets(r: dict) -> list[dict]:
    """Issue #30's done-when, each with what this variant measured."""
    g5, g1 = r["grid"]["5%"], r["grid"]["1%"]
    # the "each GAN generator caught when its family is left out": per generator in the GAN folds
    per_gan = {gen: rate for gen, rate in g5["by_generator"].items() if gen in GANS}
    rows = [("mean over grid folds, 5% FPR", ">=", 0.93, g5["mean"]),
            ("mean over grid folds, 1% FPR", ">=", 0.80, g1["mean"]),
            ("worst grid fold, 5% FPR", ">=", 0.60, g5["worst"]),
            *((f"{gan}, GAN family left out, 5% FPR (mean over real sources)", ">=", 0.70, per_gan[gan])
              for gan in GANS if gan in per_gan),
            ("2022-era pair left out, 5% FPR (mean over real sources)", ">=", 0.70, g5["by_fake"]["2022-era"]),
            *((f"unseen {check} flagged at the ImageNet-5% threshold", "<=", 0.03, r["checks"][check]["5%"])
              for check in ("ffhq", "camera") if check in r.get("checks", {})),
            ("PixArt + Kandinsky left out together, 5% FPR", ">=", 0.97,
             r.get("pixart_kandinsky", {}).get("5%", {}).get("mean"))]
    return [{"what": what, "target": f"{op} {goal:.2f}", "measured": value,
             "met": value is not None and (value >= goal if op == ">=" else value <= goal)}
            for what, op, goal, value in rows]


def card_summary(r: dict, name: str, command: str) -> dict:
    """What the model card shows of one variant: summaries without per-fold detail, and the targets."""
    keep = {k: {kk: vv for kk, vv in v.items() if kk != "folds_detail"} if isinstance(v, dict) else v
            for k, v in r.items()}
    return {"variant": name, "command": command, "targets": targets(r), **keep}


def pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def table(results: dict) -> str:
    head = ("| variant | grid mean 5% | worst 5% | mean 1% | worst 1% | GAN fam 5% (worst gen) | per-GAN out 5% "
            "(worst) | 2022 5% / 1% | StyleGAN2 faces 5% / 1% | PixArt+Kand 5% | FFHQ / camera / GAN reals "
            "flagged at ImageNet-5% |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, r in results.items():
        g5, g1 = r.get("grid", {}).get("5%", {}), r.get("grid", {}).get("1%", {})
        gens = {k: v for k, v in g5.get("by_generator", {}).items() if k in GANS}
        per = r.get("per_gan", {}).get("5%", {}).get("by_fake", {})
        fam5, fam1 = g5.get("by_fake", {}), g1.get("by_fake", {})
        checks = r.get("checks", {})
        lines.append(" | ".join([
            f"| {name}", pct(g5.get("mean")), pct(g5.get("worst")), pct(g1.get("mean")), pct(g1.get("worst")),
            f"{pct(fam5.get('gan'))} ({pct(min(gens.values()) if gens else None)})",
            f"{pct(np.mean(list(per.values())) if per else None)} ({pct(min(per.values()) if per else None)})",
            f"{pct(fam5.get('2022-era'))} / {pct(fam1.get('2022-era'))}",
            f"{pct(fam5.get('stylegan2-faces'))} / {pct(fam1.get('stylegan2-faces'))}",
            pct(r.get("pixart_kandinsky", {}).get("5%", {}).get("mean")),
            " / ".join(pct(checks.get(c, {}).get("5%")) for c in CHECKS) + " |"]))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--cache", required=True, help="feature cache root (judge-head's `cache`)")
    parser.add_argument("--config", default="src/diffsleuth/configs/judge-clip-default.json")
    parser.add_argument("--degradation", default="jpeg:90")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--sections", default="grid,per_gan,pixart_kandinsky,checks")
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=1, help="1 is fastest on a busy machine")
    parser.add_argument("--table-only", action="store_true", help="print the table of --out and stop")
    parser.add_argument("--card-metrics", type=Path, help="a detector folder: store --card-variant of --out there")
    parser.add_argument("--card-variant", help="the variant whose recipe the detector was trained with")
    args = parser.parse_args()
    if args.table_only or args.card_metrics:
        results = json.loads(Path(args.out).read_text())
        print(table(results))
        if args.card_metrics:
            store_in_card(args.card_metrics, results, args.card_variant, args.degradation)
        return
    torch.set_num_threads(args.threads)
    model = config_from_dict(JudgeConfig, load_json(args.config)["model"])
    names = args.variants.split(",")
    specs = sorted({spec for name in names for spec in (VARIANTS[name][2] if len(VARIANTS[name]) > 2 else ())})
    keys = cached_keys(args.cache, model, args.degradation)
    for spec in specs:  # every variant of a run sees the same images
        keys &= cached_keys(args.cache, model, spec)
    roots = [str(Path(args.data) / r) for r in ROOTS]
    data = load_feature_set(roots, args.cache, model, args.degradation, keys)
    deliveries = {spec: load_feature_set(roots, args.cache, model, spec, keys) for spec in specs}
    counts = {s: int((data.sources == s).sum()) for s in sorted(set(data.sources))}
    print(json.dumps({"images": len(data.labels), "skipped (not cached)": data.skipped, "by_source": counts}))
    out_path = Path(args.out)
    results = json.loads(out_path.read_text()) if out_path.is_file() else {}
    for name in names:
        results[name] = run_variant(data, name, set(args.sections.split(",")), deliveries)
        results[name]["images"], results[name]["skipped"] = len(data.labels), data.skipped
        out_path.write_text(json.dumps(results, indent=1) + "\n")
        print(f"{name}: {results[name]['seconds']} s", flush=True)
    print(table(results))


def store_in_card(folder: Path, results: dict, variant: str | None, degradation: str) -> None:
    if variant not in results:
        raise SystemExit(f"--card-variant {variant!r} is not in --out (it holds: {', '.join(results)})")
    command = ("PYTHONPATH=src python benchmarks/protocol_v3.py --cache DIR --out protocol.json "
               f"--degradation {degradation} --variants {variant}")
    path = store_card_metrics(folder, "protocol",
                              {**card_summary(results[variant], variant, command), "degradation": degradation})
    print(f"stored {variant} under protocol in {path}")


if __name__ == "__main__":
    main()
