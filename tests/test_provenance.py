"""Provenance: C2PA fixtures, generator metadata layouts, camera EXIF, stripped and hostile files."""

from __future__ import annotations

import builtins
import io
import json
import struct
import zlib

import pytest
from PIL import Image

from conftest import REPO, random_photo
from diffsleuth.provenance import read_provenance
from diffsleuth.verdict import GENERATED as GENERATED_V, CLAIMED_GENERATED, DECLARED_GENERATED, NO_TRACE, VALID_SIGNATURES, verdict_for
from diffsleuth.provenance.result import (SIGNATURE_INVALID, SIGNED_TRUSTED,
                                         SIGNED_UNTRUSTED, UNSIGNED)
from provenance_files import (A1111_PARAMETERS, XMP_TEMPLATE, camera_jpeg, generator_files, jpeg_with_exif, sign_c2pa,
                              png_with_text, user_comment)

C2PA_FIXTURES = REPO.parent / "shared" / "fixtures" / "c2pa"

# file -> (declared, signature, validation, words the details must contain)
EXPECTED = {
    "C.jpg": (None, None, "valid (untrusted signer)", ["non-AI algorithm", "algorithmicMedia"]),
    "CA.jpg": (None, None, "valid (untrusted signer)", ["no AI declared"]),
    "C_with_CAWG_data.jpg": ("camera", SIGNED_UNTRUSTED, "valid (untrusted signer)", ["digitalCapture"]),
    "ocsp.jpg": ("ai-edited", SIGNED_UNTRUSTED, "valid (untrusted signer)",
                 ["compositeWithTrainedAlgorithmicMedia", "Adobe Firefly"]),
    "sd14_fake_0000_c2pa_ai.png": ("generated", SIGNED_UNTRUSTED, "valid (untrusted signer)",
                                   ["trainedAlgorithmicMedia", "Stable Diffusion 1.4"]),
    "XCA.jpg": (None, None, "invalid (assertion.dataHash.mismatch)", ["does not count"]),
    "E-sig-CA.jpg": (None, None, "invalid (claimSignature.mismatch)", ["does not count"]),
    "no_alg.jpg": ("camera", UNSIGNED, "unreadable (unknown algorithm)", ["not evidence either way", "exif: camera"]),
    "no_manifest.jpg": (None, None, None, []),
    "libpng-test.png": (None, None, None, []),
}


@pytest.fixture(scope="module")
def c2pa_fixtures():
    pytest.importorskip("c2pa")
    if not (C2PA_FIXTURES / "manifest.csv").is_file():
        pytest.skip("../shared/fixtures/c2pa is not beside this checkout")
    return C2PA_FIXTURES


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_c2pa_fixture(c2pa_fixtures, name):
    declared, signature, validation, words = EXPECTED[name]
    found = read_provenance(c2pa_fixtures / name)
    assert (found.declared, found.signature, found.validation, found.errors) == (declared, signature, validation, [])
    for word in words:
        assert word in " ".join(found.details)
    if found.summary:
        assert len(found.summary) <= 120 and "\n" not in found.summary
    from_bytes = read_provenance((c2pa_fixtures / name).read_bytes())
    assert from_bytes.as_dict() == found.as_dict()
    assert json.loads(json.dumps(found.as_dict()))["validation"] == validation


def test_summary_is_one_short_line_and_details_say_the_rest(c2pa_fixtures):
    """The Photoshop/Firefly file: one line saying what is claimed and that it is signed."""
    found = read_provenance(c2pa_fixtures / "ocsp.jpg")
    assert found.summary.startswith("ai-edited (signed C2PA claim")
    assert "Adobe Firefly" in found.summary and len(found.summary) <= 120
    assert any("signer Adobe Inc." in line for line in found.details)
    assert found.as_dict()["details"] == found.details and found.as_dict()["signature"] == SIGNED_UNTRUSTED


