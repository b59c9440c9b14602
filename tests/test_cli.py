"""The command line as a newcomer meets it: --version, readable help, a fast start, -q/-v."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from diffsleuth import __version__
from diffsleuth.cli.app import EXIT_OK
from diffsleuth.cli.main import app

runner = CliRunner()
COMMANDS = ["scan", "scan-ray", "eval", "audit", "extract", "train", "serve", "weights"]


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == EXIT_OK and result.stdout.strip() == f"diffsleuth {__version__}"


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("command", COMMANDS)
def test_help_renders_brackets_verbatim_and_no_type_labels(command):
    result = runner.invoke(app, [command, "--help"], terminal_width=100)
    assert result.exit_code == EXIT_OK, result.output
    text = flat(result.stdout)
    assert "<bool>" not in text and "<str>" not in text and "<int" not in text and "list[str]" not in text
    if command in ("scan", "scan-ray"):
        assert "[default: the shipped default]" in text
        assert "[default: 64000000]" in text and "--format [" in text
    if command == "scan-ray":
        assert "pip install 'diffsleuth[distributed]'" in text
    if command == "audit":
        assert "--fail-on-flag" in text and "4" in text


def test_top_level_help_lists_commands_and_global_options():
    text = flat(runner.invoke(app, ["--help"]).stdout)
    for word in ["--version", "--quiet", "--verbose", *COMMANDS]:
        assert word in text
    assert "4 audit --fail-on-flag" in text


def test_help_does_not_import_heavy_libraries():
    """--help must not pay for torch, scikit-learn, matplotlib, diffusers or Ray (commands import them)."""
    code = ("import sys; from diffsleuth.cli.main import app; "
            "sys.argv = ['diffsleuth', 'scan', '--help']\n"
            "try:\n    app()\nexcept SystemExit:\n    pass\n"
            "heavy = {'torch', 'sklearn', 'matplotlib', 'diffusers', 'transformers', 'ray', 'scipy'}\n"
            "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_quiet_and_verbose_set_one_logging_level():
    from diffsleuth import progress

    assert runner.invoke(app, ["-v", "audit", "--help"]).exit_code == EXIT_OK
    assert logging.getLogger("transformers").level == logging.INFO
    assert runner.invoke(app, ["-q", "audit", "--help"]).exit_code == EXIT_OK
    assert not progress.progress_enabled()
    assert logging.getLogger("diffsleuth").level == logging.ERROR
    assert runner.invoke(app, ["audit", "--help"]).exit_code == EXIT_OK
    assert logging.getLogger("ray").level == logging.ERROR and logging.getLogger("diffsleuth").level == logging.WARNING


@pytest.mark.parametrize("probe", [False, True], ids=["HF_HUB_OFFLINE", "unreachable-hub"])
def test_missing_backbone_fails_fast_with_exit_2_naming_model_folder_and_setting(tmp_path, monkeypatch, probe):
    """No retry storm: offline (or a hub that does not answer) ends in a usage error within seconds."""
    import time

    # imported before the clock starts: the bound is on the failure path, not on importing libraries
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel  # noqa: F401
    from transformers import CLIPTextModel, CLIPTokenizer  # noqa: F401

    import diffsleuth.detectors.lare2.features  # noqa: F401

    from conftest import random_photo
    from diffsleuth.backbones import hub

    folder = tmp_path / "data" / "0_real"
    folder.mkdir(parents=True)
    random_photo(0).save(folder / "a.png")
    if probe:  # network "configured" but the hub does not answer: the probe turns offline mode on
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
        for variable in hub._PROXY_VARIABLES:
            monkeypatch.delenv(variable, raising=False)
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
        monkeypatch.setenv("DIFFSLEUTH_HUB_DOWNLOAD", "1")  # downloads allowed: the probe runs
        monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
        hub.hub_reachable.cache_clear()
    started = time.monotonic()
    result = runner.invoke(app, ["extract", "lare", "--data", str(tmp_path / "data"), "--cache", str(tmp_path / "c"),
                                 "--set", "backbone=nobody/no-such-model"])
    elapsed = time.monotonic() - started
    hub.hub_reachable.cache_clear()
    assert result.exit_code == 2, result.output
    text = flat(result.output)
    assert "nobody/no-such-model" in text and "--local-dir" in text and "--set backbone=" in text
    assert "Traceback" not in text
    assert elapsed < 10
    if probe:
        import huggingface_hub.constants

        assert huggingface_hub.constants.HF_HUB_OFFLINE  # switched on for the rest of the process


def test_a_missing_extra_is_a_usage_error_naming_it(tmp_path, monkeypatch):
    from diffsleuth import extras

    monkeypatch.setitem(extras.EXTRAS, "eval", ("no_such_module_for_this_test",))
    result = runner.invoke(app, ["audit", str(tmp_path)])
    assert result.exit_code == 2
    assert "pip install 'diffsleuth[eval]'" in flat(result.output) and "no_such_module_for_this_test" in result.output


def test_quiet_scan_prints_results_and_errors_only(tmp_path):
    from conftest import random_photo

    random_photo(0).save(tmp_path / "a.png")
    out = tmp_path / "rows.csv"
    loud = runner.invoke(app, ["scan", str(tmp_path / "a.png"), "--format", "csv", "--output", str(out)])
    assert loud.exit_code == EXIT_OK and "wrote 1 rows" in loud.stderr
    quiet = runner.invoke(app, ["-q", "scan", str(tmp_path / "a.png"), "--format", "csv", "--output", str(out)])
    assert quiet.exit_code == EXIT_OK and quiet.stderr == "" and len(out.read_text().splitlines()) == 2
    failed = runner.invoke(app, ["-q", "scan", str(tmp_path / "a.png"), "--detector", str(tmp_path / "no-such-model")])
    assert failed.exit_code == 2 and "error:" in failed.stderr


def test_log_messages_are_one_literal_line_off_a_terminal(capsys):
    from diffsleuth.cli.app import configure_logging

    configure_logging(0)
    name = "/data/" + "d" * 150 + "/[/]x\x1b[2J.png"
    logging.getLogger("diffsleuth.test").warning("cannot read %s", name)
    err = capsys.readouterr().err
    assert f"WARNING diffsleuth.test: cannot read /data/{'d' * 150}/[/]x\\x1b[2J.png\n" in err
