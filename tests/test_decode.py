from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffsleuth.io.decode import ImageDecodeError, decode_image
from imagefiles import write_broken_files, write_good_files


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return write_good_files(tmp_path_factory.mktemp("good"))


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    return write_broken_files(tmp_path_factory.mktemp("broken"))


def test_every_good_file_decodes_to_rgb(good):
    for name, path in good.items():
        image = decode_image(path)
        assert image.mode == "RGB", name
        assert image.width > 0 and image.height > 0, name


def test_exif_orientation_is_applied(good):
    stored = Image.open(good["exif_rotated"])
    assert stored.size == (64, 48)
    assert decode_image(good["exif_rotated"]).size == (48, 64)


def test_animated_gif_gives_first_frame(good):
    first = decode_image(good["animated_gif"])
    assert first.size == (40, 30)
    expected = Image.open(good["animated_gif"]).convert("RGB")
    assert np.array_equal(np.asarray(first), np.asarray(expected))


def test_sixteen_bit_png_is_scaled_not_clipped(good):
    array = np.asarray(decode_image(good["png16"]))
    assert array.min() == 0 and array.max() == 255
    assert len(np.unique(array[..., 0])) > 200


def test_cmyk_and_palette_alpha_become_rgb(good):
    assert decode_image(good["cmyk_jpeg"]).mode == "RGB"
    assert decode_image(good["palette_transparent"]).mode == "RGB"


def test_alpha_is_dropped_keeping_colour(good):
    rgba = Image.open(good["rgba_png"])
    assert np.array_equal(np.asarray(decode_image(good["rgba_png"])), np.asarray(rgba)[..., :3])


def test_jpeg_with_png_name_decodes_by_content(good):
    assert decode_image(good["jpeg_named_png"]).size == (64, 48)


@pytest.mark.parametrize("key", ["empty", "truncated_jpeg", "truncated_png", "text_as_png", "bomb_png",
                                 "random_bytes", "flipped_png"])
def test_broken_files_raise_one_typed_error_naming_the_file(broken, key):
    with pytest.raises(ImageDecodeError) as info:
        decode_image(broken[key])
    assert info.value.path == str(broken[key])
    assert str(broken[key]) in str(info.value)
    assert info.value.reason


def test_bomb_reason_mentions_the_limit(broken):
    with pytest.raises(ImageDecodeError, match="decompression-bomb"):
        decode_image(broken["bomb_png"])


def test_pixel_limit_is_configurable(good):
    with pytest.raises(ImageDecodeError, match="over the limit"):
        decode_image(good["png"], max_pixels=100)
    assert decode_image(good["png"], max_pixels=64 * 48).size == (64, 48)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageDecodeError, match="not found"):
        decode_image(tmp_path / "nope.png")
    with pytest.raises(ImageDecodeError, match="directory"):
        decode_image(tmp_path)


def test_decoding_bytes_in_memory(good):
    data = good["png"].read_bytes()
    assert decode_image(data, name="upload.png").size == (64, 48)
    with pytest.raises(ImageDecodeError, match="upload.bin"):
        decode_image(b"garbage", name="upload.bin")


def test_skimage_and_sklearn_photos_decode():
    skimage_data = pytest.importorskip("skimage.data")
    from pathlib import Path

    folder = Path(skimage_data.__file__).parent
    photos = sorted(folder.glob("*.jpg")) + sorted(folder.glob("*.png"))
    assert photos
    for path in photos:
        assert decode_image(path).mode == "RGB"
    sklearn_images = pytest.importorskip("sklearn.datasets")
    folder = Path(sklearn_images.__file__).parent / "images"
    for path in sorted(folder.glob("*.jpg")):
        assert decode_image(path).mode == "RGB"


def test_every_format_pillow_decodes_is_read_and_walked(tmp_path):
    from PIL import features

    from diffsleuth.io.expansion import expand
    from diffsleuth.io.formats import IMAGE_EXTENSIONS

    photo = Image.new("RGB", (40, 30), (200, 30, 90))
    formats = {"x.jfif": "JPEG", "x.qoi": "QOI", "x.tga": "TGA", "x.jp2": "JPEG2000"}
    if features.check("avif"):
        formats["x.avif"] = "AVIF"
    for name, fmt in formats.items():
        assert Path(name).suffix in IMAGE_EXTENSIONS
        photo.save(tmp_path / name, format=fmt)
    (tmp_path / "notes.txt").write_text("no image")
    found = expand([tmp_path])
    assert {p.name for p in found.files} == set(formats)
    assert found.skipped == {".txt": 1}
    for path in found.files:
        assert decode_image(path).size == (40, 30), path.name


def test_eps_is_refused_without_running_ghostscript(tmp_path, monkeypatch):
    import subprocess

    from diffsleuth.io.formats import IMAGE_EXTENSIONS

    def no_subprocess(*args, **kwargs):
        raise AssertionError("a program was started")

    monkeypatch.setattr(subprocess, "Popen", no_subprocess)
    monkeypatch.setattr(subprocess, "check_call", no_subprocess)
    eps = tmp_path / "x.eps"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(ImageDecodeError, match="unsupported image format 'EPS'"):
        decode_image(eps)
    assert ".eps" not in IMAGE_EXTENSIONS and ".ps" not in IMAGE_EXTENSIONS


def test_pillow_heif_opener_is_registered_when_installed(monkeypatch):
    import sys
    import types

    from diffsleuth.io import formats

    calls = []
    monkeypatch.setitem(sys.modules, "pillow_heif", types.SimpleNamespace(register_heif_opener=lambda: calls.append(1)))
    assert formats.register_optional_openers() and calls == [1]
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # not installed: nothing to register, no error
    assert not formats.register_optional_openers()


def test_a_memory_error_while_reading_the_file_is_a_decode_error(good, monkeypatch):
    from diffsleuth.io import decode

    def out_of_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(decode, "read_regular_file", out_of_memory)
    with pytest.raises(ImageDecodeError, match="not enough memory"):
        decode_image(good["png"])
