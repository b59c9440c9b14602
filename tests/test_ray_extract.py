"""``diffsleuth extract FEATURE --ray``: the same cache entries as one process, resumable, failures reported."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import diffsleuth
from conftest import random_photo
from diffsleuth.cli.app import EXIT_INTERRUPTED, EXIT_PARTIAL, EXIT_USAGE
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


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """48 tiny photos and one unreadable file: enough single-image batches to stop a run half-way."""
    root = tmp_path_factory.mktemp("many").resolve()
    lines = ["path,label"]
    for i in range(48):
        random_photo(100 + i, (12, 12)).save(root / f"{i}.png")
        lines.append(f"{i}.png,{i % 2}")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    lines.append("broken.png,0")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root / "manifest.csv"


def session_pids(leader: int) -> list[int]:
    """Processes of the session ``leader`` started: the CLI and the local Ray it spawned (raylet,
    GCS, workers, actors all stay in it)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text() if entry.name.isdigit() else ""
        except OSError:  # gone meanwhile
            continue
        if stat and int(stat.rsplit(")", 1)[1].split()[3]) == leader:
            pids.append(int(entry.name))
    return pids


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {seconds:.0f} s")
        time.sleep(0.05)


@pytest.fixture
def killable():
    """Start a command in its own session; whatever happens, the session is killed at the end."""
    started = []

    def start(command: list[str], log: Path) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # never join a shared Ray
        env["PYTHONPATH"] = os.pathsep.join([str(Path(diffsleuth.__file__).parents[1]), env.get("PYTHONPATH", "")])
        with open(log, "wb") as out:
            started.append(subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True))
        return started[-1]

    yield start
    for process in started:
        for pid in session_pids(process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds the Ray processes through /proc")
def test_a_run_stopped_half_way_resumes_with_the_missing_entries_only(local_ray, many, tiny_ddpm, tmp_path,
                                                                      killable):
    settings = [f"backbone={tiny_ddpm}", "size=32"]
    cache = tmp_path / "cache"
    overrides = [item for setting in settings for item in ("--set", setting)]
    log = tmp_path / "first-run.log"
    # --address local: a Ray of its own, started (and owned) by the CLI process.
    run = killable([sys.executable, "-m", "diffsleuth", "extract", "dnf", "--data", str(many), "--cache", str(cache),
                    *overrides, "--batch-size", "1", "--ray", "--address", "local", "--actors", "2"], log)
    total = 48

    def started_writing() -> bool:
        if run.poll() is not None:
            pytest.fail(f"the first run ended (exit {run.returncode}) before it was stopped:\n{log.read_text()}")
        return len(entries(cache)) > 0

    wait_for(started_writing, 180, "cache entry from the first run")
    os.killpg(run.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole process group
    try:
        run.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait(10)
        pytest.fail(f"Ctrl-C did not stop extract --ray within 30 s:\n{log.read_text()}")
    wait_for(lambda: not session_pids(run.pid), 30, "exit of every Ray process the first run started")
    assert run.returncode == EXIT_INTERRUPTED, log.read_text()
    assert "interrupted" in " ".join(log.read_text().split())
    first = len(entries(cache))
    assert 0 < first < total, f"the stop did not land half-way ({first} of {total} entries)"

    resumed = extract("dnf", many, cache, settings, "--ray", "--actors", "2")
    assert resumed.exit_code == EXIT_PARTIAL, resumed.output
    assert counts(resumed) == (total - first, first, 1)
    assert "broken.png" in said(resumed)
    local = one_thread_extract("dnf", many, tmp_path / "local", settings)
    assert counts(local) == (total, 0, 1)
    want, got = entries(tmp_path / "local"), entries(cache)
    assert len(want) == total and got.keys() == want.keys()
    assert all(got[name] == want[name] for name in want), "cache entries differ bitwise"


def test_bad_settings_fail_before_ray_starts(dataset, tmp_path):
    result = extract("dnf", dataset, tmp_path / "c", ["nonsense=1"], "--ray")
    assert result.exit_code == EXIT_USAGE and "nonsense" in said(result)
    result = extract("dnf", dataset, tmp_path / "c", [], "--ray", "--precision", "fp8")
    assert result.exit_code == EXIT_USAGE and "fp8" in said(result)


def test_a_file_name_that_is_not_utf8_reaches_the_actor_unchanged(tmp_path):
    """Arrow takes only UTF-8 row text: the record's path travels escaped and the actor gets the very name back."""
    from diffsleuth.distributed.ray_common import row_path
    from diffsleuth.distributed.ray_extract import record_items
    from diffsleuth.io.datasets import ImageRecord

    name = str(tmp_path / os.fsdecode(b"photo-\xff.png"))
    (item,) = record_items([ImageRecord(Path(name), class_name="cat")])
    item["path"].encode("utf-8")  # valid row text
    assert row_path(item["path"]) == name
    assert os.fsencode(row_path(item["path"])).endswith(b"photo-\xff.png")
