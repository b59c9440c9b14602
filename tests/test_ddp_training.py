"""Multi-process training: two CPU processes (gloo) under ``accelerate launch`` save a detector that scores."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

from conftest import random_photo
from diffsleuth.detectors.dnf.training import DnfTrainConfig
from diffsleuth.detectors.registry import load_detector
from diffsleuth.detectors.training import split_records


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_train_and_save_one_detector(tiny_ddpm, tmp_path):
    data = tmp_path / "toy"
    for label in ("0_real", "1_fake"):
        (data / label).mkdir(parents=True)
        for i in range(9):
            random_photo(i + (100 if label == "1_fake" else 0), (40, 36)).save(data / label / f"{label}{i}.png")
    out = tmp_path / "run"
    settings = {"epochs": 2, "batch_size": 8, "val_fraction": 0.4, "test_fraction": 0.0,
                "cache": str(tmp_path / "cache"), "detector.arch": "resnet18", "detector.feature.size": 32,
                "detector.feature.backbone": str(tiny_ddpm)}
    # accelerate's --cpu launcher starts one process unless MPI is set up; --multi_gpu starts N
    # processes through torch.distributed, and --device cpu makes them a gloo group on the CPU.
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), "-m", "diffsleuth", "train", "dnf", "--data", str(data),
               "--output", str(out), "--device", "cpu",
               *[item for key, value in settings.items() for item in ("--set", f"{key}={value}")]]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (done.stdout + done.stderr).count("features: 9 computed") == 2  # each process extracted its half

    report = json.loads((out / "training_report.json").read_text())
    assert report["processes"] == 2
    config = DnfTrainConfig(data=[str(data)], val_fraction=0.4, test_fraction=0.0)
    val = split_records(config)["val"]
    assert len(val) % 2 == 1  # an odd split: the second process's shard is padded ...
    assert report["val"]["n"] == len(val)  # ... and the padding is not counted twice
    assert [entry["epoch"] for entry in report["history"]] == [1, 2]

    detector = load_detector(str(out), device="cpu")
    (prediction,) = detector.predict([random_photo(7)])
    assert 0.0 <= prediction.score <= 1.0
