"""``diffsleuth scan --ray`` (and its deprecated name ``scan-ray``): the same rows as ``diffsleuth scan``,
written by Ray Data on a local Ray."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from diffsleuth.cli.app import EXIT_PARTIAL, EXIT_USAGE
from diffsleuth.cli.main import app
from imagefiles import write_broken_files, write_good_files

ray = pytest.importorskip("ray")
runner = CliRunner()


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mixed").resolve()
    write_good_files(folder / "good")
    write_broken_files(folder / "broken")
    return folder


def said(result) -> str:
    """The command's output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def read_rows(folder, fmt: str) -> pd.DataFrame:
    files = sorted(folder.iterdir())
    assert files, f"nothing written to {folder}"
    reader = {"csv": pd.read_csv, "jsonl": lambda f: pd.read_json(f, lines=True), "parquet": pd.read_parquet}[fmt]
    return pd.concat([reader(f) for f in files]).set_index("path").sort_index()


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_cluster_rows_equal_the_local_scan(local_ray, mixed, tmp_path, fmt):
    local = runner.invoke(app, ["scan", str(mixed), "--format", "json"])
    expected = pd.DataFrame(json.loads(local.stdout)).set_index("path").sort_index()
    command = ["scan-ray"] if fmt == "parquet" else ["scan", "--ray"]  # parquet: only the old name
    result = runner.invoke(app, [*command, str(mixed), "--output", str(tmp_path / "rows"), "--format", fmt,
                                 "--actors", "1", "--batch-size", "4", "--summary"])
    assert result.exit_code == local.exit_code == EXIT_PARTIAL, result.output
    assert ("deprecated" in said(result)) == (fmt == "parquet")
    rows = read_rows(tmp_path / "rows", fmt)
    assert list(rows.index) == list(expected.index)
    scored = expected["error"].isna()
    assert scored.sum() > 0 and (~scored).sum() > 0
    # An actor runs torch on one thread, the local scan on all cores: summation order differs.
    assert rows.loc[scored, "score"].tolist() == pytest.approx(expected.loc[scored, "score"].tolist(), abs=1e-5)
    assert rows.loc[scored, "label"].tolist() == expected.loc[scored, "label"].tolist()
    assert rows["trace_similarity"].notna().tolist() == scored.tolist()
    assert rows.loc[~scored, "error"].tolist() == expected.loc[~scored, "error"].tolist()
    assert rows.loc[~scored, "score"].isna().all()
    if fmt == "csv":  # one writer for both commands: same header, and error rows (no float) are the same text
        local_csv = runner.invoke(app, ["scan", str(mixed), "--format", "csv"]).stdout.splitlines()
        cluster_csv = [line for f in sorted((tmp_path / "rows").iterdir()) for line in f.read_text().splitlines()]
        assert set(cluster_csv) >= {local_csv[0]} and cluster_csv.count(local_csv[0]) == len(
            list((tmp_path / "rows").iterdir()))
        error_lines = {line for line in local_csv[1:] if next(csv.reader([line]))[1] == ""}  # no score
        assert error_lines and error_lines <= set(cluster_csv)
    generated = int((expected["label"] == "generated").sum())
    assert (f"{len(expected)} inputs: {generated} generated, {int(scored.sum()) - generated} real, "
            f"{int((~scored).sum())} unreadable") in said(result)


def test_refuses_a_folder_that_holds_rows_and_names_bad_inputs(local_ray, mixed, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "old.csv").write_text("path\n")
    result = runner.invoke(app, ["scan", "--ray", str(mixed), "--output", str(taken)])
    assert result.exit_code == EXIT_USAGE and "not empty" in said(result)
    assert [p.name for p in taken.iterdir()] == ["old.csv"]

    missing = tmp_path / "gone.png"
    result = runner.invoke(app, ["scan", "--ray", str(missing), "--output", str(tmp_path / "a")])
    assert result.exit_code == EXIT_USAGE and "gone.png" in said(result)
    result = runner.invoke(app, ["scan", "--ray", str(mixed), "s3://bucket/x", "--output", str(tmp_path / "b")])
    assert result.exit_code == EXIT_USAGE and "mix of URIs and local paths" in said(result)
    result = runner.invoke(app, ["scan", "--ray", str(mixed), "--detector", "nope", "--output", str(tmp_path / "c")])
    assert result.exit_code == EXIT_USAGE and "Traceback" not in result.output
    result = runner.invoke(app, ["scan", "--ray", str(mixed), "--precision", "fp8", "--output", str(tmp_path / "d")])
    assert result.exit_code == EXIT_USAGE and "fp8" in said(result)
    result = runner.invoke(app, ["scan", "--ray", str(mixed), "--device", "cpu", "--output", str(tmp_path / "e")])
    assert result.exit_code == EXIT_USAGE and "--gpus-per-actor" in said(result)
    result = runner.invoke(app, ["scan", "--ray", str(mixed), "--maps", "s3://bucket/maps", "--output",
                                 str(tmp_path / "f")])
    assert result.exit_code == EXIT_USAGE and "every node sees" in said(result)
    assert not any((tmp_path / name).exists() for name in "abcdef")


