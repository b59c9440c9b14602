"""What the provenance readers found in one file: each declaration, and how it is backed.

Each reader (C2PA, generator metadata, XMP source type, camera EXIF) returns :class:`Evidence`
items; :class:`Provenance` combines them. Every declaration is a claim made by the file, and each
carries how it is backed (:data:`SIGNATURES`): a valid C2PA signature (from a signer on the trust
list, or not), a C2PA signature or manifest that fails validation, or nothing at all (generator
text, XMP, EXIF: anyone can write them). The claim is reported whatever its backing; deciding what
it does to the headline verdict is :mod:`diffsleuth.verdict`'s job, not this module's.

- ``declared`` is the strongest declaration: ``generated`` over ``ai-edited`` over ``camera``;
  between equal claims, the better-backed one. ``signature`` says how that one is backed.
- Finding nothing gives ``declared`` null, never "real": metadata is stripped by almost every
  re-encode, upload or screenshot.
- ``summary`` is one short line for a table; ``details`` the short lines behind it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

GENERATED = "generated"
AI_EDITED = "ai-edited"
CAMERA = "camera"
SIGNED_TRUSTED = "signed (trusted)"
SIGNED_UNTRUSTED = "signed (untrusted signer)"
SIGNATURE_INVALID = "signature invalid"
UNSIGNED = "unsigned"
SIGNATURES = (SIGNED_TRUSTED, SIGNED_UNTRUSTED, SIGNATURE_INVALID, UNSIGNED)
"""How the strongest declaration in a file is backed: a valid C2PA signature (from a signer on the
trust list, or not), a C2PA manifest whose signature or content check fails, or nothing (text
anyone can write)."""
RANK = {GENERATED: 3, AI_EDITED: 2, CAMERA: 1}
BACKING_RANK = {SIGNED_TRUSTED: 3, SIGNED_UNTRUSTED: 2, SIGNATURE_INVALID: 1, UNSIGNED: 0}
CLAIM_WORDS = {SIGNED_TRUSTED: "signed C2PA claim, trusted signer",
               SIGNED_UNTRUSTED: "signed C2PA claim, signer not on a trust list",
               SIGNATURE_INVALID: "C2PA claim, signature invalid", UNSIGNED: "unsigned claim"}
"""How a declaration reads in the summary: "signed" only for a signature that validates."""
MAX_FIELD_CHARS = 2000
"""Raw fields are kept for inspection, cut to this many characters (prompts and workflows can be huge)."""
SUMMARY_CHARS = 120
DETAIL_CHARS = 200


def clip(text: str, limit: int = MAX_FIELD_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def one_line(text: object, limit: int = 120) -> str:
    """A name taken from a file (tool, model, signer) as one short line: files are untrusted."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[:limit] + "..."


def _fit(text: str, limit: int) -> str:
    """One line of at most ``limit`` characters, "..." marking a cut."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit - 3].rstrip() + "..."


@dataclass(frozen=True)
class Evidence:
    """One finding: where it came from, what it declares (or None), and how that is backed.

    ``claim`` is the short phrase for the summary (``made by generative AI (Test Model 2)``),
    ``text`` the longer line for the details.
    """

    kind: str
    """``c2pa``, ``metadata`` (generator settings), ``xmp`` (IPTC digital source type) or ``exif``."""
    text: str
    declared: str | None = None
    source: str | None = None
    fields: dict[str, str] = field(default_factory=dict)
    signature: str = UNSIGNED
    """One of :data:`SIGNATURES`: only a C2PA manifest can be signed."""
    claim: str | None = None

    @property
    def line(self) -> str:
        """The summary line: a declaration says whether it is a signed or an unsigned claim."""
        if self.declared is None:
            return self.claim or self.text
        return f"{self.declared} ({CLAIM_WORDS[self.signature]}): {self.claim or self.text}"


@dataclass
class Provenance:
    """Everything read from one file's metadata; never derived from the pixels (except stealth bits).

    ``validation`` describes the C2PA manifest when there is one (``trusted``, ``valid (untrusted
    signer)``, ``invalid (<codes>)``, ``remote (not fetched)``, ``unreadable (<reason>)``, ``not
    verified (...)``), else None. ``errors`` lists readers that failed on this file (or metadata
    that was cut at the size limit); what the others found still stands.
    """

    evidence: list[Evidence] = field(default_factory=list)
    validation: str | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def declared(self) -> str | None:
        """The strongest claim: ``generated``, ``ai-edited``, ``camera``, or None."""
        best = self._strongest()
        return best.declared if best else None

    @property
    def signature(self) -> str | None:
        """How :attr:`declared` is backed (one of :data:`SIGNATURES`); None when nothing is declared."""
        best = self._strongest()
        return best.signature if best else None

    @property
    def source(self) -> str | None:
        """The tool or model named by the strongest claim (else by any evidence)."""
        best = self._strongest()
        if best is not None and best.source:
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
        """One short line (at most 120 characters) for the ``provenance`` column; None when nothing was found."""
        lead = self._strongest() or (self.evidence[0] if self.evidence else None)
        if lead is None and not self.errors:
            return None
        line = lead.line if lead else f"not read: {self.errors[0]}"
        more = len(self.evidence) + len(self.errors) - 1
        suffix = f" (+{more} more)" if more else ""
        return _fit(line, SUMMARY_CHARS - len(suffix)) + suffix

    @property
    def details(self) -> list[str]:
        """Short lines behind the summary, strongest claim first: each finding, then what was not read."""
        lead = self._strongest()
        ordered = ([lead] if lead else []) + [e for e in self.evidence if e is not lead]
        lines = [_fit(item.text, DETAIL_CHARS) for item in ordered]
        return lines + [_fit(f"not read: {error}", DETAIL_CHARS) for error in self.errors]

    def as_dict(self) -> dict[str, object]:
        return {"declared": self.declared, "signature": self.signature, "source": self.source,
                "validation": self.validation, "summary": self.summary, "details": self.details,
                "fields": self.fields, "errors": list(self.errors)}

    def _strongest(self) -> Evidence | None:
        ranked = [e for e in self.evidence if e.declared in RANK]
        return max(ranked, key=lambda e: (RANK[e.declared], BACKING_RANK[e.signature]), default=None)

