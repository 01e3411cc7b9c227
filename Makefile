# handgrad: `make run` sets up and runs the main job; `make test` sets up and runs the tests.
# Set-up makes a virtual environment in .venv that can see the system's packages, so a torch the
# user already has (CPU or CUDA) is kept; only where none is importable does it install
# torch==2.13.0 (the CPU build; on this project's machines it lies on disk and installs in seconds).
PYTHON ?= python3
VENV   ?= .venv
VPY    := $(VENV)/bin/python
STAMP  := $(VENV)/.handgrad-installed

.PHONY: setup run test bench bench-full bench-research reproduce clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(VPY) -c "import torch" 2>/dev/null || $(VPY) -m pip install --quiet "torch==2.13.0"
	$(VPY) -m pip install --quiet --no-build-isolation -e ".[test]" || $(VPY) -m pip install --quiet -e ".[test]"
	@touch $(STAMP)

setup: $(STAMP)

run: setup
	$(VPY) -m handgrad check --chapter
	$(VPY) -m handgrad check --sizes 4,3,2 --dtype float64
	$(VPY) -m handgrad train --data digits --verify-every 50

test: setup
	$(VPY) -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis

bench: setup
	$(VPY) -m benchmarks.suite --quick

bench-full: setup
	$(VPY) -m benchmarks.suite --full

# ensembles (N XOR nets in one step vs an autograd loop and vmap) and per-sample gradients (hand vs vmap(grad))
bench-research: setup
	$(VPY) -m benchmarks.ensemble --out benchmarks/results
	$(VPY) -m benchmarks.per_sample --out benchmarks/results

# Rumelhart, Hinton & Williams (1986): 1000 seeds of the symmetry network and of XOR (PNG with matplotlib)
reproduce: setup
	$(VPY) -m handgrad reproduce rumelhart1986 --out docs/rumelhart1986
