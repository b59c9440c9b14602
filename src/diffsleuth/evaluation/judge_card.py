"""Measure the compact judge (``judge-compact``) for its model card, as it was made.

Kept so that card's numbers can be regenerated exactly; new cards come from ``diffsleuth card``
(:mod:`diffsleuth.evaluation.card`), which works for any detector.

Every number is computed here from the training config (same seeded splits), never typed in:
``python -m diffsleuth.evaluation.judge_card --detector DIR --config CFG`` writes
``card_metrics.json`` and ``MODEL_CARD.md`` into DIR. A colour-histogram logistic regression,
trained on the same training split, is reported beside the model on every set, because a model
that only matches it has learned content, not generation traces.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from diffsleuth.settings import apply_overrides, config_from_dict, load_json
from diffsleuth.detectors.judge.model import JudgeDetector, count_parameters
from diffsleuth.detectors.judge.training import (JudgeTrainConfig, choose_threshold, degrade,
                                                 load_images, repeat_families, usable_splits)
from diffsleuth.detectors.registry import load_detector
from diffsleuth.detectors.training import split_records
from diffsleuth.evaluation.card import HistogramBaseline
from diffsleuth.evaluation.metrics import binary_metrics
from diffsleuth.evaluation.out_of_domain import wheel_photos
from diffsleuth.io.datasets import load_records
from diffsleuth.io.decode import decode_image
from diffsleuth.io.degrade import parse_degradation

ROBUSTNESS = ("jpeg:90", "jpeg:75", "none")
TEXTURES = ("brick.png", "grass.png", "gravel.png")
WALLPAPERS = Path(__file__).resolve().parents[1] / "configs" / "mate-nature-photos.csv"
DEBIAN_ROOT = "debian-photos"  # stem of the package manifest, also its family name
HEADLINE = ("auc", "ap", "acc", "real_acc", "fake_acc", "tpr_at_5fpr", "eer")


def model_scores(model: JudgeDetector, images: Sequence[Image.Image]) -> np.ndarray:
    return np.array([p.score for p in model.predict(list(images), batch_size=32)])


def summarise(labels: Sequence[int], scores: np.ndarray, threshold: float) -> dict:
    metrics = binary_metrics(labels, scores, threshold=threshold, n_bootstrap=1000, seed=0)
    return {k: metrics[k] for k in (*HEADLINE, "n", "n_real", "n_fake", "ci")}


def both(model: JudgeDetector, baseline: HistogramBaseline, images: Sequence[Image.Image],
         labels: Sequence[int]) -> dict:
    return {"model": summarise(labels, model_scores(model, images), model.config.threshold),
            "colour_histogram": summarise(labels, baseline.scores(images), baseline.threshold)}


def per_root_splits(cfg: JudgeTrainConfig) -> dict[str, dict]:
    """Each data root's own splits (assignment is per file, so identical to the combined run's)."""
    return {Path(root).stem if root.endswith(".csv") else Path(root).name:
            split_records(replace(cfg, data=[root])) for root in cfg.data}


def photo_scores(model: JudgeDetector, baseline: HistogramBaseline,
                 named: dict[str, Image.Image]) -> dict:
    """Scores of known real photos: every flag is a false positive."""
    names = list(named)
    images = [named[n] for n in names]
    ours, hist = model_scores(model, images), baseline.scores(images)
    rows = [{"image": n, "size": list(named[n].size), "model": round(float(a), 4),
             "colour_histogram": round(float(b), 4)} for n, a, b in zip(names, ours, hist)]
    return {"rows": rows,
            "model_fpr": float(np.mean(ours >= model.config.threshold)) if rows else float("nan"),
            "colour_histogram_fpr": float(np.mean(hist >= baseline.threshold)) if rows else float("nan"),
            "n": len(rows)}


def wallpapers() -> dict[str, Image.Image]:
    """Debian's mate-backgrounds nature photos, fetched and verified through the package manifest."""
    return {f"mate-backgrounds:{Path(r.path.name.replace('--', '/')).name}":
            decode_image(r.path, max_pixels=50_000_000)
            for r in load_records(WALLPAPERS)}


