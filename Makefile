# Two commands do all the set-up on a fresh machine, each creating or reusing .venv:
#   make search   runs the default study (python -m search target=snapdragon665; extra overrides in ARGS="...")
#   make test     runs the test suite (extra pytest arguments in ARGS="...")
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

$(INSTALLED): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $@

.PHONY: search test results
search: $(INSTALLED)
	$(BIN)/python -m search target=snapdragon665 $(ARGS)

test: $(INSTALLED)
	$(BIN)/python -m pytest $(ARGS)

# Rewrites every measured section of README.md (long: it calibrates the host and runs every benchmark; needs a quiet machine).
results: $(INSTALLED)
	rm -rf outputs/report outputs/litert-report outputs/parity-report outputs/bench-search outputs/bench-overhead
	$(BIN)/python -m search.calibrate target=host
	$(BIN)/python scripts/calibration_report.py
	$(BIN)/python scripts/bench_predictor.py
	$(BIN)/python scripts/parity_report.py
	$(BIN)/python scripts/onnx_report.py
	$(BIN)/python scripts/data_memory.py
	$(BIN)/python scripts/litert_report.py
	$(BIN)/python scripts/search_report.py
	$(BIN)/python scripts/phone_report.py
	$(BIN)/python scripts/ui_screenshot.py
	$(BIN)/python scripts/bench_search.py
	$(BIN)/python scripts/bench_overhead.py
