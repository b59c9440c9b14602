"""Turn the paths, folders and globs a person typed into the files to read, and say what went amiss.

The expansion is done before any model is loaded, so that a mistyped path or a glob that matches
nothing is reported at once instead of after a load of several seconds; and it counts what the
folder walks left out (files whose suffix is not an image format the installed Pillow reads), so
that a scan can say it skipped them instead of dropping them silently.
"""

from __future__ import annotations

import glob
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from diffsleuth.io.formats import IMAGE_EXTENSIONS
from diffsleuth.io.guards import path_kind, walk_images


@dataclass
class Expansion:
    """The files to read, in order and without duplicates, and what the expansion noticed.

    ``missing``: named paths (not globs) that do not exist; they stay in ``files`` too, so that a
    scan still gives them an error row. ``unmatched``: globs that matched nothing. ``skipped``:
    files the folder walks left out, counted by suffix.
    """

    files: list[Path] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)

    def skipped_summary(self) -> str | None:
        """What the walks skipped, e.g. ``skipped 3 files in the folders: not an image format this install
        reads (.txt: 2, .xcf: 1)``; None when they skipped nothing."""
        total = sum(self.skipped.values())
        if not total:
            return None
        kinds = ", ".join(f"{suffix}: {count}" for suffix, count in self.skipped.most_common(8))
        more = ", ..." if len(self.skipped) > 8 else ""
        return (f"skipped {total} file{'s' if total != 1 else ''} in the folders: not an image format this "
                f"install reads ({kinds}{more})")


def expand(inputs: Iterable[str | os.PathLike], extensions: frozenset[str] = IMAGE_EXTENSIONS) -> Expansion:
    """Files as given, folders recursively (``extensions`` only), globs expanded; never raises.

    A named file is kept whatever its suffix (or its kind: a FIFO, a link to nothing, a missing
    path), so that it becomes an error row instead of vanishing; so is a folder that cannot be
    listed.
    """
    found: dict[Path, None] = {}
    result = Expansion()
    for item in inputs:
        text = os.fspath(item)
        path = Path(text)
        kind = path_kind(path)
        if kind == "dir":
            found.update(dict.fromkeys(walk_images(path, extensions, result.skipped)))
        elif kind == "file" or not glob.has_magic(text):
            if kind == "missing":
                result.missing.append(text)
            found.setdefault(path, None)
        else:
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                result.unmatched.append(text)
            for match in matches:
                candidate = Path(match)
                if path_kind(candidate) == "dir":
                    found.update(dict.fromkeys(walk_images(candidate, extensions, result.skipped)))
                else:
                    found.setdefault(candidate, None)
    result.files = list(found)
    return result
