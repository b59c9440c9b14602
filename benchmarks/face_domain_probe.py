"""Can the default's domain check tell close-up faces apart, where its verdict is not evidence?

On the `generalisation` set the shipped default calls about half of the real FFHQ faces
`generated`, more than the StyleGAN2 faces (its scores rank real faces above generated ones).
This probe measures a candidate check, not shipped: k-means centroids of a seeded half of the
faces (both classes alike: a "close-up face" region, not a class) and the margin (distance to the
default's training reference) - (distance to the face centroids); an image whose margin is over a
limit would be "outside the detector's domain" whatever its score. Reported per protocol source,
the faces counted on the other half only: the share over each limit and the share the default
flags at its threshold (JPEG q90 features from the protocol's cache, ``protocol_v3.py``).

    PYTHONPATH=src python benchmarks/face_domain_probe.py --cache DIR --out face_probe.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from protocol_v3 import DATA, ROOTS  # noqa: E402

from diffsleuth.detectors.judge.domain import kmeans_centroids, nearest_distances  # noqa: E402
from diffsleuth.detectors.judge.head_training import extractor_config  # noqa: E402
from diffsleuth.detectors.registry import load_detector  # noqa: E402
from diffsleuth.evaluation.heldout import HoldOut, gather_samples  # noqa: E402
from diffsleuth.evaluation.loo_protocol import camera_makes, protocol_source  # noqa: E402
from diffsleuth.features.cache import FeatureCache, content_hash  # noqa: E402

FACES = ("ffhq", "stylegan2-faces")
LIMITS = (0.0, 0.02, 0.05, 0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--cache", required=True, type=Path, help="the protocol's feature cache (jpeg:90)")
    parser.add_argument("--centroids", type=int, default=8)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_detector("default", runtime="torch")
    cache = FeatureCache(args.cache, extractor_config(model.config, "jpeg:90"))
    feats, sources, labels, sizes = [], [], [], []
    for name in ROOTS:
        root = str(Path(args.data) / name)
        makes = camera_makes(root)
        for sample in gather_samples([root], HoldOut()):
            record = sample.record
            entry = cache.get(content_hash(record.path))
            if entry is None:
                raise SystemExit(f"{record.path} is not in {args.cache}: fill it first (protocol_v3.py's docstring)")
            feats.append(entry["features"].float())
            labels.append(record.label)
            sources.append(protocol_source(record.label, record.family, record.generator, root, makes, record.path.name))
            with Image.open(record.path) as image:
                sizes.append(image.size)
    sources, labels = np.array(sources), np.array(labels)
    probs = np.asarray(model.score_features(feats, sizes)[0])
    flagged = probs >= float(model.config.threshold)
    faces = np.flatnonzero(np.isin(sources, FACES))
    order = np.random.default_rng(0).permutation(faces)
    build, held = order[:len(order) // 2], order[len(order) // 2:]
    centroids = kmeans_centroids(torch.cat([feats[i] for i in build]).numpy(), args.centroids, 0)
    reference = model.domain_centroids.numpy()
    margin = np.array([float((nearest_distances(f.numpy(), reference) - nearest_distances(f.numpy(), centroids)).mean())
                       for f in feats])
    counted = np.ones(len(sources), bool)
    counted[build] = False
    out: dict = {"faces_auc_generated_vs_real": float(roc_auc_score(labels[faces], probs[faces])),
                 "centroids": args.centroids, "built_from": {s: int((sources[build] == s).sum()) for s in FACES},
                 "by_source": {}}
    for source in sorted(set(sources)):
        sel = counted & (sources == source)
        out["by_source"][source] = {"n": int(sel.sum()), "flagged": float(flagged[sel].mean()),
                                    **{f"margin>{t}": float((margin[sel] > t).mean()) for t in LIMITS}}
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"faces AUC (generated vs real, the default's score): {out['faces_auc_generated_vs_real']:.3f}")
    print("| source | images | flagged by the default | " + " | ".join(f"margin > {t}" for t in LIMITS) + " |")
    print("|---|---|---|" + "---|" * len(LIMITS))
    for source, row in out["by_source"].items():
        print(f"| {source} | {row['n']} | {row['flagged']:.1%} | "
              + " | ".join(f"{row[f'margin>{t}']:.1%}" for t in LIMITS) + " |")


if __name__ == "__main__":
    main()