def evaluate(detector_dir: Path, cfg: JudgeTrainConfig) -> dict:
    model = load_detector(detector_dir, runtime="torch")
    limit = cfg.model.max_short_side
    splits = usable_splits(cfg)
    train_records = repeat_families(splits["train"], cfg.family_repeats)
    rng = random.Random(cfg.seed)
    train_images = [degrade(img, r.label, cfg, rng)
                    for img, r in zip(load_images(train_records, limit, "baseline train"), train_records)]
    # Trained on the same degraded training images; its threshold is then re-chosen on validation
    # reals at the model's target FPR.
    baseline = HistogramBaseline(train_images, [r.label for r in train_records])
    val_records = splits["val"]
    val_images = [degrade(img, r.label, cfg, random.Random(f"{cfg.data_seed}:{r.path.name}"))
                  for img, r in zip(load_images(val_records, limit, "baseline val"), val_records)]
    val_labels = np.array([r.label for r in val_records])
    baseline.threshold = choose_threshold(baseline.scores(val_images)[val_labels == 0], cfg.target_fpr)
    roots = per_root_splits(cfg)
    report: dict = {"detector": str(detector_dir), "parameters": count_parameters(model),
                    "weights_bytes": (detector_dir / "model.safetensors").stat().st_size,
                    "threshold": model.config.threshold, "holdout_families": list(cfg.holdout_families),
                    "datasets": {}, "families": {}, "real_sets": {}}

    debian = [r for split in roots.get(DEBIAN_ROOT, {}).values() for r in split]
    report["debian_packages"] = dict(sorted(Counter(r.generator for r in debian).items()))
    for root, splits in roots.items():
        for split in ("val", "test"):
            records = [r for r in splits[split] if r.family not in set(cfg.holdout_families)]
            images = load_images(records, limit, f"{root} {split}")
            labels = [r.label for r in records]
            for spec in ROBUSTNESS:
                degraded = [parse_degradation(spec)(img) for img in images]
                key = f"{root}/{split}/{spec}"
                if len(set(labels)) == 2:
                    report["datasets"][key] = both(model, baseline, degraded, labels)
                elif labels:
                    named = {f"{r.generator}:{r.path.name}": img for r, img in zip(records, degraded)}
                    report["real_sets"][key] = photo_scores(model, baseline, named)

    if "multigen" in roots:
        splits = roots["multigen"]
        reals = [r for r in splits["test"] if r.label == 0]
        real_images = [parse_degradation("jpeg:90")(img) for img in load_images(reals, limit, "multigen reals")]
        held = set(cfg.holdout_families)
        all_records = splits["train"] + splits["val"] + splits["test"]
        families = sorted({r.family for r in all_records if r.label == 1 and r.family})
        for family in families:
            pool = all_records if family in held else splits["test"]
            fakes = [r for r in pool if r.label == 1 and r.family == family]
            fake_images = [parse_degradation("jpeg:90")(img) for img in load_images(fakes, limit, family)]
            entry = both(model, baseline, real_images + fake_images, [0] * len(reals) + [1] * len(fakes))
            entry["held_out"] = family in held
            report["families"][family] = entry

    photos = wheel_photos()
    report["wheel_photos"] = photo_scores(model, baseline, photos)
    walls = wallpapers()
    report["wallpapers"] = photo_scores(model, baseline, walls)
    shipped_limit = model.config.max_short_side
    model.config.max_short_side = None
    report["wallpapers_native"] = photo_scores(model, baseline, walls)
    model.config.max_short_side = shipped_limit
    textures = {k: v for k, v in photos.items() if k.split(":")[1] in TEXTURES}
    report["textures"] = photo_scores(model, baseline, textures)
    return report


def _fmt(entry: dict, key: str) -> str:
    value = entry[key]
    ci = entry["ci"].get(key)
    if ci and not any(np.isnan(ci)):
        return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
    return "n/a" if value != value else f"{value:.3f}"


