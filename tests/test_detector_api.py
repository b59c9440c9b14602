from __future__ import annotations

import json

import pytest
import torch

from conftest import random_photo
from diffsleuth.detectors import WeightsError, load_detector
from diffsleuth.detectors.base import Detector
from toy_detector import ToyConfig, ToyDetector, saved_toy


@pytest.fixture
def images():
    return [random_photo(i, (50 + i, 40)) for i in range(5)]


def test_predictions_are_probabilities_with_labels(tmp_path, images):
    model = load_detector(saved_toy(tmp_path / "toy"))
    predictions = model.predict(images, batch_size=2)
    assert len(predictions) == 5
    for p in predictions:
        assert 0.0 <= p.score <= 1.0
        assert p.label == ("generated" if p.score >= model.config.threshold else "real")


def test_batch_size_does_not_change_scores(tmp_path, images):
    model = load_detector(saved_toy(tmp_path / "toy"))
    one = [p.score for p in model.predict(images, batch_size=1)]
    many = [p.score for p in model.predict(images, batch_size=5)]
    assert one == pytest.approx(many, abs=1e-6)


def test_save_load_round_trip_is_identical(tmp_path, images):
    torch.manual_seed(3)
    model = ToyDetector(ToyConfig(hidden=6, threshold=0.3))
    model.save_pretrained(tmp_path / "m")
    loaded = Detector.from_pretrained(tmp_path / "m")
    assert isinstance(loaded, ToyDetector)
    assert loaded.config == model.config
    assert [p.score for p in loaded.predict(images)] == [p.score for p in model.predict(images)]


def test_config_json_carries_preprocessing_and_checksum(tmp_path):
    folder = saved_toy(tmp_path / "toy")
    meta = json.loads((folder / "config.json").read_text())
    assert meta["detector"] == "toy"
    assert meta["config"]["preprocess"]["size"] == 32
    assert len(meta["weights_sha256"]) == 64


def test_tampered_weights_are_refused(tmp_path):
    folder = saved_toy(tmp_path / "toy")
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-1] ^= 0x01
    (folder / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="SHA-256"):
        load_detector(folder)


def test_corrupt_safetensors_without_checksum_is_refused(tmp_path):
    folder = saved_toy(tmp_path / "toy")
    meta = json.loads((folder / "config.json").read_text())
    meta.pop("weights_sha256")
    (folder / "config.json").write_text(json.dumps(meta))
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(WeightsError, match="not a valid safetensors"):
        load_detector(folder)


def test_pickled_weights_are_refused(tmp_path):
    folder = saved_toy(tmp_path / "toy")
    torch.save(ToyDetector(ToyConfig()).state_dict(), folder / "model.safetensors")
    meta = json.loads((folder / "config.json").read_text())
    meta.pop("weights_sha256")
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match="pickled"):
        load_detector(folder)


def test_foreign_checkpoint_loads_only_plain_tensors(tmp_path):
    from diffsleuth.detectors.base import load_torch_checkpoint

    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(2)}, good)
    assert torch.equal(load_torch_checkpoint(good)["w"], torch.ones(2))

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "evil.pt"
    torch.save({"w": Evil()}, bad)
    with pytest.raises(WeightsError, match="refused"):
        load_torch_checkpoint(bad)


def test_weights_that_do_not_fit_are_refused(tmp_path):
    ToyDetector(ToyConfig(hidden=8)).save_pretrained(tmp_path / "big")
    meta = json.loads((tmp_path / "big" / "config.json").read_text())
    meta["config"]["hidden"] = 4
    (tmp_path / "big" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match="do not fit"):
        load_detector(tmp_path / "big")


def test_unknown_names_and_folders_give_clear_errors(tmp_path):
    with pytest.raises(WeightsError, match="neither a detector folder"):
        load_detector("no-such-detector")
    with pytest.raises(WeightsError, match="no config.json"):
        load_detector(tmp_path)
    with pytest.raises(WeightsError, match="no shipped weights"):
        load_detector("lare2")


def test_unknown_config_keys_are_errors(tmp_path):
    folder = saved_toy(tmp_path / "toy")
    meta = json.loads((folder / "config.json").read_text())
    meta["config"]["bogus"] = 1
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="bogus"):
        load_detector(folder)


