"""The documented, versioned response of ``POST /v1/scan``: one row per uploaded file, in order.

Version 1 (the ``/v1`` in the path) promises the keys below with these types; a change that
removes or retypes one gets a new path (``/v2``). Rows may carry more keys: the detector's own
extras (the same columns ``diffsleuth scan`` prints) and, when the server checks provenance, the
provenance keys (``verdict``, ``declared``, ``provenance``: null, or the label, with ``--no-provenance``).
The model allows them rather than dropping them, so what a script gets is what
the CLI prints plus ``score_map``.
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
    score: Optional[float] = Field(description="P(generated) in [0, 1]; null when the file could not be read.")
    label: Optional[str] = Field(description="'generated' or 'real' at the threshold; null on error.")
    error: Optional[str] = Field(description="Why the file could not be scored; null when it was.")
    threshold: Optional[float] = Field(None, description="The threshold used for label.")
    verdict: Optional[str] = Field(None, description="'generated (declared)' when the file declares itself "
                                   "generated, else the label; null on error (the label when the server runs with --no-provenance).")
    declared: Optional[str] = Field(None, description="What the file's metadata declares: 'generated', "
                                    "'ai-edited', 'camera' or null (never 'real': metadata is easily stripped).")
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
