# tierflow: the two commands of the README, and a few helpers.
#   make demo   create .venv, install, run the main job on embedded defaults
#   make test   create .venv, install, run the whole test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint venv clean-venv

venv: $(STAMP)

# examples/labops: the example op plugin (README "Your own ops"); the tests run its op
$(STAMP): pyproject.toml examples/labops/pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "tierflow needs Python >= 3.11; set PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# every extra (README "Installing"): the server's FastAPI range, S3, SLURM, bioimage-cpp, formats
	$(BIN)/python -m pip install --quiet -e '.[dev,all]'
	$(BIN)/python -m pip install --quiet -e examples/labops
	# ome-zarr-py, for the test that opens tierflow's images with its reader: without its
	# dependencies, since its fsspec[s3] pulls s3fs/aiobotocore, whose botocore pin breaks boto3
	$(BIN)/python -m pip install --quiet --no-deps 'ome-zarr>=0.11' rangehttpserver Deprecated wrapt
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/tierflow demo

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# import-linter reads packages from disk: it sees the tierflow.* namespace through a tree of
# links (.lint/tierflow/{flows,tasks,storage,configs} -> the top-level folders), as installed
lint: $(STAMP)
	@rm -rf .lint && mkdir -p .lint/tierflow && cp tierflow/*.py .lint/tierflow/
	@for p in flows tasks storage configs; do ln -s ../../$$p .lint/tierflow/$$p; done
	cd .lint && ../$(BIN)/lint-imports --no-cache ../pyproject.toml
	$(BIN)/ruff check .

clean-venv:
	rm -rf $(VENV)
