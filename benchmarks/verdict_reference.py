"""Add the ``uncertain`` band and the domain check to a trained judge-head detector, without retraining.

``diffsleuth train judge-head`` sets both at the end of training (``add_verdict_bands``); this
script applies the same code to a detector trained before they existed (the shipped default),
from the same roles of its logged training config: the calibration photos at every logged
degradation, and a balanced subset of the training images at the first one. The projection and
traces are not touched; ``config.json`` and ``model.safetensors`` are rewritten (new SHA-256).

    PYTHONPATH=src python benchmarks/verdict_reference.py src/diffsleuth/weights/default \\
        --data ../shared/data/sd14-vs-unsplash --data ../shared/data/multigen \\
        --data ../shared/data/imagenet-samples --cache /tmp/verdict-cache/features
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from diffsleuth.detectors.judge.head_training import (TRAINING_LOG, JudgeHeadTrainConfig, add_verdict_bands,
                                                      cached_features, describe_reference, outside_features,
                                                      reference_samples)
from diffsleuth.detectors.judge.model import JudgeDetector
from diffsleuth.evaluation.heldout import HoldOut, gather_samples
from diffsleuth.settings import config_from_dict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("detector", type=Path, help="a judge-head detector folder (rewritten in place)")
    parser.add_argument("--data", action="append", required=True, help="data roots (the training config's, "
                        "or those of them available here)")
    parser.add_argument("--cache", type=Path, required=True, help="feature cache folder")
    parser.add_argument("--degradation", action="append", help="calibration degradations (default: the logged ones)")
    args = parser.parse_args()
    log = json.loads((args.detector / TRAINING_LOG).read_text(encoding="utf-8"))["training_config"]
    cfg = config_from_dict(JudgeHeadTrainConfig, log)
    cfg.degradations = args.degradation or cfg.degradations
    model = JudgeDetector.from_folder(args.detector)
    samples = gather_samples(args.data, HoldOut.from_training_config(log))
    calibration = [s for s in samples if s.role == "calibration" and s.record.label == 0]
    reference = reference_samples(samples, cfg.domain_per_class, cfg.seed)
    first = cfg.degradations[0]
    calib_features = cached_features(model, calibration, cfg.degradations, args.cache, cfg.encode_batch)
    ref_features = cached_features(model, reference, [first], args.cache, cfg.encode_batch)[first]
    record = describe_reference(reference, first)
    record["built_by"] = "benchmarks/verdict_reference.py (after training; weights unchanged)"
    record["calibration_degradations"] = list(cfg.degradations)
    model.encoder.enable_memo(args.cache.parent / "embeddings")  # crops encoded before cost a file read
    add_verdict_bands(model, [f for spec in calib_features.values() for f in spec], ref_features, cfg, record,
                      outside_features(model, cfg, args.cache))
    model.save_pretrained(args.detector)
    print(json.dumps({"uncertain_threshold": model.config.uncertain_threshold,
                      "domain": {k: v for k, v in vars(model.config.domain).items() if k != "reference"},
                      "uncertain": (model.config.operating_point or {}).get("uncertain")}, indent=2))


if __name__ == "__main__":
    main()
