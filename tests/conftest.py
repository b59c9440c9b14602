"""Shared fixtures: tiny real-class backbones, sample images, and the shared data when present."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

SLOW_MODULES = {"test_ray_scan", "test_ray_extract", "test_web_page"}
"""Whole files marked ``slow``: each starts a Ray cluster or drives Chromium against a server."""
SLOW_TESTS = {
    "test_dnf::test_cli_extract_train_and_scan",  # extracts and trains on ../shared/data
    "test_calibrate::test_threshold_from_one_half_holds_on_the_other",  # 320 shared photos, default model
    "test_gpu_check::test_quick_cpu_mode_runs_every_check",  # every GPU check, on the CPU
    "test_ddp_training::test_two_processes_train_and_save_one_detector",  # two processes under accelerate
    "test_evaluation::test_end_to_end_on_held_out_shared_data",  # trains and evaluates on ../shared/data
}
"""Single tests marked ``slow`` (``module::test``; tens of seconds to minutes each on 2 cores)."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the slow tests in one place, so ``make test`` (``-m "not slow"``) stays short and
    ``make test-slow`` / CI run exactly the rest."""
    for item in items:
        module = item.module.__name__.rpartition(".")[2] if getattr(item, "module", None) else ""
        if module in SLOW_MODULES or f"{module}::{getattr(item, 'originalname', item.name)}" in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "sd14-vs-unsplash" / "manifest.csv").is_file():
        pytest.skip("../shared/data is not beside this checkout")
    return SHARED_DATA


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    from diffsleuth.backbones.tiny import make_tiny_stable_diffusion

    return make_tiny_stable_diffusion(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="session")
def tiny_ddpm(tmp_path_factory) -> Path:
    from diffsleuth.backbones.tiny import make_tiny_ddpm

    return make_tiny_ddpm(tmp_path_factory.mktemp("tiny-ddpm"))


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    from diffsleuth.backbones.tiny import make_tiny_clip

    return make_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


def random_photo(seed: int, size: tuple[int, int] = (96, 80)) -> Image.Image:
    """A smooth random RGB image (low-pass noise), closer to a photo than white noise."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(size[1] // 8 + 1, size[0] // 8 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
    noise = rng.normal(0, 6, size=(size[1], size[0], 3))
    return Image.fromarray(np.clip(np.asarray(image) + noise, 0, 255).astype(np.uint8))


@pytest.fixture
def labelled_folder(tmp_path) -> Path:
    """A CNNDetection-style 0_real/1_fake folder of 12 small images."""
    for label in ("0_real", "1_fake"):
        folder = tmp_path / "toy" / label
        folder.mkdir(parents=True)
        for i in range(6):
            random_photo(i + (100 if label == "1_fake" else 0)).save(folder / f"{i}.png")
    return tmp_path / "toy"
