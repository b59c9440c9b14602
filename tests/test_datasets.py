from __future__ import annotations

from pathlib import Path

import pytest

from conftest import random_photo
from diffsleuth.io.datasets import (
    DatasetError,
    assign_splits,
    detect_layout,
    expand_inputs,
    load_records,
)


def _img(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    random_photo(seed, (16, 16)).save(path)


def test_genimage_layout(tmp_path):
    for gen in ("sdv4", "midjourney"):
        for split in ("train", "val"):
            _img(tmp_path / gen / split / "ai" / "x_fake_name.png")
            _img(tmp_path / gen / split / "nature" / "ai_looking_name.png")
    records = load_records(tmp_path)
    assert detect_layout(tmp_path) == "genimage"
    assert len(records) == 8
    by_name = {(r.generator, r.split, r.path.parent.name): r.label for r in records}
    assert by_name[("sdv4", "train", "ai")] == 1
    assert by_name[("midjourney", "val", "nature")] == 0


def test_labels_never_come_from_file_names(tmp_path):
    _img(tmp_path / "g" / "train" / "nature" / "FAKE_ai_generated.png")
    (record,) = load_records(tmp_path)
    assert record.label == 0


def test_binary_layout_nested_per_generator_and_class(tmp_path):
    _img(tmp_path / "progan" / "car" / "0_real" / "a.png")
    _img(tmp_path / "progan" / "car" / "1_fake" / "b.png")
    _img(tmp_path / "stylegan" / "1_fake" / "c.png")
    _img(tmp_path / "test" / "biggan" / "0_real" / "d.png")
    records = {r.path.name: r for r in load_records(tmp_path)}
    assert records["a.png"].label == 0 and records["a.png"].class_name == "car"
    assert records["b.png"].generator == "progan"
    assert records["c.png"].generator == "stylegan" and records["c.png"].class_name is None
    assert records["d.png"].split == "test" and records["d.png"].generator == "biggan"


def test_manifest_with_relative_paths_and_words(tmp_path):
    _img(tmp_path / "imgs" / "a.png")
    _img(tmp_path / "imgs" / "b.png")
    (tmp_path / "list.csv").write_text("path,label,generator\nimgs/a.png,real,\nimgs/b.png,1,sdxl\n")
    a, b = load_records(tmp_path / "list.csv")
    assert a.path == tmp_path / "imgs" / "a.png" and a.label == 0 and a.generator is None
    assert b.label == 1 and b.generator == "sdxl"


def test_manifest_errors_name_the_line(tmp_path):
    (tmp_path / "m.csv").write_text("path,label\nx.png,maybe\n")
    with pytest.raises(DatasetError, match=r"m.csv:2.*maybe"):
        load_records(tmp_path / "m.csv")
    (tmp_path / "n.csv").write_text("image,klass\nx.png,1\n")
    with pytest.raises(DatasetError, match="needs 'path'"):
        load_records(tmp_path / "n.csv")


def test_shared_manifests_load_with_families(shared_data):
    multigen = load_records(shared_data / "multigen")
    assert len(multigen) == 1236
    assert {r.family for r in multigen if r.label == 1} >= {"sdxl", "pixart", "kolors"}
    sd14 = load_records(shared_data / "sd14-vs-unsplash")
    assert sum(r.label for r in sd14) == 700 and len(sd14) == 1000
    assert all(r.path.is_file() for r in sd14[:20])


def test_expand_inputs_files_folders_globs(tmp_path):
    _img(tmp_path / "a" / "1.png")
    _img(tmp_path / "a" / "deep" / "2.jpg")
    (tmp_path / "a" / "notes.txt").write_text("x")
    _img(tmp_path / "b" / "3.webp")
    found = expand_inputs([tmp_path / "a", str(tmp_path / "b" / "*.webp"), tmp_path / "a" / "1.png"])
    assert [p.name for p in found] == ["1.png", "2.jpg", "3.webp"]
    assert expand_inputs([tmp_path / "missing.png"]) == [tmp_path / "missing.png"]


def test_splits_are_deterministic_and_keep_given_ones(tmp_path):
    _img(tmp_path / "gi" / "g" / "val" / "ai" / "v.png")
    for i in range(40):
        _img(tmp_path / "x" / "0_real" / f"{i}.png", i)
    records = load_records(tmp_path / "x")
    first = assign_splits(records, 0.2, 0.2, seed=1)
    assert first == assign_splits(records, 0.2, 0.2, seed=1)
    assert {r.split for r in first} == {"train", "val", "test"}
    assert first != assign_splits(records, 0.2, 0.2, seed=2)
    kept = assign_splits(load_records(tmp_path / "gi"), seed=0)
    assert kept[0].split == "val"


def test_real_and_fake_folders_are_a_labelled_layout(tmp_path):
    """``real/`` and ``fake/`` (the development data's layout, here without its manifest), recursive."""
    _img(tmp_path / "real" / "a.png")
    _img(tmp_path / "real" / "deep" / "b.jpg")
    _img(tmp_path / "fake" / "c.png")
    _img(tmp_path / "fake" / "sdxl" / "nested" / "d.webp")
    (tmp_path / "fake" / "notes.txt").write_text("not an image")
    assert detect_layout(tmp_path) == "real_fake"
    records = {r.path.name: r for r in load_records(tmp_path)}
    assert {name: r.label for name, r in records.items()} == {"a.png": 0, "b.jpg": 0, "c.png": 1, "d.webp": 1}
    assert records["d.webp"].generator == "sdxl" and records["c.png"].generator is None
    assert records["b.jpg"].generator is None


def test_shared_data_folders_load_without_their_manifest(shared_data, tmp_path):
    for name in ("real", "fake"):
        (tmp_path / name).symlink_to(shared_data / "sd14-vs-unsplash" / name)
    records = load_records(tmp_path)
    assert len(records) == 1000 and sum(r.label for r in records) == 700


def test_eval_accepts_real_fake_folders_and_names_the_layouts_when_unlabelled(tmp_path):
    from typer.testing import CliRunner

    from diffsleuth.cli.main import app
    from toy_detector import saved_toy

    toy = saved_toy(tmp_path / "toy")
    for i in range(4):
        _img(tmp_path / "data" / "real" / f"{i}.png", i)
        _img(tmp_path / "data" / "fake" / "gen" / f"{i}.png", 50 + i)
    runner = CliRunner()
    result = runner.invoke(app, ["eval", "--detector", str(toy), "--data", str(tmp_path / "data"), "--output",
                                 str(tmp_path / "out"), "--bootstrap", "10", "--sweep", "jpeg:90"])
    assert result.exit_code == 0, result.output
    _img(tmp_path / "plain" / "x.png")
    refused = runner.invoke(app, ["eval", "--detector", str(toy), "--data", str(tmp_path / "plain"), "--output",
                                  str(tmp_path / "out2")])
    text = " ".join(refused.output.split())
    assert refused.exit_code == 2 and "no labelled images" in text
    assert "real/ and fake/ folders" in text and "0_real/ and 1_fake/" in text and "manifest.csv" in text