def test_resume_scores_only_the_inputs_missing_from_the_folder(local_ray, mixed, tmp_path):
    out = tmp_path / "rows"
    good, broken = sorted((mixed / "good").iterdir()), sorted((mixed / "broken").iterdir())
    first = runner.invoke(app, ["scan", "--ray", str(mixed / "good"), "--output", str(out), "--actors", "1"])
    assert first.exit_code == 0, first.output
    first_files = set(out.iterdir())
    resumed = runner.invoke(app, ["scan", "--ray", str(mixed), "--output", str(out), "--actors", "1", "--resume"])
    assert resumed.exit_code == EXIT_PARTIAL, resumed.output
    assert f"{len(good)} rows already there" in said(resumed)
    new_rows = pd.concat([pd.read_csv(f) for f in set(out.iterdir()) - first_files])
    assert sorted(new_rows["path"]) == [str(p) for p in broken]
    rows = read_rows(out, "csv")
    assert rows.index.is_unique and sorted(rows.index) == sorted(str(p) for p in good + broken)


def test_any_file_name_and_a_fifo_get_their_rows(local_ray, tmp_path):
    import os

    from diffsleuth.io.guards import decode_path

    folder = tmp_path / "odd"
    folder.mkdir()
    source = sorted(write_good_files(tmp_path / "good").values())[0].read_bytes()
    names = [b"cr\r.png", b"lf\n.png", b"bad\xff\xfe.png", b"back\\udcff.png"]
    for name in names:
        with open(os.path.join(os.fsencode(folder), name), "wb") as handle:
            handle.write(source)
    os.mkfifo(folder / "fifo.jpg")
    out = tmp_path / "rows"
    args = ["scan", "--ray", str(folder), "--output", str(out), "--actors", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == EXIT_PARTIAL, result.output
    rows = pd.concat([pd.read_csv(f, keep_default_na=False) for f in sorted(out.iterdir())])
    paths = sorted(os.fsencode(decode_path(p)) for p in rows["path"])
    expected = sorted([os.path.join(os.fsencode(folder), n) for n in names] + [os.fsencode(folder / "fifo.jpg")])
    assert paths == expected
    errors = dict(zip(rows["path"], rows["error"]))
    assert "FIFO" in errors[str(folder / "fifo.jpg")] and sum(1 for e in errors.values() if e) == 1
    resumed = runner.invoke(app, [*args, "--resume"])
    assert resumed.exit_code == EXIT_PARTIAL and "5 rows already there" in said(resumed), resumed.output


def test_table_means_csv_row_files_and_json_is_refused(local_ray, mixed, tmp_path):
    result = runner.invoke(app, ["scan", "--ray", str(mixed / "good"), "--output", str(tmp_path / "rows"),
                                 "--actors", "1"])
    assert result.exit_code == 0, result.output
    assert read_rows(tmp_path / "rows", "csv").index.is_unique
    result = runner.invoke(app, ["scan", "--ray", str(mixed), "--format", "json", "--output", str(tmp_path / "j")])
    assert result.exit_code == EXIT_USAGE and "csv or jsonl" in said(result)
    result = runner.invoke(app, ["scan", "--ray", str(mixed)])
    assert result.exit_code == EXIT_USAGE and "--output" in said(result)


def test_a_uri_survives_the_output_path_option():
    from diffsleuth.distributed.ray_common import restore_uri

    assert restore_uri(str(Path("s3://bucket/scores"))) == "s3://bucket/scores"
    assert restore_uri("/local/scores") == "/local/scores"


def cluster_and_local(mixed, tmp_path, *options):
    """The same scan with ``options`` on a local Ray (rows by path) and in one process (json rows by path)."""
    local = runner.invoke(app, ["scan", str(mixed), "--format", "json", *options])
    cluster = runner.invoke(app, ["scan", "--ray", str(mixed), "--output", str(tmp_path / "rows"), "--actors", "1",
                                  *options])
    assert cluster.exit_code == local.exit_code, cluster.output
    return read_rows(tmp_path / "rows", "csv"), pd.DataFrame(json.loads(local.stdout)).set_index("path").sort_index()


def test_threshold_changes_the_verdicts_as_in_the_local_scan(local_ray, mixed, tmp_path):
    default = pd.DataFrame(json.loads(runner.invoke(app, ["scan", str(mixed / "good"), "--format", "json"]).stdout))
    threshold = round(float(default["score"].median()), 3)  # halfway through the scores: some labels flip
    rows, local = cluster_and_local(mixed / "good", tmp_path, "--threshold", str(threshold))
    assert (rows["threshold"] == threshold).all() and (local["threshold"] == threshold).all()
    assert rows["label"].tolist() == local["label"].tolist()
    assert rows["verdict"].tolist() == local["verdict"].tolist()
    assert rows["label"].tolist() != default.set_index("path").sort_index()["label"].tolist()
    assert rows["label"].tolist() == ["generated" if s >= threshold else "real" for s in rows["score"]]


def test_max_bytes_gives_the_local_scans_error_row(local_ray, mixed, tmp_path):
    sizes = sorted(path.stat().st_size for path in (mixed / "good").iterdir())
    limit = sizes[len(sizes) // 2]  # the larger half of the files is refused
    rows, local = cluster_and_local(mixed / "good", tmp_path, "--max-bytes", str(limit))
    refused = rows["error"].fillna("").str.contains("over the limit")
    assert 0 < refused.sum() < len(rows)
    assert refused.tolist() == [Path(path).stat().st_size > limit for path in rows.index]
    assert rows.loc[refused, "error"].tolist() == local.loc[refused.values, "error"].tolist()
    assert rows.loc[refused, "score"].isna().all()


def test_maps_writes_one_overlay_per_scored_image(local_ray, tmp_path):
    from PIL import Image

    from conftest import random_photo
    from diffsleuth.detectors.score_maps import overlay_name

    folder, maps = tmp_path / "in", tmp_path / "maps"
    folder.mkdir()
    random_photo(0, (700, 700)).save(folder / "square.png")
    random_photo(1, (1000, 700)).save(folder / "wide.png")
    random_photo(2, (64, 48)).save(folder / "small.png")  # one cell: a one-cell map draws no overlay
    result = runner.invoke(app, ["scan", "--ray", str(folder), "--output", str(tmp_path / "rows"), "--actors", "1",
                                 "--maps", str(maps)])
    assert result.exit_code == 0, result.output
    scored = read_rows(tmp_path / "rows", "csv").index
    written = sorted(path.name for path in maps.iterdir())
    assert written == sorted(overlay_name(path) for path in scored if not path.endswith("small.png"))
    assert f"wrote {len(written)} score-map overlays" in said(result) and len(written) == 2
    with Image.open(maps / written[0]) as png:
        assert png.format == "PNG"


def test_threads_sets_each_actors_torch_threads(monkeypatch):
    import torch

    from diffsleuth.cli.scan_ray import actor_settings
    from diffsleuth.distributed.ray_scan import ScoreImages

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)  # what the actor's constructor asks for
    ScoreImages(actor_settings(threads=3))
    assert calls == [3]


def test_runtime_and_int8_reach_each_actors_loader(monkeypatch):
    import torch

    from diffsleuth.cli.scan_ray import actor_settings
    from diffsleuth.distributed import ray_scan

    seen = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    monkeypatch.setattr(ray_scan, "load_detector", lambda *a, **k: seen.append(k))
    monkeypatch.setattr(ray_scan, "row_columns", lambda model: [])
    ray_scan.ScoreImages(actor_settings(runtime="onnx", precision="int8", threads=1))
    ray_scan.ScoreImages(actor_settings(threads=1))
    assert [(k["runtime"], k["encoder_precision"], k["dtype"]) for k in seen] == [
        ("onnx", "int8", torch.float32), ("auto", "fp32", torch.float32)]


@pytest.mark.parametrize("options", [["--precision", "int8", "--gpus-per-actor", "1"],
                                     ["--runtime", "onnx", "--gpus-per-actor", "0.5"],
                                     ["--precision", "int8", "--runtime", "torch"]])
def test_a_cpu_only_runtime_on_gpu_actors_is_refused_before_ray_starts(mixed, tmp_path, options):
    result = runner.invoke(app, ["scan", "--ray", str(mixed), "--output", str(tmp_path / "rows"), *options])
    assert result.exit_code == EXIT_USAGE, result.output
    assert "on the CPU" in said(result) and not (tmp_path / "rows").exists()


def test_max_batch_pixels_bounds_each_decoded_group(mixed, monkeypatch):
    import torch

    from diffsleuth.cli.scan_ray import actor_settings
    from diffsleuth.detectors import scanning
    from diffsleuth.distributed.ray_scan import ScoreImages

    plan, groups = scanning.plan_groups, []

    def spy(costs, budget, batch_size):
        planned = plan(costs, budget, batch_size)
        groups.extend(planned)
        return planned

    monkeypatch.setattr(scanning, "plan_groups", spy)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # keep this process's threads
    files = sorted((mixed / "good").glob("photo.*"))
    rows = ScoreImages(actor_settings(max_batch_pixels=1, threads=1))({"path": [str(path) for path in files]})
    assert all(score is not None for score in rows["score"])
    assert len(groups) == len(files) and all(len(group) == 1 for group in groups)  # one image decoded at a time


def test_cache_dir_is_where_each_actor_looks_for_weight_files(monkeypatch, tmp_path):
    import os

    import torch

    from diffsleuth.cli.scan_ray import actor_settings
    from diffsleuth.distributed import ray_scan

    seen = []
    monkeypatch.setenv("DIFFSLEUTH_CACHE", "/somewhere/else")  # restored after the test
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    monkeypatch.setattr(ray_scan, "load_detector", lambda *a, **k: seen.append(os.environ["DIFFSLEUTH_CACHE"]))
    monkeypatch.setattr(ray_scan, "row_columns", lambda model: [])
    ray_scan.ScoreImages(actor_settings(cache_dir=tmp_path / "weights", threads=1))
    assert seen == [str((tmp_path / "weights").resolve())]  # set before the detector (and its encoder) loads


@pytest.mark.parametrize("provenance", [True, False])
def test_no_provenance_skips_reading_metadata_in_the_actor(mixed, monkeypatch, provenance):
    import torch

    from diffsleuth.cli.scan_ray import actor_settings
    from diffsleuth.distributed import ray_scan

    read = []
    real_reader = ray_scan.read_provenance
    monkeypatch.setattr(ray_scan, "read_provenance", lambda source, **k: read.append(source) or real_reader(source, **k))
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    files = sorted((mixed / "good").glob("photo.*"))
    rows = ray_scan.ScoreImages(actor_settings(provenance=provenance, threads=1))({"path": [str(p) for p in files]})
    assert len(read) == (len(files) if provenance else 0)
    assert all(score is not None for score in rows["score"])
    if not provenance:
        assert rows["declared"] == [None] * len(files) and rows["provenance"] == [None] * len(files)


def _wait(condition, limit_s: float = 120.0) -> bool:
    """Poll ``condition`` until it holds or ``limit_s`` passes (a bound for a stuck run, not a timing)."""
    import time

    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def _alive(pids) -> list[int]:
    from diffsleuth.distributed.reaper import _processes

    table = _processes()
    return [pid for pid, started in pids.items() if pid in table and table[pid][1] == started]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _driver(tmp_path, body: str):
    """A Python process running ``body`` after importing our sources; prints READY when set up."""
    import subprocess
    import sys

    script = tmp_path / "driver.py"
    script.write_text(f"import sys, time\nsys.path.insert(0, {str(Path(__file__).parent.parent / 'src')!r})\n"
                      f"{body}\nprint('READY', flush=True)\ntime.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "READY"
    return proc


def test_the_reaper_kills_what_a_driver_killed_with_sigkill_leaves(tmp_path):
    """Without Ray: a detached grandchild outlives its killed parent unless the reaper saw it."""
    from diffsleuth.distributed.reaper import descendants

    proc = _driver(tmp_path, "import subprocess\n"
                             "child = subprocess.Popen(['sleep', '600'], start_new_session=True)\n"
                             "from diffsleuth.distributed.reaper import start_reaper\nreaper = start_reaper()")
    below = descendants(proc.pid)
    reaper = next(pid for pid in below if b"reaper.py" in _cmdline(pid))
    assert _wait(lambda: Path(f"/proc/{reaper}/stat").read_text().split(")")[1].split()[0] == "S")
    proc.kill()
    proc.wait()
    assert _wait(lambda: not _alive(below)), f"left running: {_alive(below)}"


def test_a_local_ray_dies_with_a_scan_killed_by_sigkill(tmp_path):
    from diffsleuth.distributed.reaper import descendants

    proc = _driver(tmp_path, "import logging\nfrom diffsleuth.distributed.ray_common import ray_session\n"
                             "session = ray_session(None, logging.WARNING)\nsession.__enter__()\n"
                             "import ray\nray.get(ray.remote(lambda: 1).remote())")
    below = {}
    _wait(lambda: below.update(descendants(proc.pid)) or any(
        b"Agent" in _cmdline(pid) for pid in _alive(below)))
    assert len(below) >= 4, below  # gcs_server, raylet, agents, the reaper...
    import time

    time.sleep(1.5)  # the reaper notes the process tree twice a second
    proc.kill()
    proc.wait()
    assert _wait(lambda: not _alive(below)), f"left running: {_alive(below)}"
