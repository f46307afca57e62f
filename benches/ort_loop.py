#!/usr/bin/env python3
"""The Python onnxruntime baseline for benches/worker_vs_python.sh: one model, one input, a timed
sess.run loop with the same options the worker uses (ORT_ENABLE_ALL, intra-op threads).

Prints one JSON object: median_ns (per iteration) and period_ns (loop wall time / iterations).
"""
import argparse
import json
import time

import numpy as np
import onnxruntime as ort


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--shape", required=True, help="e.g. 1,3,640,640")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    a = p.parse_args()

    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
    shape = [int(d) for d in a.shape.split(",")]
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    feed = {sess.get_inputs()[0].name: x}
    for _ in range(a.warmup):
        sess.run(None, feed)
    times = []
    loop_start = time.perf_counter_ns()
    for _ in range(a.iterations):
        t0 = time.perf_counter_ns()
        sess.run(None, feed)
        times.append(time.perf_counter_ns() - t0)
    period = (time.perf_counter_ns() - loop_start) // a.iterations
    times.sort()
    print(json.dumps({"median_ns": times[len(times) // 2], "min_ns": times[0], "period_ns": period}))


if __name__ == "__main__":
    main()
