# textft — one Makefile for the whole repository.
#   make demo   set everything up, start the stack, fine-tune and predict (the main job)
#   make test   set everything up and run the test suite
#   make check-reliability   the reliability and security suite, with its figures
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU wheel pinned for CI and this machine; GPU users: make install TORCH_SPEC="torch"
TORCH_SPEC ?= torch==2.13.0
PROTOS := $(wildcard protos/textft/v1/*.proto)
STUBS_DIR := clients/python
STAMP := $(VENV)/.installed

.PHONY: install protos check-protos up demo test check-reliability lint bench clean validate-deploy

install: $(STAMP) protos

$(STAMP): clients/python/pyproject.toml services/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e "clients/python[plots]" -e "services[test,dev,demo]"
	touch $(STAMP)

# Stubs are generated into the SDK package (textft.v1), with .pyi type stubs.
protos: $(STAMP) clients/python/textft/v1/.stamp

clients/python/textft/v1/.stamp: $(PROTOS)
	$(PY) -m grpc_tools.protoc -I protos --python_out=$(STUBS_DIR) --pyi_out=$(STUBS_DIR) \
	  --grpc_python_out=$(STUBS_DIR) $(PROTOS)
	touch $@

# Fails when the generated stubs differ from what protos/ produces now.
check-protos: install
	$(PY) -m pytest -q tests/test_protos.py

up: install
	$(VENV)/bin/textft up

demo: install
	$(PY) -m textft_services.demo

test: install
	$(PY) -m pytest -q

# Faults, fuzzing, load, auth: prints the figures table at the end.
# TEXTFT_HEAVY=1 runs the heavier variants (more fuzz examples, longer load).
check-reliability: install
	$(PY) -m pytest -q -m reliability

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Dockerfiles (hadolint), docker-compose.yml (docker-compose config) and the
# Kubernetes manifests (kubernetes-validate); the tools get venvs of their own.
validate-deploy:
	PYTHON=$(PYTHON) bash deploy/validate.sh

bench: install
	$(PY) -m bench

clean:
	rm -rf $(VENV) .venv-deploy clients/python/textft/v1/*_pb2*.py* clients/python/textft/v1/.stamp .textft
