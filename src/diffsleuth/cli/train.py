"""``diffsleuth train RECIPE``: train a detector from a JSON config plus command-line overrides."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from diffsleuth.cli.app import app, err_console, fail_backbone, fail_usage
from diffsleuth.extras import require
from diffsleuth.io.datasets import DatasetError
from diffsleuth.settings import apply_overrides, config_from_dict, config_to_dict, load_json


@app.command()
def train(
    recipe: Annotated[str, typer.Argument(help="Recipe: judge, judge-head (on a frozen encoder's cached features), lare2, dnf or dire.")],
    config: Annotated[Optional[Path], typer.Option(help="JSON training config (see configs/).")] = None,
    data: Annotated[Optional[list[str]], typer.Option("--data", help="Dataset root or manifest (repeatable; replaces the config's).")] = None,
    output: Annotated[Optional[Path], typer.Option(help="Folder for the trained detector.")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a setting: key=value (repeatable).")] = None,
) -> None:
    """Train a detector; the checkpoint is chosen on the validation split, never on test data."""
    require("train" if recipe == "judge" else "research", f"diffsleuth train {recipe}")
    from diffsleuth.backbones.loading import BackboneUnavailableError  # torch, accelerate: only when training
    from diffsleuth.detectors.training import trainer_spec

    try:
        spec = trainer_spec(recipe)
        settings = load_json(config) if config else {}
        if data:
            settings["data"] = list(data)
        if output is not None:
            settings["output"] = str(output)
        if device is not None:
            settings["device"] = device
        cfg = config_from_dict(spec.config_class, apply_overrides(settings, set_ or []))
    except (KeyError, ValueError, OSError, json.JSONDecodeError) as exc:
        raise fail_usage(str(exc).strip("'\"")) from exc
    err_console.print(f"training {recipe} with {json.dumps(config_to_dict(cfg))}", highlight=False)
    try:
        folder = spec.run(cfg)
    except DatasetError as exc:
        raise fail_usage(str(exc)) from exc
    except BackboneUnavailableError as exc:
        raise fail_backbone(exc, config_to_dict(cfg)) from exc
    typer.echo(str(folder))
