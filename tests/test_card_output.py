"""``diffsleuth card`` never writes into the installed package (the shipped cards /model-card serves)."""

from __future__ import annotations

import hashlib

from typer.testing import CliRunner

from diffsleuth.cli.card import package_dir
from diffsleuth.cli.main import app
from diffsleuth.detectors.registry import resolve_detector_path

runner = CliRunner()


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_shipped_card_goes_to_the_current_directory_by_default(tmp_path, monkeypatch):
    shipped = resolve_detector_path("default")
    before = digest(shipped)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["card", "default", "--data", "somewhere", "--render-only"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "model-card-default" / "MODEL_CARD.md").read_text().startswith("# ")
    assert (tmp_path / "model-card-default" / "card_metrics.json").is_file()
    assert "model-card-default" in result.output
    assert digest(shipped) == before


def test_an_output_inside_the_package_is_refused(tmp_path):
    shipped = resolve_detector_path("default")
    before = digest(shipped)
    link = tmp_path / "looks-harmless"
    link.symlink_to(shipped)
    for target in (shipped, package_dir() / "new-folder", link):
        result = runner.invoke(app, ["card", "default", "--data", "x", "--render-only", "--output", str(target)])
        assert result.exit_code == 2, result.output
        assert "inside the installed diffsleuth package" in " ".join(result.output.split())
    assert not (package_dir() / "new-folder").exists()
    assert digest(shipped) == before


def test_render_only_without_metrics_is_refused(tmp_path):
    from toy_detector import saved_toy

    toy = saved_toy(tmp_path / "toy")
    result = runner.invoke(app, ["card", str(toy), "--data", "x", "--render-only"])
    assert result.exit_code == 2 and "needs a card_metrics.json" in " ".join(result.output.split())
