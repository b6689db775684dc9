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

.PHONY: search test
search: $(INSTALLED)
	$(BIN)/python -m search target=snapdragon665 $(ARGS)

test: $(INSTALLED)
	$(BIN)/python -m pytest $(ARGS)
