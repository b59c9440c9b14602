# Two entry points for newcomers: `make scan` and `make test`. Both create the virtual
# environment and install what is missing first, so they work on a fresh machine.
# A convenience over pip: `pip install '.[dev]'` (editable here) is all `make install` does;
# see the README for `pip install .` with only the extras you need. `make scan` needs only the
# base install (no torch): on a fresh .venv it installs `pip install -e .`, and a .venv that
# `make test` filled (.[dev], a superset) is used as it is. Both share .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Without IMAGES, `make scan` scans what the default detector never trained on: the camera photos
# of camera-originals and the two generator families held out of its training (PixArt, Kandinsky).
DEMO_IMAGES := $(wildcard ../shared/data/camera-originals ../shared/data/multigen/fake/PixArt-* \
                          ../shared/data/multigen/fake/kandinsky-*)
IMAGES ?= $(DEMO_IMAGES)
SCAN_OUTPUT ?= scan-results.csv

.PHONY: scan test test-slow test-all install install-base bench browser screenshot

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# .installed: the dev install (everything, for the tests); .installed-base: the base install
# (no torch, for scanning). The dev install is a superset, so it marks both.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@ $(VENV)/.installed-base

$(VENV)/.installed-base: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -e .
	touch $@

# the pinned encoder weights live in the user cache: fetched once, verified (SHA-256) on every run
install: $(VENV)/.installed
	$(BIN)/diffsleuth weights fetch

install-base: $(VENV)/.installed-base
	$(BIN)/diffsleuth weights fetch

## scan: score every image under IMAGES with the shipped default detector (CSV to SCAN_OUTPUT)
scan: install-base
	@test -n "$(IMAGES)" || { echo "no images: run 'make scan IMAGES=\"photo.jpg folder/\"'"; exit 2; }
	@if [ "$(IMAGES)" = "$(DEMO_IMAGES)" ]; then echo "no IMAGES given: scanning a demo the default detector" \
	  "never trained on: camera photos (camera-originals) and its two held-out generator families" \
	  "(multigen PixArt, Kandinsky). Your own: make scan IMAGES=\"photo.jpg folder/\""; fi
	$(BIN)/diffsleuth scan $(IMAGES) --format csv --output $(SCAN_OUTPUT) --summary
	@echo "first rows of $(SCAN_OUTPUT):"; head -n 11 $(SCAN_OUTPUT)

## browser: Debian's Chromium for the browser tests (tests/test_web_page.py). Best-effort: it
## installs only as root with apt-get; elsewhere those tests are skipped with the reason.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; } || \
	  echo "chromium is not installed: the browser tests will be skipped (apt-get install chromium)"

## test: the test suite without the tests marked slow (see the README for the times)
test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow"

## test-slow: only the slow tests (Ray, Chromium, multi-process and ../shared/data training); CI
## runs `make test` then this, so together they are the whole suite, each test once
test-slow: install browser
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m slow

## test-all: the whole suite in one run
test-all: install browser
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

## screenshot: docs/images/web-page.png, the page with results (needs chromium)
screenshot: install browser
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/screenshot.py

## bench: time feature extractors and scanning (not part of the tests)
bench: install
	$(BIN)/python benchmarks/feature_cost.py
