#!/usr/bin/env python3
"""Prints the median time and rate of every benchmark in the last criterion
run, as Markdown table rows, from target/criterion/*/*/new/estimates.json
(criterion's console output shows the slope/mean, not the median).

    python3 medians.py [TARGET_DIR]   # default: /work/main/benches/target
"""

import glob
import json
import os
import sys

target = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "target")
groups = {}
for path in sorted(glob.glob(os.path.join(target, "criterion", "*", "*", "new", "estimates.json"))):
    with open(path) as f:
        median = json.load(f)["median"]["point_estimate"]  # ns per message
    with open(path.replace("estimates.json", "benchmark.json")) as f:
        bench = json.load(f)
    groups.setdefault(bench["group_id"], {})[bench["function_id"]] = median


def show(ns):
    return f"{ns / 1000:.2f} µs" if ns >= 1000 else f"{ns:.0f} ns"


for group, ids in groups.items():
    print(f"\n{group}\n")
    print("| library | median per message | messages/s |")
    print("| --- | ---: | ---: |")
    for name, ns in ids.items():
        print(f"| {name} | {show(ns)} | {1e9 / ns:,.0f} |")
    if "dialerd" in ids and "rsipstack_0_7_14" in ids:
        ratio = ids["rsipstack_0_7_14"] / ids["dialerd"]
        print(f"\ndialerd/rsipstack rate: {ratio:.2f}x")