def test_only_a_valid_signature_gives_a_declared_verdict(c2pa_fixtures):
    verdicts = {name: verdict_for(NO_TRACE, read_provenance(c2pa_fixtures / name)) for name in EXPECTED}
    assert verdicts["sd14_fake_0000_c2pa_ai.png"] == DECLARED_GENERATED
    for name, verdict in verdicts.items():
        found = read_provenance(c2pa_fixtures / name)
        assert verdict.endswith("(declared)") == (found.signature in VALID_SIGNATURES and found.declared != "camera")


def _png_bytes(seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    random_photo(seed).save(buffer, format="PNG")
    return buffer.getvalue()


def test_signed_in_test_trained_is_generated_and_trust_anchors_make_it_trusted(c2pa_fixtures):
    signed = sign_c2pa(c2pa_fixtures, _png_bytes(), "trainedAlgorithmicMedia")
    found = read_provenance(signed)
    assert (found.declared, found.source, found.validation) == ("generated", "Test Model 2", "valid (untrusted signer)")
    anchors = (c2pa_fixtures / "test-certs" / "test_cert_root_bundle.pem").read_text()
    trusted = read_provenance(signed, trust_anchors=anchors)
    assert (trusted.declared, trusted.validation, trusted.signature) == ("generated", "trusted", SIGNED_TRUSTED)
    assert trusted.summary.startswith("generated (signed C2PA claim, trusted signer)")


def test_algorithmic_media_is_not_ai_and_composite_is_ai_edited(c2pa_fixtures):
    assert read_provenance(sign_c2pa(c2pa_fixtures, _png_bytes(), "algorithmicMedia")).declared is None
    assert read_provenance(sign_c2pa(c2pa_fixtures, _png_bytes(), "compositeWithTrainedAlgorithmicMedia")).declared == "ai-edited"


def test_a_manifest_that_fails_validation_is_a_claim_with_an_invalid_signature(c2pa_fixtures):
    """Like an OpenAI image whose credential does not validate here: still a claim, never "signed"."""
    signed = bytearray(sign_c2pa(c2pa_fixtures, _png_bytes(), "trainedAlgorithmicMedia"))
    idat = signed.index(b"IDAT")
    signed[idat + 20] ^= 0xFF  # one byte of compressed pixels
    found = read_provenance(bytes(signed))
    assert found.validation.startswith("invalid") and found.declared == "generated"
    assert found.signature == SIGNATURE_INVALID and found.source == "Test Model 2"
    assert found.summary.startswith("generated (C2PA claim, signature invalid)") and "signed C2PA" not in found.summary
    assert verdict_for(NO_TRACE, found) == CLAIMED_GENERATED  # a claim, never "(declared)"


def test_a_signed_claim_outranks_an_unsigned_one_of_the_same_kind(c2pa_fixtures):
    from PIL.PngImagePlugin import PngInfo

    info, buffer = PngInfo(), io.BytesIO()
    info.add_text("parameters", A1111_PARAMETERS)
    random_photo(0).save(buffer, format="PNG", pnginfo=info)
    both = sign_c2pa(c2pa_fixtures, buffer.getvalue(), "trainedAlgorithmicMedia")  # settings signed over, unsigned
    found = read_provenance(both)
    assert (found.declared, found.signature) == ("generated", SIGNED_UNTRUSTED)
    assert found.summary.endswith("(+1 more)") and any("unsigned claim" in line for line in found.details)
    unsigned = read_provenance(both, c2pa=False)
    assert (unsigned.declared, unsigned.signature) == ("generated", UNSIGNED)
    assert unsigned.summary.startswith("generated (unsigned claim): settings of AUTOMATIC1111")


def test_remote_manifest_is_reported_and_never_fetched(c2pa_fixtures, monkeypatch):
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("provenance tried to open a network connection")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    signed = sign_c2pa(c2pa_fixtures, _png_bytes(), "trainedAlgorithmicMedia", remote="http://127.0.0.1:9/m.c2pa")
    found = read_provenance(signed)
    assert found.validation == "remote (not fetched)" and found.declared is None and found.signature is None
    assert "http://127.0.0.1:9/m.c2pa" in found.summary


def test_without_c2pa_python_a_manifest_is_reported_not_verified(c2pa_fixtures, monkeypatch):
    real_import = builtins.__import__

    def no_c2pa(name, *args, **kwargs):
        if name == "c2pa":
            raise ImportError("No module named 'c2pa'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_c2pa)
    found = read_provenance(c2pa_fixtures / "sd14_fake_0000_c2pa_ai.png")
    assert found.declared is None and found.validation.startswith("not verified")
    assert "not verified" in found.summary and "diffsleuth[provenance]" in found.details[0]
    assert read_provenance(c2pa_fixtures / "no_manifest.jpg").summary is None


@pytest.fixture(scope="module")
def generators(tmp_path_factory):
    return generator_files(tmp_path_factory.mktemp("generators"))


@pytest.mark.parametrize("name", ["a1111_png", "forge_png", "a1111_jpeg", "a1111_webp", "comfyui_png",
                                  "comfyui_workflow_only", "comfyui_webp", "invokeai_v3", "invokeai_v2",
                                  "invokeai_dream", "novelai"])
def test_generator_settings_declare_generation(generators, name):
    path, source = generators[name]
    found = read_provenance(path)
    assert (found.declared, found.signature, found.errors) == ("generated", UNSIGNED, [])
    assert source in found.source
    assert found.summary.startswith("generated (unsigned claim): settings of") and found.fields
    assert verdict_for(NO_TRACE, found) == CLAIMED_GENERATED
    assert not any(e.kind == "exif" for e in found.evidence)  # ComfyUI's EXIF Make/Model is not a camera


def test_generator_text_after_the_image_data_is_found(tmp_path, generators):
    data = generators["a1111_png"][0].read_bytes()
    text_at = data.index(b"tEXtparameters") - 4
    length = struct.unpack(">I", data[text_at:text_at + 4])[0]
    chunk = data[text_at:text_at + 12 + length]
    rest = data[:text_at] + data[text_at + 12 + length:]
    moved = rest[:-12] + chunk + rest[-12:]  # just before IEND
    assert read_provenance(moved).declared == "generated"
    assert Image.open(io.BytesIO(moved)).info.get("parameters") is None  # Pillow alone would need the pixels


def test_camera_exif_is_weak_evidence(tmp_path):
    found = read_provenance(camera_jpeg(tmp_path / "IMG_0001.JPG"))
    assert (found.declared, found.source, found.signature) == ("camera", "Canon EOS 5D Mark IV", UNSIGNED)
    assert found.summary == "camera (unsigned claim): Canon EOS 5D Mark IV in EXIF (weak: easily copied)"
    assert "weak" in found.details[0] and verdict_for(GENERATED_V, found) == GENERATED_V  # a camera claim never changes it


def test_generator_settings_outrank_a_copied_camera_exif(tmp_path):
    path = jpeg_with_exif(tmp_path / "mixed.jpg", {0x010F: "NIKON CORPORATION", 0x0110: "NIKON D850"},
                          {0x9286: user_comment(A1111_PARAMETERS)})
    found = read_provenance(path)
    assert found.declared == "generated" and "(+1 more)" in found.summary
    assert "NIKON D850" in found.details[1]


@pytest.mark.parametrize("dst, declared", [("trainedAlgorithmicMedia", "generated"),
                                           ("compositeWithTrainedAlgorithmicMedia", "ai-edited"),
                                           ("algorithmicMedia", None), ("digitalCapture", "camera")])
def test_iptc_digital_source_type_in_xmp(tmp_path, dst, declared):
    jpeg = jpeg_with_exif(tmp_path / "x.jpg", xmp=XMP_TEMPLATE.format(dst=dst))
    info = png_with_text(tmp_path / "x.png", {"XML:com.adobe.xmp": XMP_TEMPLATE.format(dst=dst)}, compressed=True)
    for path in (jpeg, info):
        found = read_provenance(path)
        assert found.declared == declared and dst in found.summary
        assert found.signature == (UNSIGNED if declared else None)


def test_stripped_files_declare_nothing(tmp_path, generators):
    """Re-encoding drops the metadata: the result is null, never "real"."""
    for name in ("a1111_png", "comfyui_png", "novelai"):
        stripped = tmp_path / f"{name}.png"
        Image.open(generators[name][0]).save(stripped)
        found = read_provenance(stripped)
        assert (found.declared, found.summary, found.validation) == (None, None, None)
        assert verdict_for(NO_TRACE, found) == NO_TRACE and verdict_for(None, found) is None
    for fmt in ("JPEG", "WEBP"):
        plain = tmp_path / f"plain.{fmt.lower()}"
        random_photo(1).save(plain, fmt)
        assert read_provenance(plain).declared is None


def test_near_misses_are_not_generator_settings(tmp_path):
    path = png_with_text(tmp_path / "notes.png", {"parameters": "exposure +1, contrast 5", "prompt": "hello",
                                                  "Comment": "holiday 2023", "Software": "GIMP 2.10"})
    assert read_provenance(path).summary is None


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


HOSTILE = {
    "empty": b"",
    "garbage": b"\x00\x01garbage c2pa jumb dcterms:provenance",
    "truncated_png": _png_bytes()[:60],
    "chunk_length_lies": b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 2**31) + b"tEXtparameters\0x",
    "ztxt_bomb": b"\x89PNG\r\n\x1a\n" + _chunk(b"zTXt", b"parameters\0\0" + zlib.compress(b"A" * (16 << 20), 9)),
    "bad_utf16_comment": b"",
    "jpeg_with_broken_exif": b"\xff\xd8\xff\xe1\x00\x10Exif\x00\x00MM\x00*\xff\xff\xff\xff\xff\xd9",
    "deep_json": b"\x89PNG\r\n\x1a\n" + _chunk(b"tEXt", b"prompt\0" + b"[" * 100000 + b"]" * 100000),
    "regex_bait": b"\x89PNG\r\n\x1a\n" + _chunk(b"tEXt", b"parameters\0" + b"\nSteps: 1, x" * 200000)
    + _chunk(b"tEXt", b"Dream\0" + b'"' + b' "-s' * 200000),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_input_never_raises(name, tmp_path):
    data = HOSTILE[name]
    if name == "bad_utf16_comment":
        path = jpeg_with_exif(tmp_path / "x.jpg", sub={0x9286: b"UNICODE\0\xd8\x00\xd8"})
        data = path.read_bytes()
    found = read_provenance(data)
    assert found.declared is None
    assert found.summary is None or isinstance(found.summary, str)


def test_size_limit_and_non_files_are_errors_not_exceptions(tmp_path, generators):
    path = generators["a1111_png"][0]
    over = read_provenance(path, max_bytes=100)
    assert over.declared is None and "over the limit of 100" in over.summary and over.details
    assert "not a regular file" in read_provenance(tmp_path).summary
    assert "cannot read file" in read_provenance(tmp_path / "missing.png").summary


def test_reading_never_decodes_pixels(generators, monkeypatch):
    def no_decoding(self, *args, **kwargs):
        raise AssertionError("provenance decoded pixels")

    monkeypatch.setattr(Image.Image, "load", no_decoding)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", no_decoding)
    for name in ("a1111_jpeg", "a1111_webp", "comfyui_png", "invokeai_v3"):
        assert read_provenance(generators[name][0]).declared == "generated"


def test_summary_stays_one_short_line_whatever_the_file_says(tmp_path):
    """Tool and model names come from the file: a long or multi-line one is cut, never spread over lines."""
    long_model = "model-" + "x" * 300 + "\n\x1b[31mred"
    params = A1111_PARAMETERS.replace("v1-5-pruned-emaonly", long_model.replace("\n", " "))
    path = png_with_text(tmp_path / "long.png", {"parameters": params, "Software": "NovelAI",
                                                 "Comment": "{\"steps\": 1, \"sampler\": \"x\", \"uc\": \"\"}"})
    found = read_provenance(path)
    assert len(found.summary) <= 120 and found.summary.endswith("... (+1 more)")
    assert all(len(line) <= 200 and "\n" not in line for line in found.details)
