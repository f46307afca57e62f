# Debian package `mpslab` (debian/): `make deb` (amd64) and `make deb-arm64` (cross, for Jetson).
# Both reuse cargo's release build (`make release` for amd64), refuse binaries that need a glibc
# newer than 2.35 (scripts/check-glibc.sh, run from debian/rules) and fail on any lintian error or
# warning. Packages land in $CARGO_TARGET_DIR/deb (default target/deb), where tests/deb_install.rs
# finds the amd64 one; tests/arm64_qemu.rs runs target/aarch64-unknown-linux-gnu/release/*.
DEB_APT_PACKAGES := debhelper lintian qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross binutils-aarch64-linux-gnu
DEB_ARM64_TARGET := aarch64-unknown-linux-gnu

.PHONY: deb deb-arm64 deb-deps deb-apt-deps deb-rust-target deb-test-prereqs

# Checked every time (dpkg -s is cheap), so a removed package is noticed; apt only when missing.
deb-apt-deps:
	@missing=""; for p in $(DEB_APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# The toolchain's own rust-std for the target; rustup pins it to the installed rustc.
deb-rust-target:
	rustup target list --installed | grep -qx $(DEB_ARM64_TARGET) || rustup target add $(DEB_ARM64_TARGET)

deb-deps: deb-apt-deps deb-rust-target
EXTRA_DEPS += deb-deps

deb: deb-apt-deps release
	scripts/deb-build.sh amd64

deb-arm64: deb-deps
	$(CARGO) build --release --bins --target $(DEB_ARM64_TARGET)
	scripts/deb-build.sh arm64

# What `make test` needs before `cargo test`: both packages (and so both release builds).
deb-test-prereqs: deb deb-arm64
