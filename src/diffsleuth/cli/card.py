"""``diffsleuth card DETECTOR --data ROOT``: measure a detector and write its model card."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer

from diffsleuth.cli.app import app, err_console, fail_usage


@app.command()
def card(
    detector: Annotated[str, typer.Argument(help="Detector folder or shipped name (default, judge-compact).")],
    data: Annotated[list[str], typer.Option("--data", help="Labelled dataset root or manifest (repeatable).")],
    output: Annotated[Optional[Path], typer.Option(help="Folder for MODEL_CARD.md and card_metrics.json (default: the detector's own folder; for a shipped detector ./model-card-NAME). Never inside the installed package.")] = None,
    degradation: Annotated[Optional[list[str]], typer.Option("--degradation", help="Applied to both classes, e.g. jpeg:90 (repeatable; default jpeg:90 and jpeg:75).")] = None,
    roles: Annotated[str, typer.Option(help="Comma-separated roles to score: test, holdout, calibration, check (and train, val).")] = "test,holdout,calibration,check",
    notes: Annotated[Optional[Path], typer.Option(help="Markdown with the method, training data and limits, included verbatim.")] = None,
    title: Annotated[Optional[str], typer.Option(help="The card's heading.")] = None,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for AUC/AP intervals.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap and of the synthetic out-of-domain images.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 32,
    max_per_source: Annotated[Optional[int], typer.Option(help="Score at most this many images of each source, role and class (a seeded choice).")] = None,
    non_photos: Annotated[int, typer.Option(help="Rendered text pages, charts and screenshots, of each.")] = 8,
    reuse_embeddings: Annotated[bool, typer.Option(help="Remember a frozen ONNX encoder's embeddings in the user cache (keyed by the exact input), so a re-run, or crops training encoded, cost no encoder pass.")] = False,
    render_only: Annotated[bool, typer.Option(help="Rewrite MODEL_CARD.md from the existing card_metrics.json.")] = False,
) -> None:
    """Score held-out data, out-of-domain images and wheel photos; write MODEL_CARD.md + card_metrics.json.

    The shipped detectors' cards are part of the installed package (what the service's
    /model-card serves): an --output inside the package is refused, and a shipped detector's card
    goes to ./model-card-NAME unless --output says otherwise.
    """
    from diffsleuth.extras import require

    require("eval", "diffsleuth card")
    from diffsleuth.detectors.base import WeightsError
    from diffsleuth.detectors.registry import load_detector, resolve_detector_path
    from diffsleuth.evaluation.card import evaluate_card
    from diffsleuth.evaluation.card_render import render_card
    from diffsleuth.io.datasets import DatasetError
    from diffsleuth.io.degrade import parse_degradation

    specs = list(degradation or ["jpeg:90", "jpeg:75"])
    try:
        folder = resolve_detector_path(detector)
        for spec in specs:
            parse_degradation(spec)
        note_text = notes.read_text(encoding="utf-8") if notes else ""
    except (WeightsError, ValueError, OSError) as exc:
        raise fail_usage(str(exc)) from exc
    out = output or (Path(f"model-card-{folder.name}") if inside_package(folder) else folder)
    if inside_package(out):
        raise fail_usage(f"--output {out} is inside the installed diffsleuth package ({package_dir()}), whose "
                         "shipped cards must not change: choose another folder")
    if output is None and out != folder:
        err_console.print(f"writing the card to {out}/ (the shipped detector's own card is not overwritten)")
    metrics_path = out / "card_metrics.json"
    if render_only and not metrics_path.is_file() and not (folder / "card_metrics.json").is_file():
        raise fail_usage(f"--render-only needs a card_metrics.json in {out} or {folder}: run without it first")
    out.mkdir(parents=True, exist_ok=True)
    if render_only:
        source = metrics_path if metrics_path.is_file() else folder / "card_metrics.json"
        report = json.loads(source.read_text(encoding="utf-8"))
        if source != metrics_path:
            metrics_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    else:
        try:
            model = load_detector(detector, runtime="torch")  # the card reads the torch model
            if reuse_embeddings and hasattr(getattr(model, "encoder", None), "enable_memo"):
                from diffsleuth.backbones.pypi_weights import cache_dir

                model.encoder.enable_memo(cache_dir() / "embeddings")
            report = evaluate_card(model, folder, data, specs, [r.strip() for r in roles.split(",") if r.strip()],
                                   n_bootstrap=bootstrap, seed=seed, batch_size=batch_size, non_photos=non_photos, max_per_source=max_per_source,
                                   log=lambda m: err_console.print(m, highlight=False))
        except (DatasetError, WeightsError) as exc:
            raise fail_usage(str(exc)) from exc
        metrics_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    words = ["diffsleuth", "card", detector, *(w for d in data for w in ("--data", d)),
             *(w for s in specs for w in ("--degradation", s)), "--roles", roles, "--seed", str(seed),
             *(("--max-per-source", str(max_per_source)) if max_per_source else ()),
             *(("--non-photos", str(non_photos)) if non_photos != 8 else ())]
    command = " ".join(shlex.quote(w) for w in words)
    text = render_card(report, title or f"Model card: {detector}", note_text, command)
    (out / "MODEL_CARD.md").write_text(text, encoding="utf-8")
    typer.echo(str(out / "MODEL_CARD.md"))


def package_dir() -> Path:
    """The folder of the installed diffsleuth package (its shipped weights and cards)."""
    import diffsleuth

    return Path(os.path.realpath(Path(diffsleuth.__file__).parent))


def inside_package(path: Path) -> bool:
    """Whether ``path`` (resolved, links followed) is the installed package's folder or below it."""
    return Path(os.path.realpath(path)).is_relative_to(package_dir())
