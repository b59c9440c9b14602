"""A torch Dataset over image records, decoding on access (worker-safe, nothing cached in RAM)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from diffsleuth.io.datasets import ImageRecord
from diffsleuth.io.decode import DEFAULT_MAX_PIXELS, decode_image


class ImageRecordDataset(Dataset):
    """``transform(image, record)`` turns a decoded image into whatever the model trains on."""

    def __init__(self, records: Sequence[ImageRecord],
                 transform: Callable[[Image.Image, ImageRecord], Any],
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        missing = [r.path for r in records if r.label is None]
        if missing:
            raise ValueError(f"unlabelled records cannot be used for training, e.g. {missing[0]}")
        self.records = list(records)
        self.transform = transform
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        record = self.records[index]
        image = decode_image(record.path, max_pixels=self.max_pixels)
        return self.transform(image, record), int(record.label)
