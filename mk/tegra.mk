# tegrastats parser fuzzing (not part of `make test`): `make fuzz [FUZZ_TIME=600]`.
# cargo-fuzz needs nightly -Z flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them.
CARGO_FUZZ_VERSION := 0.12.0
FUZZ_TIME ?= 600
FUZZ_CORPUS := fuzz/corpus/parse_line

.PHONY: fuzz fuzz-deps fuzz-seed

fuzz-deps:
	if ! cargo fuzz --version 2>/dev/null | grep -q ' $(CARGO_FUZZ_VERSION)$$'; then \
	  $(CARGO) install cargo-fuzz --version $(CARGO_FUZZ_VERSION) --locked; \
	fi

# One seed file per real corpus line.
fuzz-seed:
	mkdir -p $(FUZZ_CORPUS)
	grep -hv '^#' tests/fixtures/tegrastats/*.txt | grep . | split -l 1 -a 3 - $(FUZZ_CORPUS)/seed-

fuzz: fuzz-deps fuzz-seed
	cd fuzz && RUSTC_BOOTSTRAP=1 nice -n 19 $(CARGO) fuzz run parse_line corpus/parse_line -- \
	  -max_total_time=$(FUZZ_TIME) -max_len=65536 -rss_limit_mb=2048
