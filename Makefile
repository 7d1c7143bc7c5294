# textft — one Makefile for the whole repository.
#   make demo   set everything up, start the stack, fine-tune and predict (the main job)
#   make test   set everything up and run the test suite (every tier, shuffled order)
#   make test-fast   the unit tier only: no servers, no subprocesses (< 1 min)
#   make check-reliability   the reliability and security suite, with its figures
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU wheel pinned for CI and this machine; GPU users: make install TORCH_SPEC="torch"
TORCH_SPEC ?= torch==2.13.0
PROTOS := $(wildcard protos/textft/v1/*.proto) $(wildcard protos/textft/internal/v1/*.proto)
# The Open Inference Protocol (KServe v2), vendored unchanged (protos/textft/oip/v2/README.md).
OIP_PROTOS := $(wildcard protos/textft/oip/v2/*.proto)
STUBS_DIR := clients/python
STAMP := $(VENV)/.installed

.PHONY: install protos check-protos up demo test test-fast check-reliability lint bench bench-gpu clean validate-deploy

install: $(STAMP) protos

$(STAMP): clients/python/pyproject.toml services/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e "clients/python[plots]" -e "services[test,dev,demo,ray]"
	touch $(STAMP)

# Stubs are generated into the SDK package (textft.v1, textft.oip.v2), with .pyi type stubs.
protos: $(STAMP) clients/python/textft/v1/.stamp

# Also after a reinstall: the stubs must match the installed protobuf runtime.
clients/python/textft/v1/.stamp: $(PROTOS) $(OIP_PROTOS) $(STAMP)
	$(PY) -m grpc_tools.protoc -I protos --python_out=$(STUBS_DIR) --pyi_out=$(STUBS_DIR) \
	  --grpc_python_out=$(STUBS_DIR) $(PROTOS) $(OIP_PROTOS)
	touch $@

# Fails when the generated stubs differ from what protos/ produces now.
check-protos: install
	$(PY) -m pytest -q tests/test_protos.py

up: install
	$(VENV)/bin/textft up

demo: install
	$(PY) -m textft_services.demo

# Every tier (unit, integration, reliability; gpu tests skip without CUDA), in
# an order pytest-randomly shuffles. The seed is printed first:
# PYTEST_ARGS=--randomly-seed=N reruns that order, PYTEST_ARGS="-p no:randomly" runs file order.
test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -q -m unit $(PYTEST_ARGS)

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

# Continuous batching tokens/s and MFU on a GPU (GPT-Neo-125M-shaped LoRA model); skips without CUDA.
bench-gpu: install
	$(PY) -m bench gpu
	$(PY) -m pytest -q -m gpu tests/test_inference_gpu.py

clean:
	rm -rf $(VENV) .venv-deploy clients/python/textft/v1/*_pb2*.py* clients/python/textft/oip/v2/*_pb2*.py* \
	  clients/python/textft/internal/v1/*_pb2*.py* \
	  clients/python/textft/v1/.stamp .textft
