#!/usr/bin/env python3
"""Independent reference for mpslab's latency statistics (numpy).

Reads {"samples": [[x, ...], ...], "percentiles": [p, ...]} as JSON on stdin and prints, for
each sample, {"n", "mean", "stdev", "min", "max", "percentiles": [...]} as JSON on stdout.
Same conventions as src/experiment/analysis.rs: stdev with ddof=1 (0 for n < 2), percentiles
with numpy's default "linear" method (Hyndman-Fan type 7).
"""
import json
import sys

import numpy as np


def describe(xs, percentiles):
    a = np.asarray(xs, dtype=np.float64)
    return {
        "n": int(a.size),
        "mean": float(np.mean(a)),
        "stdev": float(np.std(a, ddof=1)) if a.size > 1 else 0.0,
        "min": float(np.min(a)),
        "max": float(np.max(a)),
        "percentiles": [float(v) for v in np.percentile(a, percentiles, method="linear")],
    }


def main():
    req = json.load(sys.stdin)
    out = [describe(xs, req["percentiles"]) for xs in req["samples"]]
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
