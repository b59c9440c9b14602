"""A tiny CLIP-shaped ONNX image tower for tests: 224 input, an ``image_embeds`` output and tokens."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

EMBED = 8


class TinyImageTower(torch.nn.Module):
    """Patchify 224 -> 7x7 tokens -> mean: an 'image_embeds' output plus a token output, like CLIP's."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.patch = torch.nn.Conv2d(3, EMBED, 32, 32)

    def forward(self, pixel_values: torch.Tensor):
        tokens = self.patch(pixel_values).flatten(2).transpose(1, 2)
        return tokens.mean(1), tokens


def export(path: Path, dynamic: bool = True) -> tuple[TinyImageTower, Path]:
    tower = TinyImageTower().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(tower, (torch.zeros(1, 3, 224, 224),), str(path), input_names=["pixel_values"],
                          output_names=["image_embeds", "tokens"], dynamo=False,
                          dynamic_axes={"pixel_values": {0: "batch"}} if dynamic else None)
    return tower, path


def tiny_judge_config(folder: Path, centroids: int, max_distance: float):
    """A judge config on a freshly exported tiny tower in ``folder``, with a domain check
    (``centroids`` photo centroids, 2 outside ones): small enough to train and score in a test."""
    from diffsleuth.detectors.judge.config import JudgeConfig
    from diffsleuth.detectors.judge.domain import DomainConfig

    encoder = export(folder / "tower.onnx")[1]
    return JudgeConfig(encoder="onnx", backbone=str(encoder), grid="cover", max_short_side=448, embed_dim=4,
                       proj_hidden=8, num_traces=2, threshold=0.6, uncertain_threshold=0.4,
                       domain=DomainConfig(min_short_side=64, centroids=centroids, max_distance=max_distance,
                                           outside_centroids=2))
