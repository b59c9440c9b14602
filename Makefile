# Two entry points for newcomers: `make scan` and `make test`. Both create the virtual
# environment and install what is missing first, so they work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
IMAGES ?= $(wildcard ../shared/data/multigen ../shared/data/sd14-vs-unsplash)
SCAN_OUTPUT ?= scan-results.csv

.PHONY: scan test install bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,server,distributed]'
	touch $@

install: $(VENV)/.installed

## scan: score every image under IMAGES with the shipped default detector (CSV to SCAN_OUTPUT)
scan: install
	@test -n "$(IMAGES)" || { echo "no images: run 'make scan IMAGES=\"photo.jpg folder/\"'"; exit 2; }
	$(BIN)/diffsleuth scan $(IMAGES) --format csv --output $(SCAN_OUTPUT) --summary
	@echo "first rows of $(SCAN_OUTPUT):"; head -n 11 $(SCAN_OUTPUT)

## test: run the whole test suite
test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

## bench: time feature extractors and scanning (not part of the tests)
bench: install
	$(BIN)/python benchmarks/feature_cost.py
