# mpslab-worker helpers (included by the Makefile through `-include mk/*.mk`).
# Nothing here is needed by `make test`: the ONNX fixtures are committed and the worker needs only
# the library and models that `make deps` already installs.

.PHONY: worker-fixtures bench-worker bench-validation

# Regenerate tests/fixtures/models/*.onnx (pinned onnx from the venv; output is deterministic).
worker-fixtures: $(CACHE)/pydeps.stamp
	$(PY) scripts/gen_models.py tests/fixtures/models

# Issue 5 acceptance 4: worker vs Python onnxruntime (ratio of medians) and harness overhead.
# DET_SIZE=320 for a quicker run; BENCH_REPEATS sets the interleaved repeats.
bench-worker: deps
	MPSLAB_TEST_CACHE=$(CACHE) benches/worker_vs_python.sh $(or $(BENCH_REPEATS),3)

# Issue 9: the validation pass (pre / infer / post per image) against the same pass in Python.
bench-validation: deps
	MPSLAB_TEST_CACHE=$(CACHE) benches/validation_vs_python.sh $(or $(BENCH_REPEATS),3)
