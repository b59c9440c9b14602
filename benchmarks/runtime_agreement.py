"""Do the default's runtimes agree with the float32 torch tower? Scores, verdicts, batch-mates.

Scores held-out images (camera originals, multigen's held-out PixArt and Kandinsky, ImageNet web
photos; a seeded choice per set) with the torch judge in float32 (the reference) and with each
torch-free runtime, and reports per runtime: the 99th percentile and the maximum of
|score - reference|, the share of detector verdicts that differ, and how far an image scored alone
moves from the same image scored in a batch of 32::

    PYTHONPATH=src python benchmarks/runtime_agreement.py --per-set 40 --json benchmarks/results/runtime_agreement.json

Bounds (issue #29): p99 <= 0.01, verdicts flipped <= 0.5%, alone vs batch <= 1e-4.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np

from diffsleuth.detectors.registry import load_detector
from diffsleuth.evaluation.heldout import HoldOut, gather_samples
from diffsleuth.io.decode import decode_image
from diffsleuth.io.degrade import parse_degradation

SETS = {"camera-originals": ("camera-originals", None),
        "pixart+kandinsky": ("multigen", ("pixart", "kandinsky")),
        "imagenet": ("imagenet-samples", None)}


def pick(data: Path, per_set: int, seed: int) -> dict[str, list[Path]]:
    out = {}
    for name, (root, families) in SETS.items():
        samples = gather_samples([str(data / root)], HoldOut())
        paths = [s.record.path for s in samples if families is None or (s.record.family or "") in families]
        random.Random(seed).shuffle(paths)
        out[name] = sorted(paths[:per_set])
    return out


def scores_of(detector, images, batch: int) -> tuple[np.ndarray, list[str]]:
    predictions = detector.predict(images, batch_size=batch, provenance=False)
    return np.array([p.score for p in predictions]), [p.detector_verdict for p in predictions]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--detector", default="default")
    parser.add_argument("--per-set", type=int, default=40)
    parser.add_argument("--precisions", default="fp32")
    parser.add_argument("--degradation", default="jpeg:90")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    degrade = parse_degradation(args.degradation)
    chosen = pick(args.data, args.per_set, args.seed)
    images = [degrade(decode_image(p)) for paths in chosen.values() for p in paths]
    started = time.monotonic()
    reference, ref_verdicts = scores_of(load_detector(args.detector, runtime="torch"), images, 32)
    report: dict = {"images": {k: len(v) for k, v in chosen.items()}, "degradation": args.degradation,
                    "reference": "torch judge, float32 tower (CPU)", "seconds_reference": round(time.monotonic() - started, 1)}
    from diffsleuth.detectors.judge.runtime import JudgeRuntime
    from diffsleuth.detectors.registry import resolve_detector_path

    for precision in args.precisions.split(","):
        runtime = JudgeRuntime.from_folder(resolve_detector_path(args.detector), precision=precision)
        started = time.monotonic()
        batched, verdicts = scores_of(runtime, images, 32)
        alone, _ = scores_of(runtime, images[:32], 1)
        diff = np.abs(batched - reference)
        report[f"onnx-{precision}"] = {
            "score_diff_p99": float(np.quantile(diff, 0.99)), "score_diff_max": float(diff.max()),
            "verdicts_flipped": float(np.mean([a != b for a, b in zip(verdicts, ref_verdicts)])),
            "alone_vs_batch32_max": float(np.abs(alone - batched[:32]).max()),
            "seconds": round(time.monotonic() - started, 1)}
        print(json.dumps({precision: report[f"onnx-{precision}"]}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
