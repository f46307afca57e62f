#!/usr/bin/env bash
# Packages already-built release binaries with debian/rules and lints the result.
# Usage: scripts/deb-build.sh amd64|arm64   (make deb / make deb-arm64 build the binaries first)
set -euo pipefail

arch=${1:?usage: $0 amd64|arm64}
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
out=$CARGO_TARGET_DIR/deb
version=$(dpkg-parsechangelog -l debian/changelog -S Version)
deb=$out/mpslab_${version}_${arch}.deb

rm -f "$deb"
dpkg-architecture -a"$arch" -c debian/rules clean
dpkg-architecture -a"$arch" -c debian/rules binary
dpkg-architecture -a"$arch" -c debian/rules clean
# Errors and warnings fail the build; debian/mpslab.lintian-overrides says why for any override.
lintian --fail-on error,warning --display-info "$deb"
echo "built $deb"
