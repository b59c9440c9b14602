"""Labelled and unlabelled image collections in the layouts people publish.

Labels come only from the directory layout or a manifest, never from file names.
Supported layouts, detected by :func:`load_records`:

* GenImage: ``<generator>/{train,val}/{ai,nature}/...``
* CNNDetection / UnivFD: ``0_real`` / ``1_fake`` folders, possibly nested per generator or class
  (``<generator>/[<class>/]{0_real,1_fake}``)
* ``real/`` and ``fake/`` folders directly under the root (recursive; a folder directly under
  ``fake/`` names the generator), the layout of the development data
* a CSV manifest ``path,label[,generator][,family][,split][,class_name]`` (``file`` is accepted for
  ``path``; paths are relative to the manifest's folder), or one whose rows name files inside
  Debian packages (``package,member,sha256,label``; see :mod:`diffsleuth.io.debian`)
* an unlabelled folder (recursive) or individual files, for scanning
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from diffsleuth.io.expansion import expand
from diffsleuth.io.formats import IMAGE_EXTENSIONS

REAL, FAKE = 0, 1
_LABEL_WORDS = {
    "0": REAL, "real": REAL, "nature": REAL, "natural": REAL, "0_real": REAL,
    "1": FAKE, "fake": FAKE, "ai": FAKE, "generated": FAKE, "synthetic": FAKE, "1_fake": FAKE,
}
_GENIMAGE_CLASS = {"nature": REAL, "ai": FAKE}
_BINARY_CLASS = {"0_real": REAL, "1_fake": FAKE}
_REAL_FAKE_CLASS = {"real": REAL, "fake": FAKE}
LAYOUTS_HELP = (
    "labelled layouts: a manifest.csv (path,label[,generator...]) or a CSV given directly; "
    "real/ and fake/ folders; 0_real/ and 1_fake/ folders (optionally per generator); "
    "GenImage's <generator>/{train,val}/{nature,ai}/"
)
"""The labelled layouts :func:`load_records` recognises, for messages that refuse a folder."""


class DatasetError(ValueError):
    """A dataset root or manifest is malformed; the message names the file or folder."""


@dataclass(frozen=True)
class ImageRecord:
    """One image of a collection. ``label`` is 0 (real), 1 (generated) or None (unknown)."""

    path: Path
    label: int | None = None
    generator: str | None = None
    split: str | None = None
    family: str | None = None
    class_name: str | None = None


def parse_label(value: str, where: str) -> int:
    """Map the label words people use (real/fake, 0/1, nature/ai) to 0/1."""
    key = str(value).strip().lower()
    if key not in _LABEL_WORDS:
        raise DatasetError(f"{where}: unknown label {value!r} (use real/fake or 0/1)")
    return _LABEL_WORDS[key]


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if is_image_file(p))


def read_manifest(manifest: str | os.PathLike) -> list[ImageRecord]:
    """Read a CSV manifest; relative paths resolve against the manifest's folder."""
    manifest = Path(manifest)
    root = manifest.parent
    with manifest.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        fields = set(reader.fieldnames or ())
        if "package" in fields and "member" in fields:
            from diffsleuth.io.debian import read_package_manifest

            return read_package_manifest(manifest)
        path_key = "path" if "path" in fields else "file" if "file" in fields else None
        if path_key is None or "label" not in fields:
            raise DatasetError(f"{manifest}: a manifest needs 'path' (or 'file') and 'label' columns")
        records = []
        for line, row in enumerate(reader, start=2):
            path = Path(row[path_key])
            records.append(record_from_row(row, path if path.is_absolute() else root / path,
                                           f"{manifest}:{line}"))
    return records


def record_from_row(row: dict[str, str], path: Path, where: str,
                    generator: str | None = None) -> ImageRecord:
    """A manifest row's label and optional columns; ``where`` names the row in errors."""
    return ImageRecord(
        path=path,
        label=parse_label(row["label"], where),
        generator=row.get("generator") or generator,
        split=row.get("split") or None,
        family=row.get("family") or None,
        class_name=row.get("class_name") or None,
    )


def read_genimage(root: str | os.PathLike) -> list[ImageRecord]:
    """``<generator>/{train,val}/{ai,nature}``; the generator is the top folder's name."""
    root = Path(root)
    records = []
    for class_dir in sorted(root.glob("*/*/*")):
        if not class_dir.is_dir() or class_dir.name not in _GENIMAGE_CLASS:
            continue
        split = class_dir.parent.name
        generator = class_dir.parent.parent.name
        for path in _images_under(class_dir):
            records.append(ImageRecord(path, _GENIMAGE_CLASS[class_dir.name], generator, split))
    return records


