#!/usr/bin/env python3
"""Reads a Prometheus text exposition on stdin and prints the count and the p50, p99 and
p99.9 upper bounds of one histogram (the smallest bucket bound holding that share)."""
import sys

name = sys.argv[1]
buckets = []
count = 0
for line in sys.stdin:
    if line.startswith(name + "_bucket{"):
        le = line.split('le="', 1)[1].split('"', 1)[0]
        n = float(line.rsplit(" ", 1)[1])
        buckets.append((float("inf") if le == "+Inf" else float(le), n))
    elif line.startswith(name + "_count"):
        count = float(line.rsplit(" ", 1)[1])
if not buckets or count == 0:
    sys.exit(f"no samples of {name}")
buckets.sort()
out = [f"{name}: {int(count)} samples"]
for q in (0.5, 0.99, 0.999):
    bound = next(le for le, n in buckets if n >= q * count)
    out.append(f"p{q * 100:g} <= {bound * 1e6:g} us")
print("; ".join(out))
