"""Heads trained on cached encoder features, for the leave-out protocol's A/B of training levers.

Each ``*_trainer`` returns a :data:`~diffsleuth.evaluation.loo_protocol.Trainer`: given the feature
set and a training mask it fits a head and returns a scorer (per image, higher = generated; an
image's score is the mean over its views, as the detector scores a grid). Levers:

- ``balance``: every training row is weighted so each fake family and each real source carries the
  same total weight (breadth without letting the largest family, SDXL, dominate).
- ``blend`` (SimLBR): extra rows ``(1 - a) * real + a * fake``, ``a ~ U(blend_min, 1)``, labelled
  generated: anything with a generated component is generated, which tightens the real region.
- ``positive`` (Stay-Positive): the MLP's last layer kept non-negative, so the score can only rise
  with evidence of generation, never fall because of "real-looking" features a generator may copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from diffsleuth.detectors.judge.model import JudgeConfig, JudgeDetector, judge_loss, trace_similarity
from diffsleuth.detectors.training import cosine_schedule
from diffsleuth.evaluation.loo_protocol import FeatureSet, Scorer


@dataclass(frozen=True)
class HeadOptions:
    """One lever setting; ``kind`` is ``judge``, ``logreg`` or ``mlp``."""

    kind: str = "judge"
    balance: bool = False
    blend: float = 0.0  # blended rows per training row in a batch (0 = off)
    blend_min: float = 0.25
    positive: bool = False
    epochs: int = 20
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    c: float = 1.0
    seed: int = 0


def row_weights(data: FeatureSet, owner: np.ndarray, balance: bool) -> np.ndarray:
    """Per view: 1 / (views of its image), then, if ``balance``, equal total weight per source."""
    counts = np.bincount(owner, minlength=len(data.features))[owner].astype(np.float64)
    weights = 1.0 / counts
    if balance:
        keys = np.char.add(data.labels[owner].astype(str), data.sources[owner])
        for key in np.unique(keys):
            part = keys == key
            weights[part] /= weights[part].sum()
        for label in (0, 1):
            part = data.labels[owner] == label
            weights[part] /= weights[part].sum()
    return weights / weights.mean()


def mean_by_image(values: torch.Tensor, features: Sequence[torch.Tensor]) -> np.ndarray:
    return torch.stack([p.mean() for p in values.split([len(f) for f in features])]).numpy()


def _batches(rows: torch.Tensor, labels: torch.Tensor, weights: np.ndarray, opts: HeadOptions):
    """Each epoch's batches: rows drawn by weight (with replacement), blends appended."""
    gen = torch.Generator().manual_seed(opts.seed)
    probs = torch.as_tensor(weights / weights.sum())
    real_idx, fake_idx = torch.nonzero(labels == 0).flatten(), torch.nonzero(labels == 1).flatten()
    steps = max(1, len(rows) // opts.batch_size)
    for _ in range(opts.epochs):
        for _ in range(steps):
            idx = torch.multinomial(probs, opts.batch_size, replacement=True, generator=gen)
            x, y = rows[idx], labels[idx]
            n_blend = int(opts.blend * opts.batch_size)
            if n_blend and len(real_idx) and len(fake_idx):
                r = real_idx[torch.multinomial(probs[real_idx], n_blend, replacement=True, generator=gen)]
                f = fake_idx[torch.multinomial(probs[fake_idx], n_blend, replacement=True, generator=gen)]
                a = opts.blend_min + (1 - opts.blend_min) * torch.rand(n_blend, 1, generator=gen)
                x = torch.cat([x, (1 - a) * rows[r] + a * rows[f]])
                y = torch.cat([y, torch.ones(n_blend, dtype=y.dtype)])
            yield x, y


class _Encoderless(nn.Module):
    out_dim = 512


def new_judge(config: JudgeConfig | None = None, dim: int = 512) -> JudgeDetector:
    """A judge whose encoder is absent: only the head (projection + traces) that trains on features."""
    encoder = _Encoderless()
    encoder.out_dim = dim
    return JudgeDetector(config or JudgeConfig(encoder="onnx", backbone="none"), encoder=encoder)


def _fit(params, loss_of, batches, total: int, opts: HeadOptions, after_step=None) -> None:
    optimizer = torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay)
    scheduler = cosine_schedule(optimizer, total)
    for x, y in batches:
        loss = loss_of(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if after_step:
            after_step()


def train_judge_head(head: JudgeDetector, rows: torch.Tensor, labels: torch.Tensor, weights: np.ndarray,
                     opts: HeadOptions) -> JudgeDetector:
    """The shipped judge loss on feature rows, drawn by weight; the last epoch is kept."""
    torch.manual_seed(opts.seed)
    params = [p for n, p in head.named_parameters() if not n.startswith("encoder.")]
    total = max(1, len(rows) // opts.batch_size) * opts.epochs
    _fit(params, lambda x, y: judge_loss(head.embed_features(x), y, head.traces)["loss"],
         _batches(rows, labels, weights, opts), total, opts)
    return head.eval()


def judge_trainer(opts: HeadOptions):
    def train(data: FeatureSet, mask: np.ndarray) -> Scorer:
        rows, owner, labels = data.rows(mask)
        head = train_judge_head(new_judge(dim=rows.shape[1]), rows, torch.as_tensor(labels),
                                row_weights(data, owner, opts.balance), opts)

        def score(features: Sequence[torch.Tensor]) -> np.ndarray:
            with torch.no_grad():
                sims = trace_similarity(head.embed_features(torch.cat(list(features))), head.traces)
            return -mean_by_image(sims.max(1).values, features)
        return score
    return train


def logreg_trainer(opts: HeadOptions):
    from sklearn.linear_model import LogisticRegression

    def train(data: FeatureSet, mask: np.ndarray) -> Scorer:
        rows, owner, labels = data.rows(mask)
        model = LogisticRegression(C=opts.c, max_iter=2000, class_weight=None if opts.balance else "balanced")
        model.fit(F.normalize(rows, dim=1).numpy(), labels, sample_weight=row_weights(data, owner, opts.balance))

        def score(features: Sequence[torch.Tensor]) -> np.ndarray:
            x = F.normalize(torch.cat(list(features)), dim=1).numpy()
            return mean_by_image(torch.from_numpy(model.decision_function(x)), features)
        return score
    return train


def mlp_trainer(opts: HeadOptions):
    def train(data: FeatureSet, mask: np.ndarray) -> Scorer:
        rows, owner, labels = data.rows(mask)
        torch.manual_seed(opts.seed)
        net = nn.Sequential(nn.Linear(rows.shape[1], 256), nn.ReLU(), nn.Linear(256, 1))
        last = net[2]

        def clamp() -> None:
            if opts.positive:
                with torch.no_grad():
                    last.weight.clamp_(min=0.0)
        clamp()
        total = max(1, len(rows) // opts.batch_size) * opts.epochs
        _fit(net.parameters(),
             lambda x, y: F.binary_cross_entropy_with_logits(net(F.normalize(x, dim=1)).squeeze(1), y.float()),
             _batches(rows, torch.as_tensor(labels), row_weights(data, owner, opts.balance), opts),
             total, opts, clamp)
        net.eval()

        def score(features: Sequence[torch.Tensor]) -> np.ndarray:
            with torch.no_grad():
                return mean_by_image(net(F.normalize(torch.cat(list(features)), dim=1)).squeeze(1), features)
        return score
    return train


TRAINERS = {"judge": judge_trainer, "logreg": logreg_trainer, "mlp": mlp_trainer}


def trainer_for(opts: HeadOptions):
    return TRAINERS[opts.kind](opts)
