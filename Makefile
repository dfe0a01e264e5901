# The set-up commands in README.md. Each creates .venv from the pinned requirements first.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# setuptools prints an information-only notice ("Editable installation ... be careful with folders
# in your working directory with the same name as your package") for every editable install of a
# package-dir layout like ours (gateware/ is heraldry.gateware); it is not a problem to act on, so
# that one notice, and no other warning, is silenced.
EDITABLE_ENV := PYTHONWARNINGS="ignore:Editable installation.:UserWarning"

.PHONY: demo demo-bsm test test-slow test-python bench lint clean

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==26.3
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(EDITABLE_ENV) $(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

demo: $(STAMP)
	$(BIN)/heraldry acquire --board sim --channels 4 --duration 0.05 --window 20 \
	    --test-signal pairs --pair-rate 2e5 --efficiency 0.5 --dark-rate 2e4 --pair-delay 30 \
	    --delay 0=30 --herald 0b0011 --herald 0b0001 --record-coincidences 0b0011 --seed 1 \
	    --out demo.npz --summary-json demo-summary.json

# The second demo: psi- heralds of a Bell-state measurement (the test signal's BSM source, the
# sync on channel 4 gating the detectors) against the reference model (host/bsm_demo.py has
# the settings).
demo-bsm: $(STAMP)
	$(BIN)/python -m heraldry.host.bsm_demo --out demo-bsm.npz --summary-json demo-bsm-summary.json

# The developer loop: every area, one representative case of each long sweep.
test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -m "not slow" tests

# The rest (long soaks, board builds, full parameter sweeps, long fuzzing, a fresh pip install).
test-slow: $(STAMP)
	$(BIN)/python -m pytest -n 2 -m slow tests

# Another Python (make test-python PY=/path/to/python3.12): a venv of its own with the pinned
# requirements, then the tests whose results could depend on the interpreter (packaging, wire
# format, model, measurements, the CLI on the virtual board).
PY_TESTS := tests/test_packaging.py tests/test_wire.py tests/test_model.py tests/test_measure.py \
            tests/test_cli.py
test-python:
	@test -n "$(PY)" || { echo "usage: make test-python PY=python3.12" >&2; exit 2; }
	$(PY) -m venv $(VENV)-$(notdir $(PY))
	$(VENV)-$(notdir $(PY))/bin/python -m pip install --quiet --upgrade pip==26.3
	$(VENV)-$(notdir $(PY))/bin/python -m pip install --quiet -r requirements.txt
	$(EDITABLE_ENV) $(VENV)-$(notdir $(PY))/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(VENV)-$(notdir $(PY))/bin/python -m pytest -n 2 -m "not slow" $(PY_TESTS)

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) $(VENV)-python3.* build *.egg-info .pytest_cache
