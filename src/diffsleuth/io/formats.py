"""Which image formats a scan reads: every format the installed Pillow decodes, less two kinds.

The list is derived from Pillow's registered openers and extensions, not written out by hand, so
a Pillow built with AVIF (or JPEG 2000, QOI...) is read as soon as it is installed, and HEIC/HEIF
is read when the optional ``pillow-heif`` is installed (``pip install 'diffsleuth[heif]'``): its
opener is registered here, on import, before any file is decoded.

Left out on purpose:

* EPS/PostScript: Pillow renders it by running the external Ghostscript program on the file,
  which a scan of untrusted files must never do;
* stubs (BUFR, GRIB, HDF5, WMF off Windows) and MPEG: Pillow only recognises them and cannot
  decode pixels without a handler the application registers.
"""

from __future__ import annotations

import importlib

from PIL import Image, ImageFile

EXCLUDED_FORMATS = frozenset({"EPS", "MPEG"})
"""Formats refused although Pillow opens them (see the module docstring for why)."""


def register_optional_openers() -> bool:
    """Register pillow-heif's HEIC/HEIF opener when it is installed; whether it was."""
    try:
        heif = importlib.import_module("pillow_heif")
    except ImportError:
        return False
    heif.register_heif_opener()
    return True


def decodable_formats() -> frozenset[str]:
    """Pillow format names (``image.format``) a scan decodes: every registered opener but the excluded."""
    Image.init()
    names = {name for name, (factory, _accept) in Image.OPEN.items()
             if name not in EXCLUDED_FORMATS
             and not (isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile))}
    if "JPEG" in names:
        names.add("MPO")  # multi-picture JPEGs: Pillow's JPEG opener returns them as format "MPO"
    return frozenset(names)


def image_extensions() -> frozenset[str]:
    """File suffixes (lower case, with the dot) of the formats :func:`decodable_formats` lists."""
    formats = decodable_formats()
    return frozenset(ext.lower() for ext, name in Image.registered_extensions().items() if name in formats)


register_optional_openers()
SUPPORTED_FORMATS = decodable_formats()
IMAGE_EXTENSIONS = image_extensions()
"""Suffixes a folder walk picks up; a file named on the command line is read whatever its suffix."""
