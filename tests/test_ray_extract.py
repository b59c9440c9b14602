"""``diffsleuth extract FEATURE --ray``: the same cache entries as one process, resumable, failures reported."""

from __future__ import annotations

import re
import time

import pytest
import torch
from typer.testing import CliRunner

from conftest import random_photo
from diffsleuth.cli.app import EXIT_PARTIAL, EXIT_USAGE
from diffsleuth.cli.main import app

ray = pytest.importorskip("ray")
runner = CliRunner()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A manifest of 8 small photos (with class names, for LaRE's prompts) and one unreadable file."""
    root = tmp_path_factory.mktemp("data").resolve()
    lines = ["path,label,class_name"]
    for i in range(8):
        random_photo(i, (40 + 4 * i, 36)).save(root / f"{i}.png")
        lines.append(f"{i}.png,{i % 2},{'cat' if i < 4 else 'tabby_dog'}")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    lines.append("broken.png,0,")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root / "manifest.csv"


def said(result) -> str:
    return " ".join(result.output.split())


def counts(result) -> tuple[int, int, int]:
    """(computed, already cached, failed) from extract's summary line."""
    found = re.search(r"(\d+) computed, (\d+) already cached, (\d+) failed", said(result))
    assert found, result.output
    return tuple(int(n) for n in found.groups())


def entries(cache) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in cache.glob("*/*/*.safetensors")}


def settled(cache) -> int:
    """The number of entries once the interrupted run's actor has stopped writing (a batch it was
    working on when the driver stopped may still land; the CLI's exit ends it at once)."""
    count, stable = -1, 0
    while stable < 3:
        time.sleep(1)
        now = len(entries(cache))
        stable, count = (stable + 1, now) if now == count else (0, now)
    return count


def extract(feature, dataset, cache, settings, *extra):
    overrides = [item for setting in settings for item in ("--set", setting)]
    return runner.invoke(app, ["extract", feature, "--data", str(dataset), "--cache", str(cache),
                               "--device", "cpu", "--batch-size", "1", *overrides, *extra])


def one_thread_extract(feature, dataset, cache, settings):
    """The one-process reference with the actors' torch settings (one thread, one image per call)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return extract(feature, dataset, cache, settings)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("feature", ["dnf", "lare"])
def test_two_actors_fill_a_cache_identical_to_one_process(local_ray, dataset, tiny_ddpm, tiny_sd, tmp_path, feature):
    settings = ([f"backbone={tiny_ddpm}", "size=32", "num_steps=2"] if feature == "dnf"
                else [f"backbone={tiny_sd}", "size=64", "ensemble=2"])
    local = one_thread_extract(feature, dataset, tmp_path / "local", settings)
    assert local.exit_code == EXIT_PARTIAL, local.output
    cluster = extract(feature, dataset, tmp_path / "ray", settings, "--ray", "--actors", "2")
    assert cluster.exit_code == EXIT_PARTIAL, cluster.output
    assert counts(cluster) == counts(local) == (8, 0, 1)
    assert "broken.png" in said(cluster)
    want, got = entries(tmp_path / "local"), entries(tmp_path / "ray")
    assert len(want) == 8 and got.keys() == want.keys()
    assert all(got[name] == want[name] for name in want), "cache entries differ bitwise"
    (folder,) = {path.parent.parent for path in (tmp_path / "ray").glob("*/*/*.safetensors")}
    assert cluster.stdout.strip().endswith(folder.name)


def test_an_interrupted_run_resumes_without_recomputing(local_ray, dataset, tiny_ddpm, tmp_path):
    from diffsleuth.distributed.ray_extract import ExtractSettings, extract_on_ray
    from diffsleuth.io.datasets import load_records

    settings = [f"backbone={tiny_ddpm}", "size=32"]
    job = ExtractSettings("dnf", {"backbone": str(tiny_ddpm), "size": 32}, str(tmp_path / "cache"), batch_size=2)

    def stop(n: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract_on_ray(load_records(dataset), job, actors=1, on_batch=stop)
    first = settled(tmp_path / "cache")
    # Ray Data computes ahead of the driver, so on a fast machine the actor may have finished every
    # batch before the stop lands; what must hold either way is that nothing is computed twice.
    assert first > 0
    resumed = extract("dnf", dataset, tmp_path / "cache", settings, "--ray", "--actors", "2")
    assert resumed.exit_code == EXIT_PARTIAL, resumed.output
    assert counts(resumed) == (8 - first, first, 1)  # every entry computed exactly once over both runs
    again = extract("dnf", dataset, tmp_path / "cache", settings, "--ray", "--actors", "2")
    assert counts(again) == (0, 8, 1) and len(entries(tmp_path / "cache")) == 8


def test_bad_settings_fail_before_ray_starts(dataset, tmp_path):
    result = extract("dnf", dataset, tmp_path / "c", ["nonsense=1"], "--ray")
    assert result.exit_code == EXIT_USAGE and "nonsense" in said(result)
    result = extract("dnf", dataset, tmp_path / "c", [], "--ray", "--precision", "fp8")
    assert result.exit_code == EXIT_USAGE and "fp8" in said(result)
