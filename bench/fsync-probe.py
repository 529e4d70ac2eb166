#!/usr/bin/env python3
"""Disk probe for BENCHMARKS.md: 4 KiB write + fdatasync in a loop for N seconds (default 5)
in the given directory (default: the current one); prints the median, p99 and max latency in ms
and every sync over 20 ms with when it happened (a neighbour's periodic fsync bursts show up
there and set a floor under any p99 of a durable server, though not in the median or p99).
The durable-commit path cannot beat this figure; print it before and after every run."""
import os, sys, time, statistics, tempfile

seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
directory = sys.argv[2] if len(sys.argv) > 2 else "."
fd, path = tempfile.mkstemp(prefix="fsync-probe-", dir=directory)
block = os.urandom(4096)
lat = []
stalls = []  # (seconds into the probe, ms) of syncs over 20 ms: a neighbour's periodic bursts
start = time.monotonic()
end = start + seconds
try:
    while time.monotonic() < end:
        t = time.perf_counter()
        os.pwrite(fd, block, 0)
        os.fdatasync(fd)
        lat.append((time.perf_counter() - t) * 1000)
        if lat[-1] > 20:
            stalls.append((time.monotonic() - start, lat[-1]))
finally:
    os.close(fd)
    os.unlink(path)
lat.sort()
p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
print(f"fsync probe: {len(lat)} syncs in {seconds:.0f}s, median {statistics.median(lat):.3f} ms, p99 {p99:.3f} ms, max {lat[-1]:.3f} ms, "
      f"stalls > 20 ms: {len(stalls)} ({', '.join(f'{at:.1f}s:{ms:.0f}ms' for at, ms in stalls[:8])})")
