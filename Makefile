# Two commands on a fresh machine: `make demo` (train SLA+SD on the embedded digits) and `make test`.
SHELL := /bin/bash
VENV := .venv
PYTHON := $(VENV)/bin/python
PIP := $(PYTHON) -m pip
STAMP := $(VENV)/.setup-done
PYTEST_ARGS ?=

.PHONY: setup demo test clean

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
	if nvidia-smi -L >/dev/null 2>&1; then echo "NVIDIA GPU found: installing a CUDA build of torch"; fi
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps --no-build-isolation -r requirements-ffcv.txt
	touch $(STAMP)

demo: setup
	$(VENV)/bin/torchrun --standalone --nproc_per_node=1 train/main.py

test: setup
	$(PYTHON) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
