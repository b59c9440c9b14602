"""Benchmark protocols as JSON presets (``configs/protocols/*.json``).

A preset names its data roots symbolically (``"root": "genimage"``); the user binds them on the
command line (``--root genimage=/data/GenImage``), so no path is baked into the file. It lists the
generators of the test set with the folder names each may appear under, the split that is the
test set, and (for ``"kind": "matrix"``) the generators detectors are trained on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from diffsleuth.io.datasets import DatasetError, ImageRecord, load_records


class ProtocolError(ValueError):
    """A preset is malformed or its roots are not given / not found."""


@dataclass
class Protocol:
    name: str
    description: str
    roots: dict[str, str]
    test_root: str
    test_split: str | None
    layout: str
    generators: dict[str, list[str]]
    kind: str = "single"
    train: dict = field(default_factory=dict)
    reference: str = ""
    threshold_note: str = ""

    @property
    def train_generators(self) -> list[str]:
        return list(self.train.get("generators", []))


def load_protocol(path: str | Path) -> Protocol:
    """Read and check a preset file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        test = data["test"]
        protocol = Protocol(
            name=data["name"], description=data.get("description", ""), roots=dict(data["roots"]),
            test_root=test["root"], test_split=test.get("split"), layout=test.get("layout", "auto"),
            generators={k: list(v) for k, v in data["generators"].items()}, kind=data.get("kind", "single"),
            train=dict(data.get("train", {})), reference=data.get("reference", ""),
            threshold_note=data.get("threshold_note", ""),
        )
    except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise ProtocolError(f"{path}: not a valid protocol preset ({exc!r})") from exc
    if protocol.test_root not in protocol.roots:
        raise ProtocolError(f"{path}: test root {protocol.test_root!r} is not declared in 'roots'")
    if protocol.kind not in ("single", "matrix"):
        raise ProtocolError(f"{path}: kind must be 'single' or 'matrix', not {protocol.kind!r}")
    unknown = [g for g in protocol.train_generators if g not in protocol.generators]
    if unknown:
        raise ProtocolError(f"{path}: train generators {unknown} are not among 'generators'")
    return protocol


def parse_roots(items: Sequence[str]) -> dict[str, Path]:
    """``name=/path`` pairs from ``--root`` options."""
    roots = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise ProtocolError(f"--root expects name=/path, got {item!r}")
        roots[name.strip()] = Path(value.strip())
    return roots


def _load_tree(root: Path, layout: str) -> list[ImageRecord]:
    """Records of a root; GenImage copies nest one level deeper (``ADM/imagenet_ai_0508_adm/train``)."""
    records = load_records(root, layout)
    if records or layout != "genimage":
        return records
    nested: list[ImageRecord] = []
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        nested.extend(load_records(child, "genimage"))
    return nested


def _display_name(record: ImageRecord, aliases: dict[str, str]) -> str | None:
    candidates = [record.generator or "", *record.path.parts]
    for candidate in candidates:
        name = aliases.get(candidate.lower())
        if name is not None:
            return name
    return None


def protocol_records(protocol: Protocol, roots: dict[str, Path]) -> tuple[list[ImageRecord], list[str]]:
    """Labelled test records of the preset, generators renamed to the preset's names; plus notes."""
    if protocol.test_root not in roots:
        raise ProtocolError(f"protocol {protocol.name!r} needs --root {protocol.test_root}=PATH "
                            f"({protocol.roots[protocol.test_root]})")
    root = roots[protocol.test_root]
    try:
        records = _load_tree(root, protocol.layout)
    except DatasetError as exc:
        raise ProtocolError(str(exc)) from exc
    aliases = {alias.lower(): name for name, names in protocol.generators.items() for alias in [name, *names]}
    kept, unmatched, other_split = [], 0, 0
    for record in records:
        if record.label is None:
            continue
        if protocol.test_split is not None and record.split != protocol.test_split:
            other_split += 1
            continue
        name = _display_name(record, aliases)
        if name is None:
            unmatched += 1
            continue
        kept.append(replace(record, generator=name))
    notes = []
    if other_split:
        notes.append(f"{other_split} images outside the test split {protocol.test_split!r} were skipped")
    if unmatched:
        notes.append(f"{unmatched} images under {root} belong to no generator of the protocol and were skipped")
    if not kept:
        raise ProtocolError(f"no test images of protocol {protocol.name!r} found under {root} "
                            f"(layout {protocol.layout}, split {protocol.test_split})")
    return kept, notes
