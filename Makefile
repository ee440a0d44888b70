# The two commands of a fresh machine:
#   make demo   runs the project's main job (the valley study)
#   make test   runs lint and the whole test suite
# Each creates the virtual environment it needs (.venv) on first use.

VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch first: an open range alone would pull a multi-GB CUDA build.
# Override with e.g. `make test TORCH=torch` on a machine with a GPU.
TORCH ?= torch==2.13.0

.PHONY: demo test lint clean

$(VENV)/.ready: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[bench,test,integration,jax]"
	# timm without its dependencies: they would replace the torch above (timm needs torchvision,
	# whose build for another torch does not import here; tests/integration/test_timm.py says so).
	$(PY) -m pip install --quiet --no-deps "timm>=1.0.31"
	touch $@

# The valley study, quick preset; regenerates the committed results/valley/.
demo: $(VENV)/.ready
	$(VENV)/bin/hvadam-bench valley --quick --out results/valley

lint: $(VENV)/.ready
	$(VENV)/bin/ruff check src tests examples
	$(VENV)/bin/ruff format --check src tests examples
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
