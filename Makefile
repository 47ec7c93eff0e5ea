# Two entry points: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: setup demo test test-unit protos clean prometheus

setup: $(VENV)/.installed $(VENV)/.native

$(VENV)/.installed: requirements.txt requirements-test.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned to the local CPU build (any other version pulls GBs of CUDA).
	$(PIP) install torch==2.13.0
	$(PIP) install -r requirements-test.txt
	$(PIP) install --no-deps torchrec==1.8.0
	$(PIP) install --no-deps --no-build-isolation -e .
	touch $@

# The compiled extensions (streamrec/native), rebuilt in place when a source changes.
$(VENV)/.native: $(VENV)/.installed setup.py $(wildcard streamrec/native/*.c streamrec/native/*.cpp)
	$(PY) setup.py -q build_ext --inplace
	touch $@

demo: setup
	$(VENV)/bin/streamrec demo --duration $${DURATION:-60}

test: setup prometheus
	$(PY) -m pytest -q

test-unit: setup
	$(PY) -m pytest -q tests/unit

# Prometheus and promtool (from Debian's package) under .cache/ for the monitoring tests.
prometheus:
	bash scripts/install-prometheus.sh

# Regenerate protos/*_pb2*.py after editing a .proto (tests fail when stale).
protos: setup
	$(PY) -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. streamrec/protos/*.proto
	rm -f protos/event_pb2_grpc.py

clean:
	rm -rf $(VENV) .pytest_cache build streamrec/native/*.so
