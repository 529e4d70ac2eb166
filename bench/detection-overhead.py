#!/usr/bin/env python3
"""What the detection rules cost the ingest path, for BENCHMARKS.md (issue 8).

Alternates fresh `vellum serve` processes with detection on and off (ABAB…, so drift in the
machine's load hits both alike), each loaded by `vellum bench` with the same synthetic events
(batches of 100, 16 connections, closed loop), and reports per mode the median (min-max) of
events/s, p99 latency, the server's CPU seconds per 100k events, and the alerts appended.

Usage: python3 bench/detection-overhead.py [--rounds 3] [--events 100000]
Needs a release build: cargo build --release -p vellum
"""
import argparse, json, os, shutil, sqlite3, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ingest import BIN, cpu_seconds, free_port  # noqa: E402  (bench/ingest.py)


def wait_healthy(port, proc, timeout=30):
    import urllib.request
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("server did not become healthy")


def one_run(detection, events, warmup):
    tmp = tempfile.mkdtemp(prefix="vellum-det-")
    try:
        with open(os.path.join(tmp, "vellum.toml"), "w") as f:
            f.write(f"[detection]\nenabled = {'true' if detection else 'false'}\n")
        data = os.path.join(tmp, "data")
        port = free_port()
        env = dict(os.environ, AUDIT_CRYPTO_SECRET="bench-secret-0123456789abcdef0123456789")
        server = subprocess.Popen([BIN, "serve", "--data-dir", data, "--listen", f"127.0.0.1:{port}"],
                                  cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_healthy(port, server)
            cpu0 = cpu_seconds(server.pid)
            out = subprocess.run([BIN, "bench", "--url", f"http://127.0.0.1:{port}", "--data-dir", data,
                                  "--batch", "100", "--concurrency", "16", "--events", str(events),
                                  "--warmup", str(warmup), "--json", "--quiet"],
                                 cwd=tmp, env=env, capture_output=True, text=True, check=True)
            time.sleep(2)  # let detection finish the tail and append its alerts
            cpu = cpu_seconds(server.pid) - cpu0
        finally:
            server.terminate()
            server.wait(timeout=60)
        result = json.loads([l for l in out.stdout.splitlines() if l.startswith("{")][-1])
        db = sqlite3.connect(os.path.join(data, "vellum.db"))
        alerts = db.execute("SELECT count(*) FROM events WHERE body LIKE '%\"action\":\"security.alert.%'").fetchone()[0]
        db.close()
        return {
            "eventsPerSecond": result["eventsPerSecond"],
            "p99Ms": result["latencyMs"]["p99"],
            "cpuPer100k": cpu / (events + warmup) * 100_000,
            "alerts": alerts,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def summary(values):
    return f"{statistics.median(values):,.1f} ({min(values):,.1f}–{max(values):,.1f})"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--warmup", type=int, default=10_000)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}", flush=True)
    one_run(True, 20_000, 2_000)  # discarded warm-up (page cache, binary)
    runs = {True: [], False: []}
    for r in range(args.rounds):
        for detection in (True, False) if r % 2 == 0 else (False, True):
            got = one_run(detection, args.events, args.warmup)
            runs[detection].append(got)
            print(f"round {r} detection={'on' if detection else 'off'}: {got}", flush=True)
    print(f"load average after: {os.getloadavg()}")
    print("| detection | events/s | p99 ms | server CPU s per 100k events | alerts appended |")
    print("| --- | --- | --- | --- | --- |")
    for detection in (True, False):
        rs = runs[detection]
        print(f"| {'on' if detection else 'off'} | {summary([x['eventsPerSecond'] for x in rs])} | "
              f"{summary([x['p99Ms'] for x in rs])} | {summary([x['cpuPer100k'] for x in rs])} | "
              f"{summary([x['alerts'] for x in rs])} |")


if __name__ == "__main__":
    main()
