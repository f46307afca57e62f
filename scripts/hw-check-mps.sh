#!/usr/bin/env bash
# Records what the real nvidia-cuda-mps-control prints on this Jetson, so the test fake
# (tests/fixtures/fake-nvidia-cuda-mps-control) can be corrected from real output.
#
# Every command's stdout, stderr and exit code are saved separately: first with no daemon
# (dead), then with a live daemon on a PRIVATE pipe/log directory (never /tmp/nvidia-mps), then
# after SIGTERM and SIGKILL (stale directory). Nothing system-wide is changed; every daemon it
# starts is stopped at the end. Run it as the user the workers will run as (or as root).
#
# Usage: scripts/hw-check-mps.sh [OUTPUT_PARENT_DIR]     (default: current directory)
# Env:   MPS_CONTROL=/usr/bin/nvidia-cuda-mps-control   CALL_TIMEOUT=10
set -u -o pipefail

CONTROL=${MPS_CONTROL:-$(command -v nvidia-cuda-mps-control || echo /usr/bin/nvidia-cuda-mps-control)}
CALL_TIMEOUT=${CALL_TIMEOUT:-10}
OUT_PARENT=${1:-.}
OUT="$OUT_PARENT/mps-hw-check-$(date -u +%Y%m%dT%H%M%SZ)"
WORK=$(mktemp -d /tmp/mpshw.XXXXXX)
PIPE="$WORK/p"
LOGD="$WORK/l"
UID_NOW=$(id -u)
mkdir -p "$OUT" "$PIPE" "$LOGD"
chmod 0700 "$PIPE"

step=0

# record NAME STDIN_TEXT ARGS...: one run of the control binary with our private directories.
record() {
    local name=$1 input=$2
    shift 2
    step=$((step + 1))
    local base start end
    base=$(printf '%s/%02d-%s' "$OUT" "$step" "$name")
    printf '%s' "$input" >"$base.stdin"
    printf '%s\n' "$*" >"$base.argv"
    start=$(date +%s.%N)
    printf '%s' "$input" | CUDA_MPS_PIPE_DIRECTORY="$PIPE" CUDA_MPS_LOG_DIRECTORY="$LOGD" \
        timeout -k 2 "$CALL_TIMEOUT" "$CONTROL" "$@" >"$base.stdout" 2>"$base.stderr"
    echo $? >"$base.rc"
    end=$(date +%s.%N)
    echo "$start $end" >"$base.time"
    printf '%-45s rc=%s\n' "$step-$name" "$(cat "$base.rc")"
}

# ui NAME STDIN_TEXT: a front-end call (commands on stdin).
ui() { record "$1" "$2"; }

last_stdout() { printf '%s/%02d-%s.stdout' "$OUT" "$step" "$1"; }

daemon_pid() { cat "$PIPE/nvidia-cuda-mps-control.pid" 2>/dev/null; }

snapshot() {
    local tag=$1 pid pids
    ls -la "$PIPE" >"$OUT/ls-pipe-$tag.txt" 2>&1
    ls -la "$LOGD" >"$OUT/ls-log-$tag.txt" 2>&1
    cp "$LOGD/control.log" "$OUT/control-$tag.log" 2>/dev/null
    cp "$LOGD/server.log" "$OUT/server-$tag.log" 2>/dev/null
    pids=$(pgrep -d, -f nvidia-cuda-mps)
    if [ -n "$pids" ]; then
        ps -o pid,ppid,pgid,user,stat,lstart,args -p "$pids"
    fi >"$OUT/ps-$tag.txt" 2>&1
    # comm is cut to 15 characters, which is why pkill -x never matches (F19).
    for pid in $(pgrep -f nvidia-cuda-mps); do
        printf '%s comm=%s\n' "$pid" "$(cat "/proc/$pid/comm" 2>/dev/null)"
    done >"$OUT/comm-$tag.txt"
}

wait_ready() {
    local _
    for _ in $(seq 1 50); do
        if printf 'get_default_active_thread_percentage' | CUDA_MPS_PIPE_DIRECTORY="$PIPE" \
            timeout 5 "$CONTROL" >/dev/null 2>&1; then
            echo yes
            return
        fi
        sleep 0.2
    done
    echo no
}

{
    echo "date: $(date -u)"
    echo "uname: $(uname -a)"
    echo "nv_tegra_release: $(cat /etc/nv_tegra_release 2>/dev/null)"
    echo "control: $CONTROL ($(readlink -f "$CONTROL" 2>/dev/null))"
    echo "server: $(command -v nvidia-cuda-mps-server || ls /usr/sbin/nvidia-cuda-mps-server /usr/bin/nvidia-cuda-mps-server 2>/dev/null)"
    echo "uid: $UID_NOW"
    echo "ulimit -n: $(ulimit -n)"
    df -h /dev/shm
    dpkg -l 2>/dev/null | grep -Ei 'nvidia-l4t-(core|cuda)|cuda-toolkit|nvidia-jetpack' | head -20
} >"$OUT/system.txt" 2>&1

echo "== no daemon (dead) =="
record version "" -v
record help "" --help
record argv-command "" start_server -uid "$UID_NOW"
record v3-flag "" -p 3
for cmd in get_server_list get_default_active_thread_percentage "quit" "quit -t 1"; do
    ui "dead-${cmd// /_}" "$cmd"$'\n'