def test_saving_the_same_weights_twice_gives_identical_files(tmp_path):
    first = saved_toy(tmp_path / "a", seed=5)
    second = saved_toy(tmp_path / "b", seed=5)
    assert (first / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()
    assert (first / "config.json").read_text() == (second / "config.json").read_text()


def test_predict_takes_paths_bytes_pil_images_and_arrays(tmp_path):
    """Every input kind gives the score the scan gives for the same file (decoded the same way)."""
    import numpy as np

    from diffsleuth.detectors.scanning import scan_paths
    from diffsleuth.io.decode import decode_image

    model = load_detector(saved_toy(tmp_path / "toy"))
    path = tmp_path / "photo.png"
    random_photo(7, (64, 48)).save(path)
    expected = next(scan_paths(model, [path])).score
    decoded = decode_image(path)
    kinds = {"str": str(path), "PathLike": path, "bytes": path.read_bytes(), "PIL": decoded,
             "array": np.asarray(decoded)}
    for kind, item in kinds.items():
        single = model.predict(item)
        assert len(single) == 1 and single[0].score == pytest.approx(expected, abs=1e-6), kind
    listed = model.predict(list(kinds.values()), batch_size=2)
    assert [p.score for p in listed] == pytest.approx([expected] * len(kinds), abs=1e-6)
    assert len(model.predict(np.stack([np.asarray(decoded)] * 3))) == 3  # NxHxWx3: a batch

    (missing,) = model.predict(tmp_path / "missing.png")
    assert missing.score is None and missing.label is None and "missing.png" in missing.error
    assert "not a recognised image" in model.predict(b"not an image")[0].error
    assert "over the limit" in model.predict(path, max_pixels=100)[0].error
    with pytest.raises(ValueError, match=r"HxWx3 uint8"):
        model.predict(np.zeros((8, 8, 3), dtype=np.float32))
    with pytest.raises(TypeError, match="int"):
        model.predict([3])


def test_one_unreadable_input_costs_only_its_own_prediction(tmp_path):
    """As a scan gives an error row: the bad input gets ``error`` and no score, the rest are scored."""
    model = load_detector(saved_toy(tmp_path / "toy"))
    good = tmp_path / "good.png"
    random_photo(1, (48, 40)).save(good)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:200])
    lazy = __import__("PIL.Image").Image.open(truncated)  # opens (header), fails when its pixels load
    inputs = [good, tmp_path / "broken.png", tmp_path / "missing.png", lazy, random_photo(2, (48, 40))]
    predictions = model.predict(inputs, batch_size=2)
    assert len(predictions) == 5
    assert [p.error is None for p in predictions] == [True, False, False, False, True]
    assert predictions[0].score == pytest.approx(model.predict(good)[0].score, abs=1e-6)
    assert all(p.score is None and p.label is None for p in predictions[1:4])
    assert "broken.png" in predictions[1].error and "missing.png" in predictions[2].error
    assert predictions[3].error.startswith("input 3")


def test_detector_is_callable_like_a_pipeline(tmp_path):
    """``detector(x)``: one input gives one Prediction, a list gives a list; a tensor is still forward."""
    from diffsleuth.detectors.base import Prediction

    model = load_detector(saved_toy(tmp_path / "toy"))
    path = tmp_path / "photo.png"
    random_photo(3, (48, 40)).save(path)
    one = model(str(path))
    assert isinstance(one, Prediction) and one.score == pytest.approx(model.predict(path)[0].score, abs=1e-6)
    assert [p.score for p in model([path, path], threshold=0.0)] == [one.score, one.score]
    assert model([path], threshold=0.0)[0].label == "generated"
    assert model(tmp_path / "missing.png").error is not None
    logits = model(torch.zeros(2, 3, 32, 32))
    assert isinstance(logits, torch.Tensor) and logits.shape == (2,)


def test_16_bit_pil_images_are_scaled_as_the_file_is(tmp_path):
    """A 16-bit (I;16) or 32-bit (I) PIL image is converted as its file is decoded, not clipped to white."""
    import numpy as np
    from PIL import Image

    model = load_detector(saved_toy(tmp_path / "toy"))
    ramp = (np.arange(64 * 48).reshape(48, 64) * 21).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    by_path = model.predict(path)[0].score
    opened = Image.open(path)
    assert opened.mode.startswith("I;16")
    assert model.predict(opened)[0].score == pytest.approx(by_path, abs=1e-6)
    from diffsleuth.io.inputs import read_input

    as_int32 = read_input(Image.fromarray(ramp.astype(np.int32), mode="I"))  # Pillow's mode for 16-bit TIFFs
    assert abs(np.asarray(as_int32).mean() - ramp.mean() * 255 / ramp.max()) < 1  # scaled, not clipped to 255
    assert np.asarray(read_input(opened)).mean() < 200


@pytest.mark.parametrize("bad, error, words", [
    (42, TypeError, "cannot score a int; give a file path"),
    (3.5, TypeError, "cannot score a float"),
    ({"a": 1}, TypeError, "cannot score a dict"),
    ([b"x", None], TypeError, "input 1: cannot score a NoneType"),
    ("https://example.com/a.jpg", ValueError, "does not download images: download the file first"),
    (["ok.png", "HTTP://example.com/b.png"], ValueError, "input 1: 'HTTP://example.com/b.png' is a URL"),
])
def test_wrong_inputs_and_urls_are_refused_before_scoring(tmp_path, bad, error, words):
    model = load_detector(saved_toy(tmp_path / "toy"))
    scored = []
    model.score_images = lambda images: scored.append(images)  # must never be reached
    with pytest.raises(error, match=words):
        model.predict(bad)
    with pytest.raises(error, match=words):
        model(bad)
    assert scored == []
