"""The verdict a person reads, decided in one place for the rows, the table, the JSON, the API and the page.

Two steps, kept apart so every view can show both:

- :func:`decide_detector_verdict`: what the pixels say. ``generated`` (score at or above the
  threshold) first: a trace found is evidence whatever the input, except on inputs where the
  detector was measured to flag real images as often as generated ones (close-up faces for the
  default), which are ``outside the detector's domain`` whatever the score. Then ``outside the detector's
  domain`` (an input the detector cannot judge: too small, not photo-like, far from everything it
  trained on), because there a low score means nothing and must not read as reassurance; then
  ``uncertain`` (in the band from ``uncertain_threshold`` up to the threshold, for detectors that
  have one), else ``no trace found``. Never "real": the absence of a
  trace is not proof, and the score is a detector score, not a probability.
- :func:`compose_verdict`: the headline. A file that declares itself generated or AI-edited wins
  over the pixels, but only a valid C2PA signature makes it ``(declared)``; text anyone can write
  (generator settings, an XMP source type, a manifest whose signature fails) is a ``(claimed)``
  verdict, and the pixel result stays beside it in ``detector_verdict``. A declared camera never
  changes the headline: that claim is easy to forge and would hide a generated image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from diffsleuth.provenance import Provenance

GENERATED = "generated"
UNCERTAIN = "uncertain"
OUTSIDE_DOMAIN = "outside the detector's domain"
NO_TRACE = "no trace found"
DETECTOR_VERDICTS = (GENERATED, UNCERTAIN, OUTSIDE_DOMAIN, NO_TRACE)

DECLARED_GENERATED, DECLARED_AI_EDITED = "generated (declared)", "ai-edited (declared)"
CLAIMED_GENERATED, CLAIMED_AI_EDITED = "generated (claimed)", "ai-edited (claimed)"
VERDICTS = (DECLARED_GENERATED, DECLARED_AI_EDITED, CLAIMED_GENERATED, CLAIMED_AI_EDITED, *DETECTOR_VERDICTS)
"""Every headline :func:`compose_verdict` can give (besides None, for a file that could not be scored)."""

VALID_SIGNATURES = ("signed (trusted)", "signed (untrusted signer)")
"""``Provenance.signature`` values that back a declaration with a C2PA signature that verifies."""
_DECLARATIONS = {"generated": (DECLARED_GENERATED, CLAIMED_GENERATED),
                 "ai-edited": (DECLARED_AI_EDITED, CLAIMED_AI_EDITED)}


def decide_detector_verdict(score: float | None, threshold: float, uncertain_threshold: float | None = None,
                            outside_domain: bool = False, overrides: bool = False) -> str | None:
    """The pixels' verdict (one of :data:`DETECTOR_VERDICTS`), or None when there is no score (an error).

    ``uncertain_threshold`` None means the detector has no uncertain band; ``outside_domain`` is the
    detector's own domain check, which wins over every score below the threshold, and over every
    score when it ``overrides`` (a kind of input, such as close-up faces, where the detector's
    ``generated`` was measured to be no evidence either)."""
    if score is None:
        return None
    if outside_domain and overrides:
        return OUTSIDE_DOMAIN
    if score >= threshold:
        return GENERATED
    if outside_domain:
        return OUTSIDE_DOMAIN
    if uncertain_threshold is not None and score >= uncertain_threshold:
        return UNCERTAIN
    return NO_TRACE


def compose_verdict(detector_verdict: str | None, declared: str | None, signature: str | None) -> str | None:
    """The headline from the pixels' verdict and the file's strongest declaration and how it is backed.

    ``detector_verdict`` None (the file could not be scored) gives None whatever the metadata says.
    ``declared`` and ``signature`` are :attr:`Provenance.declared` / :attr:`Provenance.signature`."""
    if detector_verdict is None:
        return None
    if declared in _DECLARATIONS:
        signed, claimed = _DECLARATIONS[declared]
        return signed if signature in VALID_SIGNATURES else claimed
    return detector_verdict


def verdict_for(detector_verdict: str | None, provenance: Provenance | None) -> str | None:
    """:func:`compose_verdict` with a file's provenance (None when it was not read: the pixels alone)."""
    if provenance is None:
        return compose_verdict(detector_verdict, None, None)
    return compose_verdict(detector_verdict, provenance.declared, provenance.signature)
