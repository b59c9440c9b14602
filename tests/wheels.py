"""A minimal wheel built in a test, for pip to download from a local folder (no network)."""

from __future__ import annotations

import zipfile
from pathlib import Path


def build_wheel(folder: Path, name: str, version: str, members: dict[str, bytes]) -> Path:
    """``name-version-py3-none-any.whl`` in ``folder`` holding ``members`` plus the dist-info pip reads."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": b"raise ImportError('never import me')\n",
        **members,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    with zipfile.ZipFile(wheel, "w") as archive:
        for member, data in files.items():
            archive.writestr(member, data)
        archive.writestr(f"{info}/RECORD", "".join(f"{m},,\n" for m in files) + f"{info}/RECORD,,\n")
    return wheel
