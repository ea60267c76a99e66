# Quick start: `make demo` (train + evaluate on CPU) and `make test`.
# `make test` also provisions single-node Slurm and podman (`make infra`) when run as root with
# apt-get, for the real Slurm and container tests; elsewhere those tests are skipped with the
# reason, unless FCN8S_REQUIRE_INFRA=1 (set by .ci/run), which makes a missing piece an error.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo

.PHONY: install infra demo test test-fast test-infra clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	bash launch/run_demo.sh "$(DEMO_DIR)"

infra:
	bash tests/infra/provision.sh

test: $(STAMP) infra
	$(PY) -m pytest -q -n 3 --dist loadgroup

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-infra: $(STAMP) infra
	$(PY) -m pytest -q tests/test_dockerfiles.py tests/test_slurm.py tests/test_container.py

clean:
	rm -rf $(VENV) runs
