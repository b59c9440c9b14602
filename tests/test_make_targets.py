"""``make test`` skips the slow tests, and CI still runs every test (``make test`` then ``make test-slow``)."""

from __future__ import annotations

import re

from conftest import REPO, SLOW_MODULES, SLOW_TESTS


def target(name: str) -> str:
    """The recipe of a Makefile target."""
    text = (REPO / "Makefile").read_text()
    match = re.search(rf"^{re.escape(name)}:.*\n((?:\t.*\n)+)", text, re.M)
    assert match, f"no target {name!r} in the Makefile"
    return match.group(1)


def test_every_test_named_slow_exists():
    """A renamed or moved test would silently leave the slow set (and run in `make test` again)."""
    tests = REPO / "tests"
    for module in SLOW_MODULES:
        assert (tests / f"{module}.py").is_file(), module
    for entry in SLOW_TESTS:
        module, _, name = entry.partition("::")
        assert re.search(rf"^def {name}\(", (tests / f"{module}.py").read_text(), re.M), entry


def test_make_test_skips_the_slow_tests_and_ci_runs_both_halves():
    assert '-m "not slow"' in target("test") and "-m slow" in target("test-slow")
    assert "slow" not in target("test-all")
    steps = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()
             if line.strip().startswith("make ")]
    assert steps == ["make test", "make test-slow"]
    assert "make test" in (REPO / "README.md").read_text()
