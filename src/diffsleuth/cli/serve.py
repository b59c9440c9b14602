"""``diffsleuth serve``: run the HTTP service (needs the ``server`` extra)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from diffsleuth.cli.app import app, fail_usage


@app.command()
def serve(
    detector: Annotated[Optional[str], typer.Option("--detector", "-d", help="Shipped name or detector folder.")] = None,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    precision: Annotated[str, typer.Option(help="auto, fp32, fp16 or bf16.")] = "auto",
    threshold: Annotated[Optional[float], typer.Option(
        min=0.0, max=1.0, help="Label at this threshold (0..1) instead of the detector's stored one.")] = None,
    provenance: Annotated[bool, typer.Option(
        "--provenance/--no-provenance", help="Read C2PA manifests and generator/camera metadata of uploads.")] = True,
) -> None:
    """Serve the web page at /, POST /v1/scan (multipart files) and GET /health."""
    try:
        import uvicorn

        from diffsleuth.server.app import create_app
    except ImportError as exc:
        raise fail_usage(f"the server needs its extra: pip install 'diffsleuth[server]' ({exc})") from exc
    from diffsleuth.detectors.base import WeightsError
    from diffsleuth.detectors.registry import load_detector, resolve_detector_path
    from diffsleuth.devices import resolve_device, resolve_dtype

    try:
        torch_device = resolve_device(device)
        model = load_detector(detector, device=torch_device, dtype=resolve_dtype(torch_device, precision),
                              threshold=threshold)
        card = resolve_detector_path(detector) / "MODEL_CARD.md"
    except (ValueError, KeyError, WeightsError) as exc:
        raise fail_usage(str(exc)) from exc
    uvicorn.run(create_app(model, model_card=card, provenance=provenance), host=host, port=port)
