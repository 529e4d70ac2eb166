#!/usr/bin/env python3
"""Ingest benchmark for BENCHMARKS.md, following ../shared/BENCHMARKING.md.

For each scenario: a fresh `vellum serve` on a temporary data dir, a warm-up, then RUNS runs of
`vellum bench` (closed loop, or open loop at a fixed rate), reporting median (min-max) of
events/s and of latency percentiles, the generator's CPU time, and the server's peak RSS.
An fsync probe runs before and after, and `openssl speed -evp sha256` once, so the figures sit
beside the machine's limits.

Usage: python3 bench/ingest.py [--runs 5] [--events 200000] [--scenario NAME ...]
Needs a release build: cargo build --release
"""
import argparse, json, os, shutil, socket, sqlite3, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The binary under test: $VELLUM_BIN, else $CARGO_TARGET_DIR/release/vellum, else target/release.
BIN = os.environ.get("VELLUM_BIN") or os.path.join(
    os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target"), "release", "vellum")

SCENARIOS = {
    # name: (batch, concurrency, rate or None)
    "batch100-c16": (100, 16, None),
    "single-c64": (1, 64, None),
    "batch100-c16-25k": (100, 16, 25000),
    "single-c64-5k": (1, 64, 5000),
}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def fsync_probe(seconds=5):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "fsync-probe.py"), str(seconds), tempfile.gettempdir()],
                         capture_output=True, text=True)
    return out.stdout.strip()


def peak_rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def cpu_seconds(pid):
    """User + system CPU seconds of a process so far (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def index_lag(data):
    """Events committed to the log but not yet in the search index (read-only peek)."""
    try:
        log = sqlite3.connect(f"file:{os.path.join(data, 'vellum.db')}?mode=ro", uri=True)
        idx = sqlite3.connect(f"file:{os.path.join(data, 'index.db')}?mode=ro", uri=True)
        committed = log.execute("SELECT COALESCE(MAX(pos), 0) FROM events").fetchone()[0]
        row = idx.execute("SELECT value FROM state WHERE key = 'indexed_pos'").fetchone()
        log.close()
        idx.close()
        return committed - (row[0] if row else 0)
    except sqlite3.Error:
        return None


def wait_for_index(data, timeout=120):
    """Seconds until the index has caught up with the log after the load stops."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if index_lag(data) == 0:
            return time.monotonic() - started
        time.sleep(0.1)
    return None


def run_scenario(name, batch, conc, rate, runs, events):
    data = tempfile.mkdtemp(prefix="vellum-bench-")
    port = free_port()
    env = dict(os.environ, AUDIT_CRYPTO_SECRET="benchmark-secret-0123456789abcdef", VELLUM_LOG="warn")
    server = subprocess.Popen([BIN, "serve", "--data-dir", data, "--listen", f"127.0.0.1:{port}"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            if os.path.exists(os.path.join(data, "admin.key")):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    pass
            time.sleep(0.1)
        results = []
        cmd = [BIN, "bench", "--data-dir", data, "--url", f"http://127.0.0.1:{port}", "--batch", str(batch),
               "--concurrency", str(conc), "--quiet", "--json"]
        if rate:
            cmd += ["--rate", str(rate)]
        # warm-up run (discarded)
        subprocess.run(cmd + ["--events", str(min(events, 20000)), "--warmup", "0"], env=env, capture_output=True, text=True)
        for _ in range(runs):
            cpu_before = cpu_seconds(server.pid)
            out = subprocess.run(cmd + ["--events", str(events), "--warmup", str(max(batch * conc, 2000))],
                                 env=env, capture_output=True, text=True)
            cpu_after = cpu_seconds(server.pid)
            line = [l for l in out.stdout.splitlines() if l.startswith("{")]
            if not line:
                print(out.stdout, out.stderr, file=sys.stderr)
                continue
            result = json.loads(line[-1])
            # The server's CPU over the whole run (warm-up included), and how far the search
            # index trails the log when the load stops (it must stay "just behind").
            result["serverCpuSeconds"] = (cpu_after - cpu_before) if cpu_before is not None and cpu_after is not None else None
            result["indexLagAtEnd"] = index_lag(data)
            results.append(result)
        rss = peak_rss_kib(server.pid)
        catch_up = wait_for_index(data)
        for r in results:
            r["indexCatchUpSeconds"] = catch_up
    finally:
        server.terminate()
        server.wait(timeout=60)
        shutil.rmtree(data, ignore_errors=True)
    return results, rss


def summarize(values):
    if not values:
        return "n/a"
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--events", type=int, default=200000)
    ap.add_argument("--scenario", action="append")
    args = ap.parse_args()
    names = args.scenario or list(SCENARIOS)
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"commit {commit}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs")
    sha = subprocess.run(["openssl", "speed", "-seconds", "2", "-evp", "sha256"], capture_output=True, text=True).stdout.strip().splitlines()
    if sha:
        print("openssl sha256:", sha[-1])
    print("before:", fsync_probe())
    for name in names:
        batch, conc, rate = SCENARIOS[name]
        events = args.events if batch > 1 else max(args.events // 4, 20000)
        results, rss = run_scenario(name, batch, conc, rate, args.runs, events)
        eps = [r["eventsPerSecond"] for r in results]
        p50 = [r["latencyMs"]["p50"] for r in results]
        p99 = [r["latencyMs"]["p99"] for r in results]
        p999 = [r["latencyMs"]["p999"] for r in results]
        cpu = [100 * (r["generatorCpuSeconds"] or 0) / r["seconds"] for r in results]
        errors = [r["errors"] for r in results if r["errors"]]
        lag = [r["indexLagAtEnd"] for r in results if r.get("indexLagAtEnd") is not None]
        catch_up = results[0].get("indexCatchUpSeconds") if results else None
        server_cpu = [100 * r["serverCpuSeconds"] / r["seconds"] for r in results if r.get("serverCpuSeconds") is not None]
        print(f"{name}: events/s {summarize(eps)} | p50 ms {summarize(p50)} | p99 ms {summarize(p99)} | "
              f"p99.9 ms {summarize(p999)} | generator CPU % of a core {summarize(cpu)} | server CPU % of a core "
              f"(incl. warm-up) {summarize(server_cpu)} | index lag at end of run {summarize(lag)} events, caught up "
              f"{catch_up if catch_up is None else round(catch_up, 1)} s after the last run | server peak RSS "
              f"{(rss or 0) / 1024:.0f} MiB | runs {len(results)}{' | errors ' + str(errors) if errors else ''}")
        sys.stdout.flush()
    print("after:", fsync_probe())


if __name__ == "__main__":
    main()