def metrics_table(rows: dict[str, dict], label: str) -> str:
    lines = [f"| {label} | model AUC [95% CI] | colour-hist AUC | model acc [95% CI] | colour-hist acc "
             "| model real/fake acc | model TPR@5%FPR | n (real/fake) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, entry in rows.items():
        m, h = entry["model"], entry["colour_histogram"]
        lines.append(f"| {name} | {_fmt(m, 'auc')} | {_fmt(h, 'auc')} | {_fmt(m, 'acc')} | {_fmt(h, 'acc')} "
                     f"| {m['real_acc']:.3f} / {m['fake_acc']:.3f} | {m['tpr_at_5fpr']:.3f} "
                     f"| {m['n_real']}/{m['n_fake']} |")
    return "\n".join(lines)


def photo_table(block: dict) -> str:
    lines = ["| image | size | model P(generated) | colour-hist P(generated) |", "|---|---|---|---|"]
    for row in block["rows"]:
        lines.append(f"| {row['image']} | {row['size'][0]}x{row['size'][1]} | {row['model']:.3f} "
                     f"| {row['colour_histogram']:.3f} |")
    return "\n".join(lines)


def target_lines(report: dict) -> list[str]:
    """The issue's targets, each marked met or missed from the measured numbers."""
    lines = []
    for spec, goal in (("jpeg:90", 0.98), ("jpeg:75", 0.95)):
        entry = report["datasets"].get(f"sd14-vs-unsplash/val/{spec}")
        if entry:
            auc = entry["model"]["auc"]
            lines.append(f"- sd14-vs-unsplash validation AUC at {spec} (both classes): {auc:.3f} "
                         f"(target >= {goal}): **{'met' if auc >= goal else 'missed'}**")
    fpr = report["wheel_photos"]["model_fpr"]
    lines.append(f"- false-positive rate on the wheel photos at the shipped threshold: {fpr:.1%} "
                 f"(target <= 5%): **{'met' if fpr <= 0.05 else 'missed'}**")
    return lines


def history_text(cfg: JudgeTrainConfig) -> str:
    if not cfg.history_quality:
        return "off."
    low, high = cfg.history_quality
    return (f"every generated training image is first JPEG-compressed once at quality {low}-{high}, "
            "because every real training photo already carries a JPEG from its source (Unsplash, "
            "BSDS500, the wallpapers); otherwise an earlier compression would mean *real*.")


def debian_text(report: dict, cfg: JudgeTrainConfig) -> str:
    """The training-data bullet for the Debian photos, naming the packages they came from."""
    packages = report.get("debian_packages", {})
    if not packages:
        return "not used in this run."
    names = ", ".join(f"`{name}` ({count})" for name, count in packages.items())
    manifest = next((d for d in cfg.data if Path(d).stem == DEBIAN_ROOT), "the package manifest")
    return (f"{sum(packages.values())} more real photographs (close-ups with shallow depth of field, "
            f"landscapes, objects, classic test photos) from Debian packages: {names}; listed with "
            f"their SHA-256 in `{manifest}` and fetched with `apt-get download` on first use. "
            f"Each training photo is repeated {cfg.family_repeats.get(DEBIAN_ROOT, 1)}x per epoch "
            f"(a {cfg.model.max_short_side}-px photo holds many distinct {cfg.crop_size}-px crops)"
            f"{native_crops_note(cfg)}. Renders, paintings and logos in those packages were left out by eye.")


def native_crops_note(cfg: JudgeTrainConfig) -> str:
    count = cfg.native_crops.get(DEBIAN_ROOT, 0)
    if not count:
        return ""
    return (f", plus {count} seeded {cfg.native_crop_size}-px crops of each at its native resolution "
            "(real pixels at camera scale)")


def real_sets_table(report: dict) -> str:
    """One line per real-only split and degradation: the share flagged at the shipped threshold."""
    sets = report.get("real_sets", {})
    if not sets:
        return "No real-only data set in this run."
    lines = ["| split / degradation | model FPR | colour-hist FPR | n |", "|---|---|---|---|"]
    for name, block in sets.items():
        lines.append(f"| {name} | {block['model_fpr']:.1%} | {block['colour_histogram_fpr']:.1%} "
                     f"| {block['n']} |")
    return "\n".join(lines)


def render_card(report: dict, cfg: JudgeTrainConfig, config_path: str) -> str:
    model_cfg = cfg.model
    held = ", ".join(cfg.holdout_families) or "none"
    sd14 = {k.split("/", 1)[1]: v for k, v in report["datasets"].items() if k.startswith("sd14")}
    multigen = {k.split("/", 1)[1]: v for k, v in report["datasets"].items() if k.startswith("multigen")}
    families = {(f"{k} (HELD OUT)" if v["held_out"] else k): v for k, v in report["families"].items()}
    return CARD_TEMPLATE.format(
        params=report["parameters"], size_mb=report["weights_bytes"] / 1e6, threshold=report["threshold"],
        width=model_cfg.width, embed=model_cfg.embed_dim, traces=model_cfg.num_traces,
        front_end=model_cfg.front_end, size=model_cfg.preprocess.size, grid=model_cfg.test_grid,
        limit=model_cfg.max_short_side,
        held=held, config=config_path, epochs=cfg.epochs, crop=cfg.crop_size, split_seed=cfg.data_seed,
        jpeg=f"{cfg.jpeg_quality[0]}-{cfg.jpeg_quality[1]}", jpeg_prob=cfg.jpeg_prob,
        rescale=f"{cfg.rescale_range[0]}-{cfg.rescale_range[1]}", rescale_prob=cfg.rescale_prob,
        blur_prob=cfg.blur_prob, blur_sigma=f"{cfg.blur_sigma[0]}-{cfg.blur_sigma[1]}",
        history=history_text(cfg), debian_source=debian_text(report, cfg), debian=real_sets_table(report),
        targets="\n".join(target_lines(report)),
        sd14=metrics_table(sd14, "split / degradation"),
        multigen=metrics_table(multigen, "split / degradation"),
        families=metrics_table(families, "family (jpeg:90)"),
        wheel=photo_table(report["wheel_photos"]), wheel_fpr=report["wheel_photos"]["model_fpr"],
        wheel_hist_fpr=report["wheel_photos"]["colour_histogram_fpr"], wheel_n=report["wheel_photos"]["n"],
        walls=photo_table(report["wallpapers"]), walls_fpr=report["wallpapers"]["model_fpr"],
        walls_native=photo_table(report["wallpapers_native"]),
        walls_native_fpr=report["wallpapers_native"]["model_fpr"],
        walls_hist_fpr=report["wallpapers"]["colour_histogram_fpr"], walls_n=report["wallpapers"]["n"],
        textures=photo_table(report["textures"]))


CARD_TEMPLATE = """# diffsleuth judge-compact: compact natural-trace judge (the default detector before v2)

Load it with `--detector judge-compact` or `load_detector("judge-compact")`; `diffsleuth scan`
without `--detector` now uses the CLIP-based judge in `weights/default`. {params:,} parameters,
{size_mb:.1f} MB of safetensors, CPU-friendly. It outputs P(generated) per image; an image is
labelled *generated* when P >= {threshold:.3f} (the threshold stored in `config.json`).

**Intended use**: a first, cheap screen of photographs for images from diffusion generators,
with results read as evidence, not proof. It is not a forensic verdict: it was trained on
about 1,500 small images from a few generators (see limits) and has not been tested on
FLUX, SD 3.x, Midjourney, DALL-E, GAN outputs, or images edited with inpainting.

## Method (our interpretation of "Let Real Images be as a Judger", arXiv 2403.16513)
A fixed `{front_end}` residual front end (the image minus its 2x nearest down/up-sampled copy,
as NPR uses) feeds a compact ResNet (width {width}, four stride-2 stages), a projection MLP and
an L2-normalised {embed}-d embedding. {traces} learnable unit vectors, the *natural traces*, are
trained jointly with an extended supervised contrastive loss (the traces join each batch as real
samples; generated images are only negatives) and trace prediction (each real image predicts its
nearest trace; generated images are pushed away from every trace). The score is the highest
cosine similarity to a trace, mapped to P(generated) by a logistic fit on the validation split.
The paper publishes no code; the loss details, the encoder and the front end are our choices.

## Training data
- `sd14-vs-unsplash`: 700 Stable Diffusion 1.4 portraits ("blonde woman") vs 300 Unsplash
  photos of men, 256x256 crops.
- `multigen`: 936 crops of 26 text-to-image models in 7 families vs 300 BSDS500 photographs.
  Families held out of training and validation entirely: **{held}**.
- `debian-photos`: {debian_source}
- Splits: 70/15/15 train/val/test per file (seeded hash, seed {split_seed}). The checkpoint is chosen by
  validation AUC; calibration and threshold are fitted on validation; test data is only read here.
- Reproduce: `diffsleuth train judge --config {config}` ({epochs} epochs on 2 CPU cores), then
  `python -m diffsleuth.evaluation.judge_card --detector <output> --config {config}`.

## Preprocessing (stored in `config.json`, so scanning matches training)
- Inference: an image whose shorter side exceeds {limit} px is first downscaled (bicubic,
  antialiased) to a {limit} px shorter side, the pixel scale of the training photos (481-512 px);
  then the model reads the central {size}x{size} crop without further resampling (`test_grid` =
  {grid}: {grid}x{grid} crops averaged); smaller images are reflect-padded. Values scaled to
  [-1, 1]. A 4000-px photo is therefore judged on the centre of its 512-px-high version.
- Training images are read at the inference scale (the same {limit}-px rule). Then, identical
  for both classes: downscale by {rescale} (probability {rescale_prob}), Gaussian blur sigma
  {blur_sigma} (probability {blur_prob}), JPEG at quality {jpeg} (probability {jpeg_prob}),
  then a random {crop}x{crop} crop and flip. Small crops keep content from deciding; common JPEG
  removes the "reals are JPEG, fakes are PNG" shortcut; random downscaling counters multigen's
  scale trap (its fakes are crops of 1024-px images); blur puts smooth crops in both classes.
- History equalisation: {history}

## Targets
{targets}

## Results
All rows re-encode **both classes identically** (`jpeg:Q` = JPEG quality Q, 4:2:0; `none` =
as stored). Intervals are 95% stratified bootstrap (1,000 resamples). Accuracy uses each
model's own validation-chosen threshold. The colour-histogram baseline is a logistic
regression on 512-bin RGB histograms of the same training images: where it matches the
model, the data lets content decide.

### sd14-vs-unsplash
{sd14}

### multigen (trained families only)
{multigen}

### multigen per generator family (jpeg:90; each family's fakes vs the test-split reals)
{families}

### False positives on real photos shipped in Python wheels (scikit-image, scikit-learn)
Model false-positive rate {wheel_fpr:.1%} of {wheel_n} (colour-histogram baseline
{wheel_hist_fpr:.1%}). Grey images are scored as RGB.

{wheel}

### False positives on the held-out `debian-photos` (validation and test splits)
{debian}

### False positives on Debian wallpaper photographs (`mate-backgrounds`, nature/*.jpg)
A package never used for training (`src/diffsleuth/configs/mate-nature-photos.csv`). Model
false-positive rate {walls_fpr:.1%} of {walls_n} (colour-histogram baseline
{walls_hist_fpr:.1%}) with the shipped downscaling of large images to a 512 px shorter side;
{walls_native_fpr:.1%} when the same photos (1280-2560 px) are read at native resolution.
This set and the wheel photos were scored after each development run, so they informed the
choices above (more real photos, history equalisation, blur): they are not perfectly unseen.

{walls}

Native resolution (not shipped):

{walls_native}

### Uniform textures (scikit-image brick, grass, gravel)
{textures}

## Limits
- **Shallow depth of field can read as generated**: close-ups with smooth out-of-focus areas
  (the scikit-learn flower, scikit-image coffee above) get a high P(generated) while the colour
  baseline does not flag them. The training fakes (crops of 1024-px renders, soft-background SD
  portraits) are smoother than most training reals. Real close-ups (`debian-photos`) and blur
  applied to both classes cut this failure on the wallpaper photos but did not remove it: do
  not act on one score alone, least of all for macro or bokeh photos.
- **Content confound**: in `sd14-vs-unsplash` every fake is a blonde woman and every real a man;
  the colour-histogram baseline shows how much content alone explains. Crops and the residual
  front end reduce but cannot remove it.
- **Few generators**: SD 1.4 and multigen's 26 models of 2023-2024 (7 families, the held-out
  ones never trained on). Newer architectures (FLUX and other flow-matching DiTs,
  autoregressive models) are untested.
- **Compression history**: training equalises re-encoding, and gives every generated image an
  earlier JPEG too (history equalisation above), but the reals' first JPEG (q~93 for `sd14`,
  unknown for the others) is not matched exactly.
- **Small data**: about 1,500 training images; intervals above are wide for that reason.
- Screenshots, heavy resizing, filters and re-generation (img2img) are out of scope.
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detector", type=Path, required=True)
    parser.add_argument("--config", type=Path, required=True, help="the training config used")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite MODEL_CARD.md from the existing card_metrics.json")
    args = parser.parse_args(argv)
    cfg = config_from_dict(JudgeTrainConfig, apply_overrides(load_json(args.config), args.overrides))
    metrics_path = args.detector / "card_metrics.json"
    if args.render_only:
        report = json.loads(metrics_path.read_text(encoding="utf-8"))
    else:
        report = evaluate(args.detector, cfg)
        metrics_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    card = render_card(report, cfg, str(args.config))
    (args.detector / "MODEL_CARD.md").write_text(card, encoding="utf-8")
    print(json.dumps({k: v for k, v in report.items() if k not in ("datasets", "families")}, indent=1)[:3000])


if __name__ == "__main__":
    main()
