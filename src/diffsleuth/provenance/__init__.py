"""Provenance: what a file's metadata says about where it came from, beside the pixel score.

Reads C2PA manifests (offline; the ``provenance`` extra installs ``c2pa-python``), the settings
that image generators embed (AUTOMATIC1111/Forge/Civitai, ComfyUI, SwarmUI, InvokeAI, NovelAI,
Fooocus/RuinedFooocus, diffusers Spaces; in PNG, JPEG and WebP, and A1111 stealth bits in a PNG's
alpha channel), the IPTC digital source type in XMP, and camera make/model in EXIF (weak). Every
declaration is a claim with its backing (``signature``: signed and trusted, signed by an untrusted
signer, signature invalid, unsigned). It never changes a detector's score.

    >>> from diffsleuth.provenance import read_provenance
    >>> found = read_provenance("image.png")          # a path or the file's bytes
    >>> found.declared, found.signature, found.summary, found.details
"""

from diffsleuth.io.guards import DEFAULT_MAX_BYTES
from diffsleuth.provenance.reader import read_provenance
from diffsleuth.provenance.result import (
    AI_EDITED,
    CAMERA,
    GENERATED,
    SIGNATURE_INVALID,
    SIGNATURES,
    SIGNED_TRUSTED,
    SIGNED_UNTRUSTED,
    UNSIGNED,
    Evidence,
    Provenance,
)

__all__ = [
    "AI_EDITED", "CAMERA", "DEFAULT_MAX_BYTES", "GENERATED", "Evidence",
    "SIGNATURES", "SIGNATURE_INVALID", "SIGNED_TRUSTED", "SIGNED_UNTRUSTED", "UNSIGNED",
    "Provenance", "read_provenance",
]
