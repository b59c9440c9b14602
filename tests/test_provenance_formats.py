"""Generator metadata in JPEG and WebP, later tools, and A1111 stealth bits: read, and gone once stripped."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from conftest import random_photo
from diffsleuth.provenance import UNSIGNED, read_provenance
from provenance_files import (A1111_PARAMETERS, COMFY_PROMPT, jpeg_with_exif, more_generator_files, png_with_text,
                              stealth_png, user_comment, xmp_property)

NAMES = ["civitai_jpeg_utf16le", "a1111_webp_utf16le", "a1111_jpeg_ascii", "a1111_jpeg_bom", "swarmui_png",
         "swarmui_jpeg", "save_image_plus_jpeg", "save_image_plus_webp",
         "save_image_plus_quoted", "comfyui_xmp_webp", "novelai_webp",
         "novelai_xmp_webp", "fooocus", "ruined_fooocus", "ruined_fooocus_plain", "diffusers_space", "stealth_pngcomp",
         "stealth_pnginfo", "stealth_novelai"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return more_generator_files(tmp_path_factory.mktemp("more_generators"))


def test_every_layout_written_is_checked(files):
    assert sorted(files) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_generator_settings_are_an_unsigned_claim_of_generation(files, name):
    path, source = files[name]
    found = read_provenance(path)
    assert (found.declared, found.signature, found.errors) == ("generated", UNSIGNED, [])
    assert source in found.source
    assert found.summary.startswith("generated (unsigned claim): settings of") and len(found.summary) <= 120
    assert not any(e.kind == "exif" for e in found.evidence)
    assert len(found.evidence) == 1  # one tool named, not two that share field names


def _stripped(path, tmp_path):
    """What a re-encode, upload or screenshot does: the pixels, no metadata, no alpha bits."""
    with Image.open(path) as image:
        out = tmp_path / f"stripped_{path.name}"
        image.convert("RGB").save(out, image.format)
    return out


@pytest.mark.parametrize("name", NAMES)
def test_stripped_copies_declare_nothing(files, name, tmp_path):
    found = read_provenance(_stripped(files[name][0], tmp_path))
    assert (found.declared, found.signature, found.summary, found.details) == (None, None, None, [])


def test_stealth_bits_cleared_by_an_opaque_alpha_declare_nothing(files, tmp_path):
    with Image.open(files["stealth_pngcomp"][0]) as image:
        opaque = image.copy()
    opaque.putalpha(255)
    opaque.save(tmp_path / "opaque.png")
    assert read_provenance(tmp_path / "opaque.png").declared is None


def test_stealth_header_claiming_more_bits_than_the_image_holds_is_cut_not_trusted(tmp_path):
    path = stealth_png(tmp_path / "short.png", A1111_PARAMETERS, compressed=False)
    with Image.open(path) as image:
        pixels = np.array(image)
    alpha = pixels[..., 3].T.copy().ravel()
    alpha[120:152] = alpha[120:152] | 1  # bit count 0xFFFFFFFF: four billion bits announced
    pixels[..., 3] = alpha.reshape(pixels.shape[1], pixels.shape[0]).T
    Image.fromarray(pixels, "RGBA").save(path)
    found = read_provenance(path)
    assert any("metadata cut" in error for error in found.errors)


def test_stealth_is_looked_for_only_in_pngs_with_alpha_within_the_pixel_cap():
    from diffsleuth.provenance.stealth import MAX_STEALTH_PIXELS, may_hold_stealth

    def header(width, height, colour):
        import struct
        import zlib
        body = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
        return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + body + struct.pack(">I", zlib.crc32(b"IHDR" + body))

    assert may_hold_stealth(header(64, 64, 6)) and may_hold_stealth(header(64, 64, 4))
    assert not may_hold_stealth(header(64, 64, 2))  # RGB: no alpha plane, never decoded
    assert not may_hold_stealth(header(MAX_STEALTH_PIXELS, 2, 6))  # a huge canvas is not decoded for it


def test_reading_rgb_files_never_decodes_pixels(files, monkeypatch):
    def no_decoding(self, *args, **kwargs):
        raise AssertionError("provenance decoded pixels")

    monkeypatch.setattr(Image.Image, "load", no_decoding)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", no_decoding)
    for name in ("civitai_jpeg_utf16le", "save_image_plus_webp", "novelai_xmp_webp", "swarmui_png"):
        assert read_provenance(files[name][0]).declared == "generated"


@pytest.mark.parametrize("fields, xmp", [
    ({0x9286: user_comment(json.dumps({"note": "holiday", "rating": 5}))}, None),
    ({0x9286: user_comment("Steps: a walk in the park, Seed: none")}, None),
    (None, xmp_property(json.dumps({"prompt": "say cheese", "workflow": "tripod"}))),
    (None, xmp_property("NovelAI is a website I read")),
])
def test_near_misses_in_jpeg_are_not_generator_settings(tmp_path, fields, xmp):
    path = jpeg_with_exif(tmp_path / "near.jpg", sub=fields, xmp=xmp)
    assert read_provenance(path).declared is None


def test_near_misses_in_png_parameters_json_are_not_generator_settings(tmp_path):
    for value in ({"prompt": "hello"}, {"software": "GIMP", "steps": 3}, {"prompt": "x", "seed": 1},
                  {"sui_image_params": "not an object"}, {"version": "Photoshop 25", "base_model": "x"}):
        path = png_with_text(tmp_path / "near.png", {"parameters": json.dumps(value)})
        assert read_provenance(path).declared is None, value


def test_comfyui_json_in_a_png_eXIf_user_comment_is_read(tmp_path):
    exif = Image.Exif()
    exif[0x9286] = json.dumps({"prompt": COMFY_PROMPT})
    buffer = io.BytesIO()
    random_photo(0).save(buffer, "PNG", exif=exif.tobytes())
    assert read_provenance(buffer.getvalue()).source.startswith("ComfyUI")