def read_binary_folders(root: str | os.PathLike) -> list[ImageRecord]:
    """``0_real`` / ``1_fake`` anywhere below ``root``; the path above them names generator/class.

    ``root/<generator>/<class>/0_real`` gives generator and class; ``root/<generator>/0_real``
    gives the generator; a bare ``root/0_real`` gives neither. A ``train``/``val``/``test`` folder
    on the way sets the split.
    """
    root = Path(root)
    records = []
    for class_dir in sorted(p for p in root.rglob("*") if p.is_dir() and p.name in _BINARY_CLASS):
        parts = list(class_dir.relative_to(root).parts[:-1])
        split = next((p for p in parts if p in ("train", "val", "test")), None)
        names = [p for p in parts if p not in ("train", "val", "test")]
        generator = names[0] if names else None
        class_name = names[1] if len(names) > 1 else None
        for path in _images_under(class_dir):
            records.append(
                ImageRecord(path, _BINARY_CLASS[class_dir.name], generator, split,
                            class_name=class_name)
            )
    return records


def read_real_fake(root: str | os.PathLike) -> list[ImageRecord]:
    """``root/real`` and ``root/fake``, recursive; ``fake/<generator>/...`` names the generator."""
    root = Path(root)
    records = []
    for name, label in _REAL_FAKE_CLASS.items():
        folder = root / name
        if not folder.is_dir():
            continue
        for path in _images_under(folder):
            parts = path.relative_to(folder).parts
            generator = parts[0] if label == FAKE and len(parts) > 1 else None
            records.append(ImageRecord(path, label, generator))
    return records


def detect_layout(root: Path) -> str:
    """Name the layout of ``root``: manifest, genimage, binary, real_fake or folder."""
    if root.is_file():
        return "manifest" if root.suffix.lower() == ".csv" else "files"
    if (root / "manifest.csv").is_file():
        return "manifest"
    if any(d.name in _GENIMAGE_CLASS for d in root.glob("*/*/*") if d.is_dir()):
        return "genimage"
    if any(d.name in _BINARY_CLASS for d in root.rglob("*") if d.is_dir()):
        return "binary"
    if any((root / name).is_dir() for name in _REAL_FAKE_CLASS):
        return "real_fake"
    return "folder"


def load_records(source: str | os.PathLike, layout: str = "auto") -> list[ImageRecord]:
    """Read a labelled collection (or an unlabelled folder) in any supported layout."""
    root = Path(source)
    if not root.exists():
        raise DatasetError(f"{root}: no such file or folder")
    kind = detect_layout(root) if layout == "auto" else layout
    if kind == "manifest":
        return read_manifest(root if root.is_file() else root / "manifest.csv")
    if kind == "genimage":
        return read_genimage(root)
    if kind == "binary":
        return read_binary_folders(root)
    if kind == "real_fake":
        return read_real_fake(root)
    if kind in ("folder", "files"):
        return [ImageRecord(p) for p in expand_inputs([root])]
    raise DatasetError(f"unknown layout {layout!r} (auto, manifest, genimage, binary, real_fake, folder)")


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given, folders recursively (image extensions only), globs expanded.

    A named file is kept whatever its extension (or its kind: a FIFO or a link to nothing), so
    that a wrong or missing file still becomes an error row instead of silently vanishing; so is a
    folder that cannot be listed, found or named. Never raises for a path it cannot read. Order is
    stable and duplicates are dropped. :func:`diffsleuth.io.expansion.expand` also says what was
    missing, unmatched or skipped.
    """
    return expand(inputs).files


def stable_fraction(key: str, seed: int) -> float:
    """A number in [0, 1) fixed by ``key`` and ``seed``: deterministic across runs and machines."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(
    records: Sequence[ImageRecord],
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    group: str = "path",
) -> list[ImageRecord]:
    """Give records without a split one of train/val/test, deterministically.

    ``group`` names the attribute that must not straddle splits (``path`` for none). Records that
    already carry a split keep it.
    """
    out = []
    for record in records:
        if record.split is not None:
            out.append(record)
            continue
        key = str(getattr(record, group) if group != "path" else record.path.name)
        u = stable_fraction(key, seed)
        split = "test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"
        out.append(replace(record, split=split))
    return out
