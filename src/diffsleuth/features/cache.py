"""A feature cache keyed by image content and extractor config.

Each entry is one small safetensors file ``<root>/<config-hash>/<aa>/<content-hash>.safetensors``,
written atomically (temporary file, then rename), so an interrupted extraction leaves only
complete entries and a re-run computes just what is missing. The content hash is the SHA-256 of
the file's bytes: renaming or moving images never invalidates the cache, editing them does.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from diffsleuth.io.guards import open_regular


def content_hash(path: str | os.PathLike) -> str:
    """SHA-256 of a regular file's bytes; raises :class:`InputError` (an OSError) for anything else."""
    digest = hashlib.sha256()
    with open_regular(path, max_bytes=1 << 62) as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def config_hash(config: dict[str, Any]) -> str:
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class FeatureCache:
    """Store and look up feature tensors for one extractor config under ``root``."""

    def __init__(self, root: str | os.PathLike, extractor_config: dict[str, Any]) -> None:
        self.config = extractor_config
        self.directory = Path(root) / config_hash(extractor_config)
        self.directory.mkdir(parents=True, exist_ok=True)
        info = self.directory / "extractor.json"
        if not info.exists():
            info.write_text(json.dumps(extractor_config, indent=2, sort_keys=True) + "\n")

    def entry(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.safetensors"

    def __contains__(self, key: str) -> bool:
        return self.entry(key).is_file()

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        path = self.entry(key)
        if not path.is_file():
            return None
        return load_file(str(path))

    def put(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        path = self.entry(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
        os.replace(tmp, path)

    def __len__(self) -> int:
        return sum(1 for _ in self.directory.glob("*/*.safetensors"))
