"""``diffsleuth serve``: run the HTTP service (needs the ``server`` extra)."""

from __future__ import annotations

import errno
import socket
from typing import Annotated, Optional

import typer

from diffsleuth.cli.app import app, fail_usage
from diffsleuth.cli.weights import Runtime, configure_runtime, is_loading_error, load_scoring_detector
from diffsleuth.detectors.scanning import DEFAULT_MAX_BATCH_PIXELS
from diffsleuth.extras import require
from diffsleuth.io.decode import DEFAULT_MAX_PIXELS
from diffsleuth.server.limits import ServiceLimits, uvicorn_config

_D = ServiceLimits  # the defaults (this module imports nothing of the server extra, nor torch)



@app.command()
def serve(
    detector: Annotated[Optional[str], typer.Option("--detector", "-d", help="Shipped name or detector folder.")] = None,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps (anything but the CPU needs torch).")] = "auto",
    precision: Annotated[str, typer.Option(help="auto, fp32, fp16, bf16, or int8 (the default judge's encoder block-wise INT8 on the CPU; see scan --help).")] = "auto",
    runtime: Annotated[Runtime, typer.Option(
        help="auto: onnxruntime without torch where it can score the detector, else torch; onnx or torch force one.")]
    = Runtime.auto,
    threads: Annotated[Optional[int], typer.Option(
        min=1, help="CPU threads for the model (onnxruntime, and torch's) [default: every CPU].")] = None,
    threshold: Annotated[Optional[float], typer.Option(
        min=0.0, max=1.0, help="Label at this threshold (0..1) instead of the detector's stored one.")] = None,
    provenance: Annotated[bool, typer.Option(
        "--provenance/--no-provenance", help="Read C2PA manifests and generator/camera metadata of uploads.")] = True,
    max_request_bytes: Annotated[int, typer.Option(
        min=1, help="Largest request body; refused from Content-Length before reading (413).")] = _D.max_request_bytes,
    max_file_bytes: Annotated[int, typer.Option(min=1, help="Largest uploaded file (413 beyond).")] = _D.max_file_bytes,
    max_files: Annotated[int, typer.Option(min=1, help="Most files in one request (413 beyond).")] = _D.max_files,
    max_pixels: Annotated[int, typer.Option(min=1, help="Refuse images larger than this (error row).")] = DEFAULT_MAX_PIXELS,
    max_batch_pixels: Annotated[int, typer.Option(min=1, help="Decoded pixels in memory at once per scan.")] = DEFAULT_MAX_BATCH_PIXELS,
    max_concurrent: Annotated[int, typer.Option(min=1, help="Scans scored at the same time.")] = _D.max_concurrent,
    max_uploads: Annotated[int, typer.Option(
        min=1, help="Scan requests admitted at once: bodies in memory, being read or scored.")] = _D.max_uploads,
    max_queue: Annotated[int, typer.Option(min=0, help="Scans waiting for a slot; beyond, 503 with Retry-After.")] = _D.max_queue,
    max_client_scans: Annotated[int, typer.Option(
        min=1, help="Scan requests admitted or waiting from one client address (503 beyond).")] = _D.max_client_scans,
    queue_timeout: Annotated[float, typer.Option(min=0.1, help="Seconds a scan may wait for a slot before 503.")] = _D.queue_timeout,
    retry_after: Annotated[int, typer.Option(min=0, help="Retry-After seconds sent with 503.")] = _D.retry_after,
    header_timeout: Annotated[float, typer.Option(
        min=0.1, help="Seconds a connection has to send a complete request head.")] = _D.header_timeout,
    body_timeout: Annotated[float, typer.Option(
        min=0.1, help="Seconds a request body has to arrive in full (408 beyond).")] = _D.body_timeout,
    keep_alive_timeout: Annotated[int, typer.Option(min=1, help="Seconds an idle keep-alive connection stays open.")] = _D.keep_alive_timeout,
    max_connections: Annotated[int, typer.Option(min=1, help="Open connections at most (503 beyond).")] = _D.max_connections,
    max_client_connections: Annotated[int, typer.Option(
        min=1, help="Open connections from one client address; further ones are closed at once.")] = _D.max_client_connections,
    max_header_bytes: Annotated[int, typer.Option(min=1, help="Largest request head.")] = _D.max_header_bytes,
) -> None:
    """Serve the web page at /, POST /v1/scan (multipart files) and GET /health, with the limits above."""
    require("server", "diffsleuth serve")
    import uvicorn

    from diffsleuth.server.app import create_app
    from diffsleuth.detectors.registry import resolve_detector_path

    limits = ServiceLimits(
        max_request_bytes=max_request_bytes, max_file_bytes=max_file_bytes, max_files=max_files,
        max_concurrent=max_concurrent, max_uploads=max_uploads, max_queue=max_queue,
        max_client_scans=max_client_scans, queue_timeout=queue_timeout, retry_after=retry_after,
        header_timeout=header_timeout, body_timeout=body_timeout, keep_alive_timeout=keep_alive_timeout,
        max_connections=max_connections, max_client_connections=max_client_connections,
        max_header_bytes=max_header_bytes)
    listener = _listen(host, port)  # before the model loads: a busy port is a usage error, found at once
    configure_runtime(threads, None)
    try:
        model = load_scoring_detector(detector, device, precision, threshold, runtime.value)
        card = resolve_detector_path(detector) / "MODEL_CARD.md"
    except Exception as exc:  # noqa: BLE001 -- only the loading errors become usage errors
        listener.close()
        if is_loading_error(exc) or isinstance(exc, (ValueError, KeyError, ImportError)):
            raise fail_usage(str(exc)) from exc
        raise
    service = create_app(model, max_pixels=max_pixels, limits=limits, max_batch_pixels=max_batch_pixels,
                         model_card=card, provenance=provenance)
    shown = f"[{host}]" if ":" in host else host
    typer.echo(f"diffsleuth serve: http://{shown}:{listener.getsockname()[1]}/ (Ctrl+C to stop)", err=True)
    uvicorn.Server(uvicorn_config(service, host, port, limits)).run(sockets=[listener])


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (as uvicorn binds it); a usage error naming the port when it cannot be."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except (OSError, OverflowError) as exc:
        sock.close()
        reason = "address already in use" if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE else str(exc)
        raise fail_usage(f"cannot listen on {host}:{port}: {reason}; choose another --port") from exc
    sock.set_inheritable(True)
    return sock
