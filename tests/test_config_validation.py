"""A saved detector's config.json is validated on load: a bad one is exit 2 naming the field."""

from __future__ import annotations

import json
import math
import shutil

import pytest
from typer.testing import CliRunner

from diffsleuth.cli.app import EXIT_USAGE
from diffsleuth.cli.main import app
from diffsleuth.detectors import load_detector
from diffsleuth.detectors.scanning import score_decoded
from diffsleuth.settings import ConfigError, config_from_dict
from imagefiles import write_good_files
from toy_detector import ToyConfig, saved_toy

runner = CliRunner()

BAD = {
    "NaN threshold": (lambda m: m["config"].update(threshold=math.nan), "config.threshold", "finite"),
    "threshold over 1": (lambda m: m["config"].update(threshold=1.5), "config.threshold", "between 0.0 and 1.0"),
    "Infinity in a list": (lambda m: m["config"]["preprocess"].update(mean=[0.5, math.inf, 0.5]),
                           "config.preprocess.mean[1]", "finite"),
    "string for an int": (lambda m: m["config"].update(hidden="4"), "config.hidden", "whole number"),
    "zero size": (lambda m: m["config"]["preprocess"].update(size=0), "config.preprocess.size", "between 1"),
    "zero std": (lambda m: m["config"]["preprocess"].update(std=[0.5, 0, 0.5]), "config.preprocess.std", "between 1e-06"),
    "short tuple": (lambda m: m["config"]["preprocess"].update(std=[0.5]), "config.preprocess.std", "3 items"),
    "unknown policy": (lambda m: m["config"]["preprocess"].update(policy="zoom"), "config.preprocess", "zoom"),
    "unknown setting": (lambda m: m["config"].update(colour=1), "config", "unknown config keys ['colour']"),
    "unknown top key": (lambda m: m.update(extra=1), "config.json", "unknown keys ['extra']"),
    "unknown detector": (lambda m: m.update(detector="nope"), "detector", "unknown detector 'nope'"),
    "config not an object": (lambda m: m.update(config=[1]), "config", "wrong type"),
    "negative width": (lambda m: m["config"].update(hidden=-2), "config", "cannot build"),
}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return saved_toy(tmp_path_factory.mktemp("toy") / "toy")


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    return write_good_files(tmp_path_factory.mktemp("img"))["png"]


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_config_is_refused_naming_the_field(case, toy, image, tmp_path):
    edit, field, words = BAD[case]
    folder = shutil.copytree(toy, tmp_path / "model")
    meta = json.loads((folder / "config.json").read_text())
    edit(meta)
    (folder / "config.json").write_text(json.dumps(meta))  # json writes NaN/Infinity as Python reads them
    with pytest.raises(ConfigError) as info:
        load_detector(folder)
    assert field in str(info.value) and words in str(info.value)
    result = runner.invoke(app, ["scan", str(image), "--detector", str(folder)])
    assert result.exit_code == EXIT_USAGE and "Traceback" not in result.output
    assert field in " ".join(result.output.split()).replace(" ", "") or field in result.output


@pytest.mark.parametrize("text", ["", "{", "[1, 2]", "null"])
def test_config_that_is_not_a_json_object_is_refused(text, toy, image, tmp_path):
    folder = shutil.copytree(toy, tmp_path / "model")
    (folder / "config.json").write_text(text)
    result = runner.invoke(app, ["scan", str(image), "--detector", str(folder)])
    assert result.exit_code == EXIT_USAGE and "config.json" in result.output and "Traceback" not in result.output


def test_valid_settings_still_load_and_ints_pass_for_floats():
    config = config_from_dict(ToyConfig, {"threshold": 1, "preprocess": {"size": 16, "mean": [0, 0, 0]}})
    assert config.threshold == 1 and config.preprocess.mean == (0, 0, 0) and config.preprocess.size == 16


