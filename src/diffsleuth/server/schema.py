"""The documented, versioned response of ``POST /v1/scan``: one row per uploaded file, in order.

Version 1 (the ``/v1`` in the path) promises the keys below with these types; a change that
removes or retypes one gets a new path (``/v2``). Rows may carry more keys: the detector's own
extras (the same columns ``diffsleuth scan`` prints). ``verdict`` is the headline
(:mod:`diffsleuth.verdict`); with ``--no-provenance`` it is ``detector_verdict`` and the provenance
keys are null. The model allows extra keys rather than dropping them, so what a script gets is
what the CLI prints plus ``score_map``.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from diffsleuth.detectors.scanning import ScanResult

SCORE_MAP_DECIMALS = 4


class ScanRow(BaseModel):
    """One uploaded file: its score and label, or the reason it could not be scored."""

    model_config = ConfigDict(extra="allow")

    path: str = Field(description="The file name as uploaded (untrusted text: render it as text).")
    score: Optional[float] = Field(description="The detector score in [0, 1] (higher: more like generated "
                                   "images; not a chance); null when the file could not be read.")
    label: Optional[str] = Field(description="'generated' or 'real' at the threshold, kept for compatibility: "
                                 "show verdict instead; null on error.")
    error: Optional[str] = Field(description="Why the file could not be scored; null when it was.")
    threshold: Optional[float] = Field(None, description="The threshold used for label.")
    verdict: Optional[str] = Field(None, description="The headline: 'generated (declared)' / 'ai-edited (declared)' "
                                   "(a valid C2PA signature says so), 'generated (claimed)' / 'ai-edited (claimed)' "
                                   "(unsigned metadata or a failed signature says so: show detector_verdict beside it), "
                                   "else detector_verdict; null on error.")
    detector_verdict: Optional[str] = Field(None, description="What the pixels say: 'generated', 'uncertain', "
                                            "\"outside the detector's domain\" or 'no trace found' (never 'real'); "
                                            "null on error.")
    declared: Optional[str] = Field(None, description="What the file's metadata declares: 'generated', "
                                    "'ai-edited', 'camera' or null (never 'real': metadata is easily stripped).")
    declared_by: Optional[str] = Field(None, description="How that declaration is backed: 'signed (trusted)', "
                                       "'signed (untrusted signer)', 'signature invalid', 'unsigned' (text anyone "
                                       "can write) or null.")
    provenance: Optional[str] = Field(None, description="Short human description of the provenance evidence, "
                                      "or null when none was found.")
    score_map: Optional[list[list[float]]] = Field(
        description="Rows x cols, one cell per region of the image as the detector read it, top row first, "
                    f"rounded to {SCORE_MAP_DECIMALS} places; null when the detector gives no map. A cell is "
                    "P(generated) unless the detector says otherwise (LaRE²: reconstruction error relative to "
                    "the image's largest, where low is suspicious).")


def score_map_json(score_map: np.ndarray | None) -> list[list[float]] | None:
    """The map as nested lists rounded to 4 places (JSON-ready; non-finite cells become 0 or 1), or None."""
    if score_map is None:
        return None
    grid = np.atleast_2d(np.asarray(score_map, dtype=np.float64))
    grid = np.nan_to_num(grid, nan=0.0, posinf=1.0, neginf=0.0)  # JSON has no NaN or infinity
    return np.round(grid, SCORE_MAP_DECIMALS).tolist()


def scan_row(result: ScanResult) -> dict[str, Any]:
    """The HTTP row of one result: the CLI's row plus ``score_map``."""
    return {**result.as_row(), "score_map": score_map_json(result.score_map)}
