"""``--precision int8``: the default judge's encoder block-wise INT8 in the torch-free runtime only."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from diffsleuth.cli.app import EXIT_USAGE
from diffsleuth.cli.main import app
from diffsleuth.detectors.registry import load_detector
from imagefiles import write_good_files
from toy_detector import saved_toy

runner = CliRunner()


@pytest.mark.parametrize("extra", [["--runtime", "torch"], ["--device", "cuda"]])
def test_int8_with_torch_is_a_usage_error(tmp_path, extra):
    image = next(iter(write_good_files(tmp_path / "img").values()))
    result = runner.invoke(app, ["scan", str(image), "--precision", "int8", *extra])
    assert result.exit_code == EXIT_USAGE, result.output
    assert "int8" in result.output and "--device cpu" in result.output


def test_int8_precision_of_a_torch_detector_is_refused(tmp_path):
    toy = saved_toy(tmp_path / "toy")
    with pytest.raises(ValueError, match="torch-free runtime"):
        load_detector(toy, encoder_precision="int8")


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_onnx_runtime_in_half_precision_is_a_usage_error(tmp_path, precision):
    image = next(iter(write_good_files(tmp_path / "img").values()))
    result = runner.invoke(app, ["scan", str(image), "--runtime", "onnx", "--precision", precision])
    assert result.exit_code == EXIT_USAGE, result.output
    assert "--runtime onnx" in result.output and precision in result.output