def test_non_finite_score_becomes_an_error_row(toy):
    model = load_detector(toy)
    from diffsleuth.detectors.base import Prediction
    from conftest import random_photo

    model.predict = lambda images, batch_size=32: [Prediction(score=math.nan, label="real") for _ in images]
    (row,) = score_decoded(model, ["x.png"], [random_photo(0)])
    assert row.score is None and "non-finite" in row.error


def _numeric(tp) -> bool:
    import types
    import typing

    if tp in (int, float):
        return True
    return typing.get_origin(tp) in (typing.Union, types.UnionType, tuple, list) and any(
        _numeric(arg) for arg in typing.get_args(tp) if arg is not Ellipsis)


def _unranged(cls, prefix: str = "config") -> list[str]:
    import dataclasses
    import typing

    missing = []
    hints = typing.get_type_hints(cls)
    for spec in dataclasses.fields(cls):
        tp, name = hints[spec.name], f"{prefix}.{spec.name}"
        nested = [t for t in (tp, *typing.get_args(tp)) if dataclasses.is_dataclass(t)]
        if nested:
            missing += _unranged(nested[0], name)
        elif _numeric(tp) and "range" not in spec.metadata:
            missing.append(name)
    return missing


def test_every_numeric_setting_of_every_detector_has_a_range():
    """A number in config.json is checked against a range, so no setting runs nonsense (item 7)."""
    from diffsleuth.detectors.registry import available_detectors, detector_class

    names = [n for n in available_detectors() if not n.startswith("toy")]
    assert {"judge", "lare2", "dnf", "dire"} <= set(names)
    assert {n: _unranged(detector_class(n).config_class) for n in names} == {n: [] for n in names}


JUDGE = {"width": 4, "embed_dim": 8, "proj_hidden": 16, "num_traces": 2,
         "preprocess": {"size": 64, "policy": "center_crop"}}


@pytest.mark.parametrize("field, value, words", [
    ("test_grid", 1000, "between 1 and 16"),
    ("test_grid", 0, "between 1 and 16"),
    ("max_short_side", 0, "between 32 and 16384"),
    ("max_short_side", -5, "between 32 and 16384"),
    ("num_traces", 100000, "between 1 and 1024"),
    ("calibration_slope", 1e300, "between -1000.0 and 1000.0"),
])
def test_judge_settings_out_of_range_are_refused_on_load(field, value, words, tmp_path, image):
    """A saved judge whose config.json asks for a 1000x1000 grid or a 0-px side is exit 2, not scored."""
    from diffsleuth.detectors.judge.model import JudgeConfig, JudgeDetector

    folder = JudgeDetector.from_config(config_from_dict(JudgeConfig, JUDGE)).save_pretrained(tmp_path / "judge")
    meta = json.loads((folder / "config.json").read_text())
    meta["config"][field] = value
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=f"config.{field}: must be {words}"):
        load_detector(folder)
    result = runner.invoke(app, ["scan", str(image), "--detector", str(folder)])
    assert result.exit_code == EXIT_USAGE and f"config.{field}" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("cls, data, field", [
    ("diffsleuth.detectors.lare2.model:Lare2Config", {"lare": {"timestep": 5000}}, "lare.timestep"),
    ("diffsleuth.detectors.lare2.model:Lare2Config", {"dropout": 1.5}, "dropout"),
    ("diffsleuth.detectors.dnf.model:DnfConfig", {"feature": {"num_steps": 0}}, "feature.num_steps"),
    ("diffsleuth.detectors.dnf.model:DireDetectorConfig", {"feature": {"num_steps": -1}}, "feature.num_steps"),
    ("diffsleuth.detectors.judge.model:JudgeConfig", {"preprocess": {"mean": [0.5, 7, 0.5]}}, "preprocess.mean"),
])
def test_other_detectors_settings_out_of_range_are_refused(cls, data, field):
    import importlib

    module, name = cls.split(":")
    with pytest.raises(ConfigError, match=rf"{field}: must be between"):
        config_from_dict(getattr(importlib.import_module(module), name), data)
