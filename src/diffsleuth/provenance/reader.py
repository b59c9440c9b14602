"""``read_provenance``: every provenance reader over one file's bytes, none of which can raise.

Each reader runs on its own: a malformed EXIF block does not hide a valid C2PA manifest. Any
failure becomes an entry in :attr:`Provenance.errors` (shown in the ``provenance`` column), and so
does metadata cut at the per-file limit; reading a file never stops a scan and never touches the
pixel score.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from diffsleuth.io.guards import DEFAULT_MAX_BYTES
from diffsleuth.provenance.c2pa_reader import c2pa_evidence
from diffsleuth.provenance.containers import (MAX_METADATA_BYTES, ProvenanceInputError, TextBudget, metadata_fields,
                                              open_json_objects, read_bounded)
from diffsleuth.provenance.generators import generator_evidence
from diffsleuth.provenance.patterns import camera_evidence, xmp_evidence
from diffsleuth.provenance.result import Evidence, Provenance
from diffsleuth.provenance.stealth import stealth_fields


def _failure(stage: str, exc: BaseException) -> str:
    return f"{stage} ({exc.__class__.__name__}: {str(exc)[:200]})"


def read_provenance(source: str | os.PathLike | bytes, *, max_bytes: int = DEFAULT_MAX_BYTES,
                    c2pa: bool = True, trust_anchors: str | None = None,
                    max_metadata_bytes: int = MAX_METADATA_BYTES) -> Provenance:
    """Read what a file's metadata says about its origin: C2PA, generator settings, IPTC, EXIF.

    ``source`` is a path or the file's bytes; at most ``max_bytes`` are read (larger files get an
    error entry), and at most ``max_metadata_bytes`` of text come out of its metadata, all chunks
    and tags together (the rest is not read, and an error entry says so). ``c2pa=False`` skips
    manifest verification. ``trust_anchors`` (PEM text) checks C2PA signers against those roots,
    so a manifest can read ``trusted``. Never raises for a bad file: problems are listed in
    :attr:`Provenance.errors`.
    """
    result = Provenance()
    try:
        data = read_bounded(source, max_bytes)
    except ProvenanceInputError as exc:
        result.errors.append(f"file ({exc})")
        return result
    except Exception as exc:  # noqa: BLE001  (hostile input must never stop a scan)
        result.errors.append(_failure("file", exc))
        return result
    if c2pa:
        try:
            evidence, result.validation = c2pa_evidence(data, trust_anchors)
            if evidence is not None:
                result.evidence.append(evidence)
        except Exception as exc:  # noqa: BLE001
            result.errors.append(_failure("c2pa", exc))
    budget = TextBudget(max_metadata_bytes)
    fields: dict[str, str] = {}
    try:
        fields = metadata_fields(data, budget)
    except Exception as exc:  # noqa: BLE001
        result.errors.append(_failure("metadata", exc))
    try:
        stealth = stealth_fields(data, budget)
        fields.update(stealth)
        fields.update(open_json_objects(stealth, budget))
    except Exception as exc:  # noqa: BLE001
        result.errors.append(_failure("stealth metadata", exc))
    readers: tuple[tuple[str, Callable[[dict[str, str]], list[Evidence]]], ...] = (
        ("generator metadata", generator_evidence), ("xmp", xmp_evidence), ("exif", camera_evidence))
    for stage, reader in readers:
        try:
            result.evidence += reader(fields)
        except Exception as exc:  # noqa: BLE001
            result.errors.append(_failure(stage, exc))
    result.errors += budget.unread
    if budget.cut:
        result.errors.append(f"metadata cut (over {budget.total // (1 << 20) or budget.total} "
                             f"{'MiB' if budget.total >= 1 << 20 else 'bytes'} of text; the rest was not read)")
    return result
