#!/usr/bin/env python3
"""Checks a Prometheus text-format file independently of mpslab's renderer.

Usage: promcheck.py FILE   (FILE "-" reads stdin)

Parses with the reference client (prometheus_client.parser.text_string_to_metric_families),
then applies checks that parser is lenient about: every sample's family has exactly one HELP
and one TYPE line before its samples, metric and label names are valid, no series repeats,
and the file ends with a newline. Prints the parsed samples as JSON
({"name{labels}": value, ...}, labels sorted) on success; exits 1 listing every problem.
"""
import json
import math
import re
import sys

from prometheus_client.parser import text_string_to_metric_families

METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


def strict(text):
    problems = []
    if text and not text.endswith("\n"):
        problems.append("file does not end with a newline")
    helps, types = {}, {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line.startswith("# HELP "):
            parts = line.split(" ", 3)
            name = parts[2] if len(parts) > 2 else ""
            if name in helps:
                problems.append("line %d: second HELP for %s" % (n, name))
            if len(parts) < 4 or not parts[3].strip():
                problems.append("line %d: empty HELP for %s" % (n, name))
            helps[name] = n
        elif line.startswith("# TYPE "):
            parts = line.split(" ")
            name = parts[2] if len(parts) > 2 else ""
            if name in types:
                problems.append("line %d: second TYPE for %s" % (n, name))
            if len(parts) != 4 or parts[3] not in TYPES:
                problems.append("line %d: bad TYPE line %r" % (n, line))
            types[name] = n
        elif line.startswith("#"):
            continue
        else:
            name = re.split(r"[{ ]", line, 1)[0]
            if not METRIC_NAME.match(name):
                problems.append("line %d: invalid metric name %r" % (n, name))
            if name not in helps:
                problems.append("line %d: %s has no HELP before it" % (n, name))
            if name not in types:
                problems.append("line %d: %s has no TYPE before it" % (n, name))
    return problems


def main(argv):
    if len(argv) != 2:
        sys.stderr.write("usage: promcheck.py FILE\n")
        return 2
    text = sys.stdin.read() if argv[1] == "-" else open(argv[1], encoding="utf-8").read()
    problems = strict(text)
    samples = {}
    try:
        for fam in text_string_to_metric_families(text):
            if not METRIC_NAME.match(fam.name):
                problems.append("invalid family name %r" % fam.name)
            for s in fam.samples:
                for k in s.labels:
                    if not LABEL_NAME.match(k) or k.startswith("__"):
                        problems.append("%s: invalid label name %r" % (s.name, k))
                labels = ",".join('%s=%s' % (k, json.dumps(v)) for k, v in sorted(s.labels.items()))
                key = "%s{%s}" % (s.name, labels) if labels else s.name
                if key in samples:
                    problems.append("duplicate series %s" % key)
                v = s.value
                samples[key] = v if math.isfinite(v) else repr(v)
    except Exception as e:  # the reference parser rejects the file
        problems.append("prometheus_client cannot parse: %s" % e)
    if problems:
        for p in problems:
            sys.stderr.write("promcheck: %s\n" % p)
        return 1
    json.dump(samples, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
