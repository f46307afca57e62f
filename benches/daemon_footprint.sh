#!/usr/bin/env bash
# Issue 3 benchmark: mpslabd's own CPU time and peak RSS over DURATION seconds (default 60) while
# it samples tegrastats every 100 ms and vmstat every 1 s, writing everything to SQLite.
# Targets: under 1 % of one core, under 15 MB peak RSS. The fake tegrastats child is measured
# side by side as the baseline (on a Jetson the real tegrastats costs about as much).
# Usage: benches/daemon_footprint.sh   (uses target/release if built, else target/debug)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
DURATION=${DURATION:-60}
BIN=${MPSLAB_BIN:-}
if [ -z "$BIN" ]; then
  if [ -x target/release/mpslabd ]; then BIN=target/release; else BIN=target/debug; fi
fi
HZ=$(getconf CLK_TCK)
T=$(mktemp -d /tmp/mpslab-fp.XXXXXX)
trap 'kill $DPID $BUSPID 2>/dev/null || true; rm -rf "$T"' EXIT
cat > "$T/mpslab.toml" <<TOML
[daemon]
state_dir = "$T/state"
[telemetry]
tegrastats_path = "$REPO/tests/fixtures/fake-tegrastats"
tegrastats_interval_ms = 100
vmstat_interval_ms = 1000
[mps]
control_path = "$T/none"
pipe_dir = "$T/pipe"
log_dir = "$T/log"
TOML
dbus-daemon --session --address="unix:path=$T/bus" --nofork --nopidfile --print-address=1 > "$T/addr" 2>/dev/null &
BUSPID=$!
for _ in $(seq 50); do [ -s "$T/addr" ] && break; sleep 0.1; done
export DBUS_SESSION_BUS_ADDRESS=$(head -1 "$T/addr")
"$BIN/mpslabd" --session-bus --config "$T/mpslab.toml" 2> "$T/log.txt" &
DPID=$!
for _ in $(seq 100); do "$BIN/mpslabctl" --session-bus status >/dev/null 2>&1 && break; sleep 0.1; done
sleep 2   # let start-up settle: we measure the steady state
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
child=$(pgrep -P "$DPID" -f fake-tegrastats | head -1)
d0=$(ticks "$DPID"); c0=$(ticks "$child"); s0=$(sqlite3 "$T/state/mpslab.db" 'select count(*) from tegrastats_samples')
sleep "$DURATION"
d1=$(ticks "$DPID"); c1=$(ticks "$child"); s1=$(sqlite3 "$T/state/mpslab.db" 'select count(*) from tegrastats_samples')
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$DPID/status")
python3 - "$d0" "$d1" "$c0" "$c1" "$HZ" "$DURATION" "$hwm" "$s0" "$s1" "$BIN" <<'PY'
import sys
d0, d1, c0, c1, hz, dur, hwm, s0, s1 = map(float, sys.argv[1:10])
daemon = (d1 - d0) / hz / dur * 100
child = (c1 - c0) / hz / dur * 100
print(f"binaries: {sys.argv[10]}")
print(f"mpslabd CPU: {daemon:.2f} % of one core over {dur:.0f} s (target < 1 %)")
print(f"mpslabd peak RSS: {hwm/1024:.1f} MB (target < 15 MB)")
print(f"tegrastats samples stored: {s1 - s0:.0f} ({(s1 - s0) / dur:.1f}/s)")
print(f"baseline, the sampled tegrastats child: {child:.2f} % of one core; mpslabd/tegrastats = {daemon / child if child else float('nan'):.2f}")
PY
