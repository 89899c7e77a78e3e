# The README's two commands: `make test` and `make demo`. Each (re)creates .venv from
# pyproject.toml when it is missing or older than pyproject (a stamp file), then runs.
PY ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed
BIN := $(VENV)/bin
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export MLFLOW_ALLOW_FILE_STORE := true
export OMP_NUM_THREADS ?= 2

.PHONY: venv test test-all demo clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null || { echo "make: $(PY) not found (Python 3.11 is required)"; exit 2; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	# av2 (a test dependency) pulls opencv-python, the GUI build, over the headless build's cv2/
	# files; put the headless files back so cv2 never needs libGL (docs/dependencies.md)
	$(BIN)/pip install --quiet --force-reinstall --no-deps "$$(grep -o 'opencv-python-headless==[0-9.]*' pyproject.toml)"
	$(BIN)/pip check
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not slow and not gpu" -q --durations=15

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/hvdistill demo

clean:
	rm -rf $(VENV) demo-output
