"""The base install scores without torch: scan, serve, weights fetch and predict never import it, and
the torch-free judge runtime gives the torch judge's scores.

Torch-freeness is checked in a subprocess where ``sys.modules["torch"] = None`` (any import of
torch there raises ImportError), so a stray ``import torch`` on these paths fails the test even
though torch is installed in the test environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

from conftest import REPO, random_photo
from diffsleuth.backbones import pypi_weights as pw
from diffsleuth.cli.main import app
from diffsleuth.detectors.judge.config import JudgeConfig
from diffsleuth.detectors.judge.domain import DomainConfig
from diffsleuth.detectors.judge.model import JudgeDetector
from diffsleuth.detectors.judge.runtime import JudgeRuntime
from diffsleuth.detectors.predicting import WeightsError
from diffsleuth.detectors.registry import load_detector
from tiny_onnx import tiny_judge_config

POISONED = """
import sys
sys.modules["torch"] = None  # any `import torch` from here on raises ImportError
sys.modules["torchvision"] = None
"""


def default_encoder_cached() -> bool:
    return pw.cached_sha256(pw.cached_path(pw.CLIP_VIT_B16_INT8)) == pw.CLIP_VIT_B16_INT8.sha256


needs_default = pytest.mark.skipif(not default_encoder_cached(),
                                   reason="the default's pinned encoder is not in the user cache "
                                          "(run `diffsleuth weights fetch`)")


def run_without_torch(script: str, *args: str) -> dict:
    """Run ``script`` in a fresh interpreter where torch cannot be imported; its last stdout line is JSON."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    code = POISONED + textwrap.dedent(script) + textwrap.dedent("""
        loaded = sorted(k for k, v in sys.modules.items() if k.split(".")[0] in ("torch", "torchvision") and v is not None)
        out["torch_modules"] = loaded
        print(json.dumps(out))
    """)
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result.pop("torch_modules") == [], "torch was imported"
    return result


@needs_default
def test_scan_weights_predict_and_serve_never_import_torch(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    random_photo(0, (320, 240)).save(images / "photo.png")
    (images / "broken.jpg").write_bytes(b"not an image")
    result = run_without_torch("""
        import json, pathlib
        from typer.testing import CliRunner
        from diffsleuth.cli.main import app

        images, out_dir = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
        runner, out = CliRunner(), {}
        scan = runner.invoke(app, ["scan", str(images), "--output", str(out_dir / "rows.jsonl"), "--threads", "1"])
        out["scan"] = [scan.exit_code, (out_dir / "rows.jsonl").read_text().splitlines()]
        fetch = runner.invoke(app, ["weights", "fetch"])
        out["fetch"] = [fetch.exit_code, fetch.output]
        for name, words in {"cuda": ["--device", "cuda"], "compact": ["-d", "judge-compact"],
                            "torch": ["--runtime", "torch"]}.items():
            refused = runner.invoke(app, ["scan", str(images / "photo.png"), *words])
            out[name] = [refused.exit_code, refused.output]

        import diffsleuth
        model = diffsleuth.load_detector("default")
        prediction = model.predict(str(images / "photo.png"))[0]
        out["predict"] = [type(model).__name__, prediction.score, prediction.verdict]

        from fastapi.testclient import TestClient
        from diffsleuth.server.app import create_app
        client = TestClient(create_app(model))
        response = client.post("/v1/scan", files=[("files", ("photo.png", (images / "photo.png").read_bytes(), "image/png"))])
        out["serve"] = [response.status_code, response.json()]

        import uvicorn
        uvicorn.Server.run = lambda self, sockets=None: print("serving", self.config.app)  # not forever
        served = runner.invoke(app, ["serve", "--port", "0", "--threads", "1"])
        out["serve_cli"] = [served.exit_code, served.output]
    """, str(images), str(tmp_path))
    code, lines = result["scan"]
    rows = {json.loads(line)["path"].rsplit("/", 1)[-1]: json.loads(line) for line in lines}
    assert code == 3 and set(rows) == {"photo.png", "broken.jpg"}  # one unreadable input: exit 3, its row says why
    assert rows["broken.jpg"]["error"] and rows["photo.png"]["score"] is not None and rows["photo.png"]["verdict"]
    assert result["fetch"][0] == 0 and "SHA-256 ok" in result["fetch"][1]
    for name in ("cuda", "compact", "torch"):  # what needs torch stops with a usage error naming the extra
        assert result[name][0] == 2 and "diffsleuth[gpu]" in result[name][1], result[name]
    kind, score, verdict = result["predict"]
    assert kind == "JudgeRuntime" and score == pytest.approx(rows["photo.png"]["score"], abs=1e-6) and verdict
    status, served = result["serve"]
    assert status == 200 and served[0]["score"] == rows["photo.png"]["score"]
    assert result["serve_cli"][0] == 0 and "serving" in result["serve_cli"][1]  # `diffsleuth serve` got to run


@pytest.fixture(scope="module")
def tiny_onnx_judge(tmp_path_factory):
    """A judge on the tiny ONNX tower with a domain check, saved by the torch judge."""
    folder = tmp_path_factory.mktemp("tiny-judge")
    config = tiny_judge_config(folder, centroids=3, max_distance=0.5)
    model = JudgeDetector.from_config(config)
    generator = torch.Generator().manual_seed(1)
    model.domain_centroids = torch.randn(3, 8, generator=generator)
    model.domain_outside = torch.randn(2, 8, generator=generator)
    return model.save_pretrained(folder / "detector")


def assert_same_predictions(ours, theirs) -> None:
    for a, b in zip(ours, theirs, strict=True):
        assert a.score == pytest.approx(b.score, abs=1e-5) and a.label == b.label
        assert a.outside_domain == b.outside_domain and a.verdict == b.verdict
        assert a.extras.keys() == b.extras.keys()
        for key in a.extras:
            assert a.extras[key] == pytest.approx(b.extras[key], abs=2e-6), key
        assert (a.score_map is None) == (b.score_map is None)
        if a.score_map is not None:
            assert a.score_map.shape == b.score_map.shape and np.abs(a.score_map - b.score_map).max() < 1e-5


def test_runtime_scores_equal_the_torch_judge_on_the_same_onnx_encoder(tiny_onnx_judge):
    runtime, torch_judge = load_detector(tiny_onnx_judge), load_detector(tiny_onnx_judge, runtime="torch")
    assert isinstance(runtime, JudgeRuntime) and isinstance(torch_judge, JudgeDetector)
    assert runtime.extra_columns == torch_judge.extra_columns
    images = [random_photo(0, (300, 240)), random_photo(1, (900, 700)), random_photo(2, (40, 40)),
              Image.new("RGB", (256, 256), (255, 0, 255))]
    assert_same_predictions(runtime.predict(images, threshold=0.5), torch_judge.predict(images, threshold=0.5))
    assert runtime.reduce_input(images[1]).size == torch_judge.reduce_input(images[1]).size
    assert runtime(images[0]).score == runtime.predict([images[0]])[0].score  # detector(x): one Prediction


class PooledTorchEncoder(torch.nn.Module):
    """A stand-in for the CLIP tower: 8x8 average pooling, a fixed projection to 512, tanh."""

    out_dim = 512

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.randn(192, self.out_dim, generator=torch.Generator().manual_seed(3)) / 14

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(F.adaptive_avg_pool2d(x.float(), 8).flatten(1) @ self.weight)


class PooledArrayEncoder:
    """:class:`PooledTorchEncoder` in numpy, as ``clip_runtime.load_clip_encoder`` would give it."""

    out_dim = 512

    def __init__(self, weight: np.ndarray) -> None:
        self.weight, self.calls = weight, []

    def encode(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(batch.shape)
        pooled = batch.reshape(len(batch), 3, 8, 28, 8, 28).mean(axis=(3, 5)).reshape(len(batch), -1)
        return np.tanh(pooled @ self.weight).astype(np.float32)


def test_clip_vit_b16_judge_runs_through_clip_runtime_with_the_torch_judges_scores(tmp_path, monkeypatch):
    """A judge on the clip-vit-b16 encoder (the retrained default's) loads its encoder from
    ``clip_runtime.load_clip_encoder`` (faked here) and scores as the torch judge does on the same
    encoder outputs, at the default's sizes (512-d features, 256 hidden, 128-d embedding, 8 traces)."""
    sha = "ab" * 32
    config = JudgeConfig(encoder="clip-vit-b16", backbone="pypi:tower==1.0:tower/clip.onnx", backbone_sha256=sha,
                         grid="cover", max_short_side=448, domain=DomainConfig(centroids=4, max_distance=0.6))
    torch_encoder = PooledTorchEncoder()
    judge = JudgeDetector(config, encoder=torch_encoder).eval()
    judge.domain_centroids = torch.randn(4, 512, generator=torch.Generator().manual_seed(4))
    folder = judge.save_pretrained(tmp_path / "clip-judge")
    calls = []

    def load_clip_encoder(source, sha256, precision="fp32", overrides=None, threads=None):
        calls.append((source, sha256, precision, threads))
        return PooledArrayEncoder(torch_encoder.weight.numpy())

    monkeypatch.setitem(sys.modules, "diffsleuth.backbones.clip_runtime",
                        types.SimpleNamespace(load_clip_encoder=load_clip_encoder))
    runtime = load_detector(folder, threads=2)
    assert calls == [(config.backbone, sha, "fp32", 2)]
    images = [random_photo(5, (640, 480)), random_photo(6, (224, 300)), random_photo(7, (1500, 200))]
    assert_same_predictions(runtime.predict(images), judge.predict(images))
    features = [np.random.default_rng(i).normal(size=(n, 512)).astype(np.float32) for i, n in enumerate((1, 6))]
    ours, _ = runtime.score_features(features, [(300, 300)] * 2, [(1, 1), (2, 3)])
    theirs, _ = judge.score_features([torch.from_numpy(f) for f in features], [(300, 300)] * 2, [(1, 1), (2, 3)])
    np.testing.assert_allclose(ours, theirs.numpy(), atol=1e-6)


def test_runtime_refuses_weights_that_do_not_fit_and_names_the_tensor(tiny_onnx_judge):
    from diffsleuth.backbones.onnx_encoder import load_onnx_array_encoder
    from diffsleuth.detectors.predicting import read_safetensors_numpy

    config = load_detector(tiny_onnx_judge).config
    weights = read_safetensors_numpy(tiny_onnx_judge / "model.safetensors")
    encoder = load_onnx_array_encoder(config.backbone)
    broken = {k: v for k, v in weights.items() if k != "traces"} | {"encoder.extra": np.zeros(1, np.float32)}
    with pytest.raises(WeightsError, match=r"missing \['traces'\], unexpected \['encoder.extra'\]"):
        JudgeRuntime(config, broken, encoder)
    with pytest.raises(WeightsError, match=r"wrong shape \['projection.0.bias \(3,\) \(expected \(8,\)\)'\]"):
        JudgeRuntime(config, weights | {"projection.0.bias": np.zeros(3, np.float32)}, encoder)


def test_runtime_choice_follows_the_detector_device_and_request(tiny_onnx_judge):
    from diffsleuth.detectors.base import Detector

    assert isinstance(load_detector("judge-compact"), JudgeDetector)  # its cnn encoder is trained: torch
    assert isinstance(load_detector(tiny_onnx_judge, dtype=torch.bfloat16), JudgeDetector)  # half precision: torch
    assert isinstance(Detector.from_pretrained(tiny_onnx_judge), JudgeDetector)  # the nn.Module API stays torch
    with pytest.raises(ValueError, match="onnx runtime cannot score .*'cnn' encoder runs in torch"):
        load_detector("judge-compact", runtime="onnx")
    with pytest.raises(ValueError, match="unknown runtime 'jax'"):
        load_detector(tiny_onnx_judge, runtime="jax")


def test_threads_reach_onnxruntime(tiny_onnx_judge):
    model = load_detector(tiny_onnx_judge, threads=1)
    try:
        assert model.encoder.session().get_session_options().intra_op_num_threads == 1
    finally:
        from diffsleuth.devices import set_cpu_threads

        set_cpu_threads(None)


@needs_default
def test_shipped_default_scores_the_same_in_both_runtimes():
    images = [random_photo(8, (300, 400)), random_photo(9, (900, 700)), random_photo(10, (100, 90))]
    runtime, torch_judge = load_detector("default"), load_detector("default", runtime="torch")
    assert isinstance(runtime, JudgeRuntime)
    assert_same_predictions(runtime.predict(images), torch_judge.predict(images))


def test_scan_cli_takes_runtime_and_refuses_onnx_on_a_torch_detector(tmp_path):
    image = tmp_path / "photo.png"
    random_photo(11, (200, 160)).save(image)
    result = CliRunner().invoke(app, ["scan", str(image), "-d", "judge-compact", "--runtime", "onnx"])
    assert result.exit_code == 2 and "runtime 'torch'" in result.output
    result = CliRunner().invoke(app, ["scan", str(image), "-d", "judge-compact", "--runtime", "torch",
                                      "--format", "csv"])
    assert result.exit_code == 0 and "photo.png" in result.output
