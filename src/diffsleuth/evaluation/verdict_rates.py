"""How often a judge-head detector gives each verdict, on photos and generators it never trained on.

``diffsleuth card`` reports verdict shares for every role it scores; this is the quick form for a
judge on a frozen encoder, from the feature cache training uses (each file is encoded once per
degradation, then scored by :meth:`JudgeDetector.score_features`, the code a scan runs), plus
the inputs the domain check exists for: rendered text, charts and screenshots
(:mod:`diffsleuth.evaluation.out_of_domain`), seeded noise and thumbnails, scored by ``predict``.
``--beyond`` adds data the detector was never meant to have seen (GANs, 2022-era generators,
GAN faces and their real counterparts), one set per generator or real source, so the card and
the page can say what it does not cover.

    python -m diffsleuth.evaluation.verdict_rates default --camera ../shared/data/camera-originals \\
        --data ../shared/data/multigen --beyond ../shared/data/generalisation \\
        --cache /tmp/verdict-cache/features --write-card-metrics

writes the rates into the detector's ``card_metrics.json`` (key ``verdict_rates``), which
:func:`diffsleuth.evaluation.card_render.render_card` shows in ``MODEL_CARD.md``.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from diffsleuth.detectors.base import uncertain_threshold
from diffsleuth.detectors.judge.head_training import cached_features
from diffsleuth.detectors.judge.model import JudgeDetector
from diffsleuth.detectors.registry import load_detector, resolve_detector_path
from diffsleuth.evaluation.card import store_card_metrics, training_config, verdict_rates
from diffsleuth.evaluation.heldout import HoldOut, Sample, gather_samples
from diffsleuth.evaluation.loo_protocol import camera_makes, protocol_source
from diffsleuth.evaluation.out_of_domain import outside_inputs
from diffsleuth.features.cache import content_hash
from diffsleuth.verdict import OUTSIDE_DOMAIN, decide_detector_verdict


def file_verdicts(model: JudgeDetector, samples: Sequence[Sample], spec: str,
                  cache: Path) -> tuple[list[str | None], Counter]:
    """The detector verdict of each file under degradation ``spec`` (sizes kept by every degradation),
    and how many were outside the domain for each kind of reason."""
    features = cached_features(model, samples, [spec], cache, 32)[spec]
    sizes = []
    for sample in samples:
        with Image.open(sample.record.path) as image:
            sizes.append(image.size)
    probs, extras = model.score_features(features, sizes)
    threshold = float(model.config.threshold)
    low = uncertain_threshold(model.config, threshold)
    verdicts, reasons = [], Counter()
    for p, extra in zip(probs.tolist(), extras):
        verdicts.append(decide_detector_verdict(float(p), threshold, low, extra.get("outside_domain") is not None,
                                                bool(extra.get("outside_overrides"))))
        if verdicts[-1] == OUTSIDE_DOMAIN:
            reasons[reason_kind(extra["outside_domain"])] += 1
    return verdicts, reasons


def reason_kind(reason: str) -> str:
    """The check behind an ``outside_domain`` reason (its words before the parenthesis)."""
    return reason.split(" (", 1)[0]


# protocol source (or, where a family holds several, generator) -> what a reader calls it
BEYOND_NAMES = {"gan": "GAN ({})", "2022-era": "2022-era generator ({})", "stylegan2-faces": "StyleGAN2 faces",
                "ffhq": "real FFHQ faces", "gan-real": "real photos matched to the GANs"}


def beyond_sets(root: str) -> dict[str, list[Sample]]:
    """The images under ``root`` by generator (GANs, 2022-era) or source, each named for a reader."""
    makes, sets = camera_makes(root), {}
    for sample in gather_samples([root], HoldOut()):
        record = sample.record
        source = protocol_source(record.label, record.family, record.generator, root, makes, record.path.name)
        name = BEYOND_NAMES.get(source, source).format(record.generator)
        sets.setdefault(name, []).append(sample)
    return dict(sorted(sets.items()))


def split_reference(sets: dict[str, list[Sample]], reference: set[str]) -> dict[str, list[Sample]]:
    """Each set's files that built the detector's face check (SHA-256 in ``reference``) as a set of
    their own, so the rest measure the check on faces it never saw."""
    out: dict[str, list[Sample]] = {}
    for name, samples in sets.items():
        built = [content_hash(s.record.path) in reference for s in samples]
        inside = [s for s, b in zip(samples, built) if b]
        rest = [s for s, b in zip(samples, built) if not b]
        if rest:
            out[name + (" (not in the face reference)" if inside else "")] = rest
        if inside:
            out[f"{name} (built the face check)"] = inside
    return out


def measure(model: JudgeDetector, sets: dict[str, list[Sample]], degradations: Sequence[str], cache: Path,
            seed: int = 0) -> dict:
    """Verdict shares per set and degradation, each set's class, and per kind of synthetic input."""
    out: dict = {"threshold": float(model.config.threshold),
                 "uncertain_threshold": uncertain_threshold(model.config, float(model.config.threshold)),
                 "degradations": list(degradations), "synthetic_seed": seed, "sets": {}, "classes": {},
                 "outside_reasons": {}, "synthetic": {}}
    for name, samples in sets.items():
        labels = {s.record.label for s in samples}
        if len(labels) != 1:
            raise ValueError(f"set {name!r} mixes generated and real images: give one class per set")
        kind = "generated" if labels == {1} else "real"
        for spec in degradations:
            verdicts, reasons = file_verdicts(model, samples, spec, cache)
            out["sets"][f"{name}/{spec}"] = verdict_rates(verdicts)
            out["classes"][f"{name}/{spec}"] = kind
            out["outside_reasons"][f"{name}/{spec}"] = dict(sorted(reasons.items()))
    images = outside_inputs(seed)
    predictions = model.predict(list(images.values()), batch_size=8)
    kinds = sorted({name.split(":")[0] for name in images})
    for kind in kinds:
        out["synthetic"][kind] = verdict_rates([p.detector_verdict for n, p in zip(images, predictions)
                                                if n.split(":")[0] == kind])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("detector", help="a judge-head detector folder or shipped name")
    parser.add_argument("--camera", action="append", default=[], help="folders of camera photos it never trained on")
    parser.add_argument("--data", action="append", default=[], help="data roots holding its held-out families")
    parser.add_argument("--beyond", action="append", default=[],
                        help="data roots it never trained on, scored per generator and real source")
    parser.add_argument("--degradation", action="append", help="applied to every file (default jpeg:90 and jpeg:75)")
    parser.add_argument("--cache", type=Path, required=True, help="feature cache folder")
    parser.add_argument("--write-card-metrics", action="store_true", help="store under verdict_rates in card_metrics.json")
    args = parser.parse_args()
    folder = resolve_detector_path(args.detector)
    model = load_detector(args.detector, runtime="torch")
    if hasattr(model.encoder, "enable_memo"):  # an ONNX encoder: the synthetic inputs, encoded once
        model.encoder.enable_memo(args.cache.parent / "embeddings")
    holdout = HoldOut.from_training_config(training_config(folder))
    sets = {f"camera photos ({Path(root).name})": [s for s in gather_samples([root], HoldOut()) if s.record.label == 0]
            for root in args.camera}
    if args.data:
        held = [s for s in gather_samples(args.data, holdout) if s.role == "holdout"]
        sets[f"held-out generators ({', '.join(holdout.holdout_families)})"] = held
    domain = model.config.domain
    faces = set(((domain.reference or {}).get("faces") or {}).get("sha256", ())) if domain is not None else set()
    for root in args.beyond:
        sets.update(split_reference(beyond_sets(root), faces))
    report = measure(model, sets, args.degradation or ["jpeg:90", "jpeg:75"], args.cache)
    report["command"] = "python -m diffsleuth.evaluation.verdict_rates " + " ".join(
        [args.detector, *(f"--camera {c}" for c in args.camera), *(f"--data {d}" for d in args.data),
         *(f"--beyond {b}" for b in args.beyond)])
    print(json.dumps(report, indent=2))
    if args.write_card_metrics:
        store_card_metrics(folder, "verdict_rates", report)


if __name__ == "__main__":
    main()