done
# No pipe directory variable at all: Tegra is said to have no default.
step=$((step + 1))
base=$(printf '%s/%02d-no-pipe-env' "$OUT" "$step")
printf 'get_server_list\n' | env -u CUDA_MPS_PIPE_DIRECTORY timeout "$CALL_TIMEOUT" "$CONTROL" \
    >"$base.stdout" 2>"$base.stderr"
echo $? >"$base.rc"

echo "== live daemon =="
record start-d "" -d
echo "ready=$(wait_ready)" >"$OUT/ready.txt"
record second-d "" -d
snapshot live-before
ui no-newline "get_default_active_thread_percentage"
ui get-default-atp $'get_default_active_thread_percentage\n'
ui set-default-atp $'set_default_active_thread_percentage 25\n'
ui get-default-atp-25 $'get_default_active_thread_percentage\n'
ui get-mem-unset $'get_default_device_pinned_mem_limit 0\n'
ui set-mem-1044M $'set_default_device_pinned_mem_limit 0 1044M\n'
ui get-mem-1044M $'get_default_device_pinned_mem_limit 0\n'
ui set-mem-512M $'set_default_device_pinned_mem_limit 0 512M\n'
ui get-mem-512M $'get_default_device_pinned_mem_limit 0\n'
ui set-mem-bad $'set_default_device_pinned_mem_limit 0 12T\n'
ui set-prio $'set_default_client_priority 1\n'
ui get-prio $'get_default_client_priority\n'
ui servers-empty $'get_server_list\n'
ui start-server "start_server -uid $UID_NOW"$'\n'
sleep 3
ui servers $'get_server_list\n'
SPID=$(tr -s ' \n' '\n' <"$(last_stdout servers)" | grep -E '^[0-9]+$' | head -1)
echo "server pid: ${SPID:-none}" >"$OUT/server-pid.txt"
ui start-server-again "start_server -uid $UID_NOW"$'\n'
ui start-server-other-uid $'start_server -uid 65534\n'
if [ -n "${SPID:-}" ]; then
    ui server-status "get_server_status $SPID"$'\n'
    ui client-list "get_client_list $SPID"$'\n'
    ui server-atp "get_active_thread_percentage $SPID"$'\n'
    ui set-server-atp "set_active_thread_percentage $SPID 50"$'\n'
    ui server-mem "get_device_pinned_mem_limit $SPID 0"$'\n'
    ui terminate-bogus "terminate_client $SPID 1"$'\n'
    tr '\0' '\n' <"/proc/$SPID/environ" >"$OUT/server-environ.txt" 2>&1
    tr '\0' ' ' <"/proc/$SPID/cmdline" >"$OUT/server-cmdline.txt" 2>&1
fi
ui server-status-bogus $'get_server_status 1\n'
ui ps $'ps\n'
ui device-client-list $'get_device_client_list\n'
ui unknown $'lock_server\n'
ui help-cmd $'help\n'
ui multi $'get_server_list\nget_default_active_thread_percentage\nbogus_command\nget_server_list\n'
snapshot live-after
DPID=$(daemon_pid)
echo "daemon pid: ${DPID:-none}" >"$OUT/daemon-pid.txt"
if [ -n "${DPID:-}" ]; then
    tr '\0' ' ' <"/proc/$DPID/cmdline" >"$OUT/daemon-cmdline.txt" 2>&1
fi

echo "== quit -t =="
ui quit-t $'quit -t 5\n'
sleep 1
snapshot after-quit

echo "== SIGTERM handling =="
record start-d-term "" -d
wait_ready >/dev/null
ui start-server-term "start_server -uid $UID_NOW"$'\n'
sleep 3
DPID=$(daemon_pid)
snapshot before-sigterm
if [ -n "${DPID:-}" ]; then
    kill -TERM "$DPID"
    sleep 3
fi
snapshot after-sigterm
ui after-sigterm $'get_server_list\n'

echo "== stale directory after SIGKILL =="
record start-d-kill "" -d
wait_ready >/dev/null
ui start-server-kill "start_server -uid $UID_NOW"$'\n'
sleep 3
DPID=$(daemon_pid)
if [ -n "${DPID:-}" ]; then
    kill -KILL "$DPID"
fi
sleep 1
snapshot after-sigkill
ui stale-ui $'get_server_list\n'
record start-d-reclaim "" -d
wait_ready >/dev/null
ui reclaimed $'get_server_list\n'
ui final-quit $'quit -t 5\n'
sleep 1
snapshot end

echo "== foreground mode (-f), SIGTERM after 3 s =="
step=$((step + 1))
base=$(printf '%s/%02d-foreground' "$OUT" "$step")
CUDA_MPS_PIPE_DIRECTORY="$PIPE" CUDA_MPS_LOG_DIRECTORY="$LOGD" timeout -s TERM 3 "$CONTROL" -f \
    >"$base.stdout" 2>"$base.stderr"
echo $? >"$base.rc"

# Leave nothing running: any MPS process on our private pipe directory is ours.
for pid in $(pgrep -f nvidia-cuda-mps); do
    if tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qx "CUDA_MPS_PIPE_DIRECTORY=$PIPE"; then
        kill -KILL "$pid" 2>/dev/null
    fi
done
cp -r "$LOGD" "$OUT/final-logs" 2>/dev/null
rm -rf "$WORK"
echo "results in $OUT"
