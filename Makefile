# Two commands on a fresh machine (see README.md):
#   make demo   installs the project and runs the main job on the embedded demo corpus
#   make test   installs the project with its test tools and runs the tests
PYTHON ?= python3
PIP = $(PYTHON) -m pip
# A CPU build of torch unless one (CPU or CUDA) is installed already.
TORCH ?= torch==2.13.0

.PHONY: install install-test demo test lint bench devset

install:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH)"
	$(PIP) install -q --no-deps "tinysoundfont>=0.3.6"
	$(PIP) install -q -e .

install-test:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH)"
	$(PIP) install -q --no-deps "tinysoundfont>=0.3.6"
	$(PIP) install -q -e ".[test]"

demo: install
	$(PYTHON) -m trainer demo --out runs/demo

test: install-test
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest -q

bench: install
	$(PYTHON) benchmarks/targets_speed.py

# The dev benchmark (benchmarks/devset.py; needs the Debian packages it lists): the
# unlabeled pool and the two probe tasks, then their stores; `trainer sweep
# experiments/dev-cpu.toml` reads them. Everything already built is reused.
devset: install
	$(PYTHON) benchmarks/devset.py data/dev
	featurestore build data/dev/pool.csv -o stores/dev/pool.h5 --targets default,gtn_long,tonnetz
	featurestore build data/dev/instruments.csv -o stores/dev/instruments.h5
	featurestore build data/dev/composers.csv -o stores/dev/composers.h5 --targets default,gtn_long,tonnetz
