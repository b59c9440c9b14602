"""What the Ray commands (``scan --ray``, ``extract --ray``) share: the session, actor sizing, devices.

Every worker is a Ray Data actor that loads its model once and keeps it for all the batches it
is given; torch inside an actor uses only the CPUs Ray assigned to it, so actors on one machine do
not oversubscribe its cores.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator

from pathlib import Path

import ray
import torch

from diffsleuth.distributed.reaper import start_reaper, stop_reaper
from diffsleuth.io.guards import decode_path, encode_path

_COLLAPSED_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):/(?!/)")


def is_uri(location: str) -> bool:
    """Whether Ray, not the local file system, resolves ``location`` (``s3://``, ``gs://``, ...)."""
    return "://" in location


def restore_uri(location: str) -> str:
    """Undo pathlib's collapse of ``s3://bucket`` into ``s3:/bucket`` (an option typed as a path)."""
    return _COLLAPSED_URI.sub(r"\1://", location, count=1)


def path_item(path: str | Path) -> str:
    """A local file name as a row's text: Arrow takes only UTF-8, and a name need not be (the
    escape of :func:`diffsleuth.io.guards.encode_path`); :func:`row_path` gives the name back."""
    return encode_path(str(path))


def row_path(value: object) -> str:
    """The local file name a row's ``path`` (written by :func:`path_item`) stands for."""
    return decode_path(str(value))


def actor_device(gpus_per_actor: float) -> torch.device:
    """CUDA when Ray gives the actor a GPU share, else the CPU."""
    return torch.device("cuda" if gpus_per_actor > 0 else "cpu")


def limit_torch_threads(threads: int | None = None) -> None:
    """Inside an actor: ``threads`` torch threads when given (``scan --ray --threads``), else one per
    CPU Ray assigned to it."""
    if threads is None:
        threads = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
    torch.set_num_threads(threads)


def default_actors(gpus_per_actor: float, cpus_per_actor: float) -> int:
    """One actor per GPU share when actors use GPUs, else one per CPU share of the cluster."""
    resources = ray.cluster_resources()
    if gpus_per_actor > 0:
        return max(1, int(resources.get("GPU", 0) // gpus_per_actor))
    return max(1, int(resources.get("CPU", 1) // cpus_per_actor))


@contextlib.contextmanager
def ray_session(address: str | None, logging_level: int = logging.INFO) -> Iterator[None]:
    """Join ``address`` (``auto``, ``ray://...``; None: ``RAY_ADDRESS``, else a local Ray) unless
    Ray is already initialised in this process; shut down only a session started here.

    A local Ray started here sends no usage statistics (unless ``RAY_USAGE_STATS_ENABLED=1`` is
    set) and dies with this process, even by ``kill -9`` (:mod:`diffsleuth.distributed.reaper`).
    Ray's own dashboard process still probes the cloud metadata address once at start (Ray has
    no switch for it; README, "Pretrained backbones")."""
    started = not ray.is_initialized()
    local = started and not (address or os.environ.get("RAY_ADDRESS"))
    reaper = start_reaper() if local else None
    try:
        if local:
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # read by the processes ray.init starts
            ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging_level)
        elif started:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging_level)
        yield
    finally:
        if started:
            ray.shutdown()
        stop_reaper(reaper)


def map_on_actors(dataset: ray.data.Dataset, actor_class: type, settings, pool: int,
                  cpus_per_actor: float) -> ray.data.Dataset:
    """Run ``actor_class(settings)`` over ``dataset`` on a pool of ``pool`` actors, each holding
    its model once: the one way scan and extract place their work on the cluster."""
    return dataset.map_batches(
        actor_class,
        fn_constructor_args=(settings,),
        batch_size=settings.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=pool),
        num_cpus=cpus_per_actor,
        num_gpus=settings.gpus_per_actor or None,
    )
