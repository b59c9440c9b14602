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
    from diffsleuth.io.decode import ImageDecodeError, decode_image

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

    with pytest.raises(ImageDecodeError, match="missing.png"):
        model.predict(tmp_path / "missing.png")
    with pytest.raises(ImageDecodeError, match="not a recognised image"):
        model.predict(b"not an image")
    with pytest.raises(ImageDecodeError, match="over the limit"):
        model.predict(path, max_pixels=100)
    with pytest.raises(ValueError, match=r"HxWx3 uint8"):
        model.predict(np.zeros((8, 8, 3), dtype=np.float32))
    with pytest.raises(TypeError, match="int"):
        model.predict([3])
