# embedstream: `make run` serves, `make test` tests. Both set up what they need.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Offline unless the caller says otherwise (HF_HUB_OFFLINE=0 make run lets hf: paths download).
export HF_HUB_OFFLINE ?= 1

.PHONY: run test bench bench-peers bench-scale bench-gpu deps redis node venv proto lint typecheck unit clean image image-cuda

# gRPC on localhost:50051, HTTP (OpenAI-style /v1/embeddings) on localhost:8080.
run: deps
	@echo "make run: in another terminal, 'source $(VENV)/bin/activate' puts embedstream, python and pytest of $(VENV) on PATH"
	$(BIN)/embedstream serve

test: deps node lint typecheck
	$(BIN)/pytest --junitxml=.embedstream/junit.xml $(PYTEST_ARGS)

bench: deps
	$(BIN)/python loadtest/bench.py $(BENCH_ARGS)
	$(BIN)/python loadtest/priority.py
	$(BIN)/python loadtest/http_bench.py

# embedstream beside Infinity on the same texts and shapes (not part of `make test`). Infinity
# lives in its own venv, pinned by loadtest/requirements-peers.txt (infinity-emb 0.0.78 wants
# sentence-transformers < 4 and numpy < 2; torch 2.13.0 is the CPU wheel on this machine's disk).
PEERS := .embedstream/peers/infinity
bench-peers: deps $(PEERS)/.installed
	$(BIN)/python loadtest/peers.py $(PEERS_ARGS)

$(PEERS)/.installed: loadtest/requirements-peers.txt
	test -x $(PEERS)/bin/pip || $(PY) -m venv $(PEERS)
	$(PEERS)/bin/pip install -q -r loadtest/requirements-peers.txt
	touch $@

# One model on 1, 2 and 4 workers (debug model, fixed cost per batch): the scaling ratio.
bench-scale: deps
	$(BIN)/python loadtest/scaling.py $(SCALE_ARGS)

# MiniLM and a tiny CLIP, raw vs service; GPU_BENCH_ARGS="--device cuda:0 --dtype float16" on a GPU.
# Then video frames/s and audio seconds/s, raw vs service (MEDIA_BENCH_ARGS likewise; small on CPU).
bench-gpu: deps
	$(BIN)/python loadtest/gpu_bench.py $(GPU_BENCH_ARGS)
	$(BIN)/python loadtest/media_bench.py $(MEDIA_BENCH_ARGS)

deps: venv redis

venv: $(STAMP)

# Plain pip on purpose: it takes torch/torchvision from this machine's disk;
# uv and poetry would download several GB instead.
$(STAMP): requirements.txt requirements-dev.txt requirements-reference.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	$(BIN)/python -m pip install -q --no-deps -r requirements-reference.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

redis:
	@command -v redis-server >/dev/null || { \
	  echo "installing redis-server from Debian's packages"; \
	  $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }
	@# Debian starts a system redis on 6379; embedstream runs its own, so leave that one alone.

# The Node.js example client is tested in `make test`.
node: examples/node/node_modules/.installed

examples/node/node_modules/.installed: examples/node/package-lock.json
	@command -v npm >/dev/null || { \
	  echo "installing nodejs and npm from Debian's packages"; \
	  $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; }
	cd examples/node && npm ci --no-audit --no-fund --loglevel=error
	touch $@

proto: venv
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m grpc_tools.protoc -Iprotos \
	  --python_out=. --grpc_python_out=. --mypy_out=. --mypy_grpc_out=. \
	  protos/embedstream/v1/embedder.proto protos/embedstream/v1/jobs.proto

lint: venv
	$(BIN)/ruff check embedstream gateway workers tests loadtest
	$(BIN)/ruff format --check embedstream gateway workers tests loadtest

# mypy cannot follow the editable install's package-dir mapping (gateway/ is embedstream.gateway
# once installed), so it checks a tree of links laid out as the wheel installs it.
TYPECHECK := .embedstream/typecheck
typecheck: venv
	rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)/embedstream
	for f in embedstream/* gateway workers; do ln -s $(CURDIR)/$$f $(TYPECHECK)/embedstream/$$(basename $$f); done
	cd $(TYPECHECK) && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml

# Container images (deploy/); the tag is the version in pyproject.toml, as deploy/ expects.
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE ?= embedstream:$(VERSION)

image:
	docker build -f deploy/Dockerfile -t $(IMAGE) .

image-cuda:
	docker build -f deploy/Dockerfile.cuda -t $(IMAGE)-cuda .

clean:
	rm -rf $(VENV) .embedstream .pytest_cache .mypy_cache .ruff_cache examples/node/node_modules
