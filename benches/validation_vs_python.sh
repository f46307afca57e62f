#!/usr/bin/env bash
# Validation pass: mpslab-worker's preprocess / inference / postprocess per image against the same
# pass in Python as Ultralytics runs it (cv2 letterbox, onnxruntime, numpy NMS), on the same real
# YOLOv8n (NudeNet 320n.onnx), the same photos and one thread. Ratio of medians, worker/python:
# below 1.00 means the worker is faster.
#
# Usage: benches/validation_vs_python.sh [REPEATS]    (env: COPIES=20 images per photo, SKIP_BUILD=1)
# Runs are interleaved (python, worker, python, ...) so drift on a shared machine hits both.
set -euo pipefail
cd "$(dirname "$0")/.."
REPEATS=${1:-3}
COPIES=${COPIES:-20}
CACHE=${MPSLAB_TEST_CACHE:-$PWD/.cache}
PY=$CACHE/venv/bin/python
LIB=$CACHE/ort/libonnxruntime.so
MODEL=$CACHE/models/320n.onnx
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
if [[ -z ${SKIP_BUILD:-} ]]; then
  cargo build -q --release --bin mpslab-worker
fi
WORKER=$CARGO_TARGET_DIR/release/mpslab-worker

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$PY" scripts/gen_photo_dataset.py "$CACHE/images" "$WORK" >/dev/null
DS=$WORK/faces
# COPIES of each photo (and its label), so medians rest on enough images.
for f in "$DS"/images/val/*.png; do
  stem=$(basename "$f" .png)
  for i in $(seq 1 "$COPIES"); do
    cp "$f" "$DS/images/val/${stem}_$i.png"
    cp "$DS/labels/val/$stem.txt" "$DS/labels/val/${stem}_$i.txt"
  done
done

worker_pass() {
  "$WORKER" --ort-lib "$LIB" --model "$MODEL" --threads 1 --warmup 1 --autostart \
    --dim batch=1 --dim height=320 --dim width=320 \
    --task detect --dataset "$DS" --predictions "$WORK/pred.jsonl" </dev/null >/dev/null
  "$PY" -c '
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = lambda k: int(statistics.median(r[k] for r in rows) * 1e6)
print(json.dumps({"images": len(rows), "pre_ns": med("pre_ms"), "infer_ns": med("infer_ms"), "post_ns": med("post_ms")}))' "$WORK/pred.jsonl"
}
python_pass() {
  # libpng warns about astronaut.png's colour profile on every read: keep that out of the table.
  "$PY" benches/val_loop.py --model "$MODEL" --images "$DS/images/val" --threads 1 2>"$WORK/py.err" \
    || { cat "$WORK/py.err" >&2; return 1; }
}
field() { "$PY" -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }
median() { "$PY" -c 'import sys, statistics; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }

declare -A W P
echo "== validation pass: 320n.onnx, $(ls "$DS/images/val" | wc -l) photos, 1 thread, $REPEATS repeats"
for r in $(seq 1 "$REPEATS"); do
  if (( r % 2 )); then p=$(python_pass); w=$(worker_pass); else w=$(worker_pass); p=$(python_pass); fi
  echo "  repeat $r: python $p"
  echo "            worker $w"
  for s in pre_ns infer_ns post_ns; do
    P[$s]="${P[$s]:-} $(field "$p" $s)"; W[$s]="${W[$s]:-} $(field "$w" $s)"
  done
done
for s in pre_ns infer_ns post_ns; do
  "$PY" -c '
import statistics, sys
name, p, w = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
pm, wm = statistics.median(map(float, p)), statistics.median(map(float, w))
print(f"  {name:<9} python {pm / 1e6:9.3f} ms   worker {wm / 1e6:9.3f} ms   worker/python {wm / pm:.2f}")' \
    "${s%_ns}" "${P[$s]}" "${W[$s]}"
done
