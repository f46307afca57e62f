#!/usr/bin/env bash
# Fails when a binary needs more than JetPack 6 (Ubuntu 22.04) provides: a GLIBC symbol version
# newer than 2.35, or a shared library outside libc6 and libgcc-s1 (the package's Depends).
#
# Usage: scripts/check-glibc.sh BINARY...
# Env:   OBJDUMP (default objdump; aarch64-linux-gnu-objdump for arm64), MAX_GLIBC (default 2.35)
set -euo pipefail

OBJDUMP=${OBJDUMP:-objdump}
MAX_GLIBC=${MAX_GLIBC:-2.35}
# Libraries shipped by libc6 and libgcc-s1, the only shared-library Depends in debian/control.
ALLOWED_NEEDED='^(libc\.so\.6|libm\.so\.6|libdl\.so\.2|libpthread\.so\.0|librt\.so\.1|libutil\.so\.1|libgcc_s\.so\.1|ld-linux-x86-64\.so\.2|ld-linux-aarch64\.so\.1)$'

if [ $# -eq 0 ]; then
	echo "usage: $0 BINARY..." >&2
	exit 2
fi
command -v "$OBJDUMP" >/dev/null || { echo "check-glibc: $OBJDUMP not found" >&2; exit 2; }

status=0
for bin in "$@"; do
	[ -f "$bin" ] || { echo "check-glibc: $bin: no such file" >&2; exit 2; }
	newest=$("$OBJDUMP" -T "$bin" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/^GLIBC_//' | sort -uV | tail -n1)
	if [ -z "$newest" ]; then
		echo "check-glibc: $bin: no GLIBC symbol versions found (not a dynamic glibc binary?)" >&2
		status=1
		continue
	fi
	if [ "$(printf '%s\n%s\n' "$newest" "$MAX_GLIBC" | sort -V | tail -n1)" != "$MAX_GLIBC" ]; then
		echo "check-glibc: $bin needs GLIBC_$newest, newer than $MAX_GLIBC (JetPack 6 / Ubuntu 22.04):" >&2
		"$OBJDUMP" -T "$bin" | grep -F "GLIBC_$newest" | sed 's/^/  /' >&2
		status=1
	fi
	unexpected=$("$OBJDUMP" -p "$bin" | awk '$1 == "NEEDED" {print $2}' | grep -Ev "$ALLOWED_NEEDED" || true)
	if [ -n "$unexpected" ]; then
		echo "check-glibc: $bin links libraries debian/control does not depend on: $unexpected" >&2
		status=1
	fi
	[ $status -ne 0 ] || echo "check-glibc: $bin: newest GLIBC_$newest <= $MAX_GLIBC, libraries OK"
done
exit $status
