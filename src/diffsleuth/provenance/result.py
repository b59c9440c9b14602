"""What the provenance readers found in one file, and how it combines with a detector's label.

Each reader (C2PA, generator metadata, XMP source type, camera EXIF) returns :class:`Evidence`
items; :class:`Provenance` combines them. The combination is deliberately conservative:

- ``declared`` is the strongest declaration among the evidence that counts: ``generated`` over
  ``ai-edited`` over ``camera``. A manifest that fails validation (tampered, bad signature,
  unreadable) never declares anything: it is reported, and counts neither way.
- ``generated (declared)`` replaces the detector's label only when ``declared`` is ``generated``,
  which needs an intact C2PA manifest, generator settings or an IPTC source type that says so.
  Self-declared generation is accepted without a trusted signer because nobody gains by falsely
  declaring their own photo generated; a declared camera or AI edit never changes the label,
  because a camera claim is easy to forge and an edit covers only part of the image.
- Finding nothing gives ``declared`` null, never "real": metadata is stripped by almost every
  re-encode, upload or screenshot.
"""

from __future__ import annotations

from dataclasses import dataclass, field

GENERATED = "generated"
AI_EDITED = "ai-edited"
CAMERA = "camera"
DECLARED_GENERATED_VERDICT = "generated (declared)"
SIGNED_TRUSTED = "signed (trusted)"
SIGNED_UNTRUSTED = "signed (untrusted signer)"
SIGNATURE_INVALID = "signature invalid"
UNSIGNED = "unsigned"
SIGNATURES = (SIGNED_TRUSTED, SIGNED_UNTRUSTED, SIGNATURE_INVALID, UNSIGNED)
"""How the strongest declaration in a file is backed: a valid C2PA signature (from a signer on the
trust list, or not), a C2PA signature that fails, or nothing (text anyone can write)."""
RANK = {GENERATED: 3, AI_EDITED: 2, CAMERA: 1}
MAX_FIELD_CHARS = 2000
"""Raw fields are kept for inspection, cut to this many characters (prompts and workflows can be huge)."""


def clip(text: str, limit: int = MAX_FIELD_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def one_line(text: object, limit: int = 120) -> str:
    """A name taken from a file (tool, model, signer) as one short line: files are untrusted."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[:limit] + "..."


@dataclass(frozen=True)
class Evidence:
    """One finding: where it came from, what it declares (or None), in one short human phrase."""

    kind: str
    """``c2pa``, ``metadata`` (generator settings), ``xmp`` (IPTC digital source type) or ``exif``."""
    text: str
    declared: str | None = None
    source: str | None = None
    fields: dict[str, str] = field(default_factory=dict)


@dataclass
class Provenance:
    """Everything read from one file's metadata; never derived from the pixels.

    ``validation`` describes the C2PA manifest when there is one (``trusted``, ``valid (untrusted
    signer)``, ``invalid (<codes>)``, ``remote (not fetched)``, ``unreadable (<reason>)``, ``not
    verified (...)``), else None. ``errors`` lists readers that failed on this file; what the
    others found still stands.
    """

    evidence: list[Evidence] = field(default_factory=list)
    validation: str | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def declared(self) -> str | None:
        best = self._strongest()
        return best.declared if best else None

    @property
    def signature(self) -> str | None:
        """How :attr:`declared` is backed (one of :data:`SIGNATURES`); None when nothing is declared."""
        best = self._strongest()
        if best is None:
            return None
        if best.kind != "c2pa":
            return UNSIGNED
        if self.validation == "trusted":
            return SIGNED_TRUSTED
        if self.validation and self.validation.startswith("valid"):
            return SIGNED_UNTRUSTED
        return SIGNATURE_INVALID

    @property
    def source(self) -> str | None:
        best = self._strongest()
        if best is not None:
            return best.source
        return next((e.source for e in self.evidence if e.source), None)

    @property
    def fields(self) -> dict[str, str]:
        """The raw metadata fields behind the evidence, by name."""
        out: dict[str, str] = {}
        for item in self.evidence:
            out.update(item.fields)
        return out

    @property
    def summary(self) -> str | None:
        """A short human string for the ``provenance`` column; None when nothing was found."""
        parts = [item.text for item in self.evidence]
        parts += [f"not read: {error}" for error in self.errors]
        return "; ".join(parts) if parts else None

    def verdict(self, label: str | None) -> str | None:
        """``generated (declared)`` when generation is declared, else the detector's label."""
        if label is None:
            return None
        return DECLARED_GENERATED_VERDICT if self.declared == GENERATED else label

    def as_dict(self) -> dict[str, object]:
        return {"declared": self.declared, "source": self.source, "validation": self.validation,
                "summary": self.summary, "fields": self.fields, "errors": list(self.errors)}

    def _strongest(self) -> Evidence | None:
        ranked = [e for e in self.evidence if e.declared in RANK]
        return max(ranked, key=lambda e: RANK[e.declared], default=None)


def verdict_of(provenance: Provenance | None, label: str | None) -> str | None:
    """The row's ``verdict``: the label when provenance was not read (``--no-provenance``)."""
    return label if provenance is None else provenance.verdict(label)
