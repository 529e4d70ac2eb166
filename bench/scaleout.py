#!/usr/bin/env python3
"""Scale-out benchmark for BENCHMARKS.md (issue 6), following ../shared/BENCHMARKING.md.

Runs, alternately in one session (A B A B …), Vellum's scale-out shape — one API node
(`vellum serve` with AUDIT_DB_URL and AUDIT_REDIS_URL) and W workers (`vellum worker`) — and
the seed's stack (bench/bullmq: a BullMQ producer and W worker processes writing hashed,
chained events to PostgreSQL). Same events (`vellum bench`'s generator, which
bench/bullmq/gen-events.py reproduces byte for byte), same services, same durability: an event
counts once its PostgreSQL transaction committed with synchronous_commit=on.

Vellum is driven by `vellum bench --wait committed`: every request returns only after a worker
committed its events, so events/s is committed throughput and the latency is enqueue→commit.
The seed's producer gets `queue.add` answers before anything is stored, so its latency is
measured from enqueue to the row's commit (bench/bullmq/run.js).

Usage: python3 bench/scaleout.py [--runs 3] [--events 20000] [--workers 1 2] [--log org|single]
       [--batch 1|100] [--wait queued|committed] [--rate EVENTS_PER_S]
Needs: cargo build --release; cd bench/bullmq && npm ci
Environment: VELLUM_BENCH_PARTITIONS (default 16); VELLUM_BENCH_CONFIG, extra vellum.toml lines
for Vellum's nodes (an A/B of a setting); VELLUM_BENCH_SQL, SQL run in Vellum's schema once it is
migrated (an A/B of a schema knob); VELLUM_BENCH_PERF=/path (+ VELLUM_BENCH_PERF_HZ,
VELLUM_BENCH_PERF_ARGS) to `perf record -a` Vellum's measured interval.
"""
import argparse, json, os, shutil, socket, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ingest import cpu_seconds, free_port, fsync_probe  # noqa: E402  (bench/ingest.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("VELLUM_BIN") or os.path.join(
    os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target"), "release", "vellum")
PG = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
PARTITIONS = int(os.environ.get("VELLUM_BENCH_PARTITIONS", "16"))
SECRET = "scaleout-benchmark-secret-0123456789abcdef"


def psql(db, sql):
    subprocess.run(["psql", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-c", sql],
                   check=True, capture_output=True)


def wait_http(port, path="/healthz", limit=60):
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                if s.recv(12).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"nothing answered on port {port}")


def lag_quantiles(port):
    """Enqueue→commit quantiles (ms) a worker recorded (`vellum_queue_commit_lag_seconds`)."""
    import urllib.request
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("vellum_queue_commit_lag_seconds{quantile="):
            q = line.split('"')[1]
            out[q] = float(line.split()[-1]) * 1000
    return out


def metric_lines(port, name):
    """A metric's exposition lines from a worker (for the record of a run)."""
    import urllib.request
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {line.split()[0]: float(line.split()[-1]) for line in text.splitlines()
            if line.startswith(name)}


def service_cpu_seconds(name):
    """CPU seconds of every process called `name` (e.g. postgres, redis-server), counting the
    children they reaped (PostgreSQL backends that ended), from /proc."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                head, rest = f.read().rsplit(")", 1)
        except OSError:
            continue
        if head.split("(", 1)[1] != name:
            continue
        fields = rest.split()
        total += sum(int(fields[i]) for i in (11, 12, 13, 14)) / tick
    return total


def committed_events(ports):
    """Events the workers committed (`vellum_worker_events_committed_total`, summed)."""
    import urllib.request
    total = 0
    for port in ports:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("vellum_worker_events_committed_total"):
                total += int(float(line.split()[-1]))
    return total


def count_events(db):
    out = subprocess.run(["psql", "-tA", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-c",
                          "SELECT count(*) FROM vellum.events"], capture_output=True, text=True)
    try:
        return int(out.stdout.strip())
    except ValueError:
        return 0


def vellum_run(workers, events, log, batch, concurrency, wait="queued", rate=None):
    """One measured run of the scale-out shape on a fresh database and queue."""
    db = "bench_vellum"
    psql("test", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    psql("test", f"CREATE DATABASE {db}")
    tmp = tempfile.mkdtemp(prefix="vellum-scaleout-")
    queue = f"bench-{os.getpid()}-{int(time.time())}"
    config = os.path.join(tmp, "vellum.toml")
    with open(config, "w") as f:
        f.write(f"queuePartitions = {PARTITIONS}\nlogPerOrganization = {'true' if log == 'org' else 'false'}\n")
        # Extra vellum.toml lines for an A/B (e.g. "workerWriters = 1").
        f.write(os.environ.get("VELLUM_BENCH_CONFIG", "").replace("\\n", "\n") + "\n")
    env = dict(os.environ, AUDIT_DB_URL=PG.rsplit("/", 1)[0] + "/" + db, AUDIT_REDIS_URL=REDIS,
               AUDIT_QUEUE_NAME=queue, AUDIT_CRYPTO_SECRET=SECRET, VELLUM_LOG="warn")
    procs = []
    worker_ports = []
    try:
        for w in range(workers):
            port = free_port()
            worker_ports.append(port)
            procs.append(subprocess.Popen(
                [BIN, "--config", config, "--data-dir", os.path.join(tmp, f"w{w}"), "worker",
                 "--listen", f"127.0.0.1:{port}"],
                env=dict(env, VELLUM_NODE_ID=f"w{w}"), stdout=subprocess.DEVNULL,
                stderr=open(os.path.join(tmp, f"w{w}.log"), "w")))
            wait_http(port)
        api_port = free_port()
        api_dir = os.path.join(tmp, "api")
        procs.append(subprocess.Popen(
            [BIN, "--config", config, "--data-dir", api_dir, "serve", "--listen", f"127.0.0.1:{api_port}"],
            env=dict(env, VELLUM_NODE_ID="api"), stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(tmp, "api.log"), "w")))
        wait_http(api_port)
        if os.environ.get("VELLUM_BENCH_SQL"):
            # SQL run on the migrated database before measuring (an A/B of a schema knob).
            psql(db, "SET search_path TO vellum; " + os.environ["VELLUM_BENCH_SQL"])
        # Every partition owned before measuring (workers take theirs within ~2 s).
        time.sleep(3)
        key = open(os.path.join(api_dir, "admin.key")).read().strip()
        cpu_before = [cpu_seconds(p.pid) or 0 for p in procs]
        services_before = {n: service_cpu_seconds(n) for n in ("postgres", "redis-server")}
        profiler = None
        if os.environ.get("VELLUM_BENCH_PERF"):
            # Whole-machine profile of the measured interval only (perf report --sort comm,sym).
            profiler = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", os.environ.get("VELLUM_BENCH_PERF_HZ", "999"), "-a", *os.environ.get("VELLUM_BENCH_PERF_ARGS", "").split(), "-o",
                                         os.environ["VELLUM_BENCH_PERF"]],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        t0 = time.time()
        out = subprocess.run(
            [BIN, "bench", "--url", f"http://127.0.0.1:{api_port}", "--api-key", key,
             "--events", str(events), "--warmup", "0", "--batch", str(batch),
             "--concurrency", str(concurrency), "--wait", wait, "--json", "--quiet",
             *(["--rate", str(rate)] if rate else [])],
            env=env, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"vellum bench failed: {out.stderr}")
        result = json.loads(out.stdout.strip().splitlines()[-1])
        if wait == "queued":
            # As the seed harness measures: first enqueue to last commit.
            # Completion is read from the workers' own committed counters, as the seed
            # harness reads its workers' (IPC, every 20 ms): polling PostgreSQL with a
            # `count(*)` from a new psql process each time cost a backend fork and a
            # full scan per poll, CPU taken from the stack being measured.
            deadline = time.time() + 600
            while committed_events(worker_ports) < events and time.time() < deadline:
                time.sleep(0.02)
            # The counter also counts alerts the workers' detection appended; the table
            # has the last word (rarely needed: alerts are few).
            while count_events(db) < events and time.time() < deadline:
                time.sleep(0.02)
            wall = time.time() - t0
            result["enqueuedPerSecond"] = result["eventsPerSecond"]
            result["eventsPerSecond"] = events / wall
            lags = [lag_quantiles(p) for p in worker_ports]
            result["latencyMs"] = {
                "p50": max(l.get("0.5", 0) for l in lags),
                "p99": max(l.get("0.99", 0) for l in lags),
                "note": "enqueue to commit, worst worker",
            }
        else:
            wall = time.time() - t0
        # Per worker: events per commit and commit duration (summaries from /metrics).
        result["commitBatch"] = [metric_lines(p, "vellum_commit_batch_size") for p in worker_ports]
        result["commitSeconds"] = [metric_lines(p, "vellum_commit_duration_seconds") for p in worker_ports]
        if profiler:
            profiler.send_signal(2)
            profiler.wait()
        cpu = [(cpu_seconds(p.pid) or 0) - b for p, b in zip(procs, cpu_before)]
        result["workerCpuSeconds"] = [round(c, 2) for c in cpu[:workers]]
        result["serviceCpuSeconds"] = {n: round(service_cpu_seconds(n) - b, 2) for n, b in services_before.items()}
        result["apiCpuSeconds"] = round(cpu[-1], 2)
        result["wallSeconds"] = round(wall, 2)
        return result
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        keys = subprocess.run(["redis-cli", "-u", REDIS, "--scan", "--pattern", f"{queue}*"],
                              capture_output=True, text=True).stdout.split()
        if keys:
            subprocess.run(["redis-cli", "-u", REDIS, "DEL", *keys], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def bullmq_run(workers, events_file, log, bulk=1, rate=None):
    extra = (["--bulk", str(bulk)] if bulk > 1 else []) + (["--rate", str(rate)] if rate else [])
    out = subprocess.run(["node", os.path.join(ROOT, "bench", "bullmq", "run.js"), "--events", events_file,
                          "--workers", str(workers), "--log", log, *extra],
                         capture_output=True, text=True, cwd=os.path.join(ROOT, "bench", "bullmq"))
    if out.returncode != 0:
        raise SystemExit(f"bullmq run failed: {out.stderr[-2000:]}")
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    return json.loads(lines[-1])


def med(values):
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}–{max(values):,.0f})"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--log", choices=["org", "single"], default="org")
    ap.add_argument("--batch", type=int, default=1, help="events per Vellum request (the seed adds one per call)")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--only", choices=["vellum", "seed"], help="run one stack only (for profiling)")
    ap.add_argument("--rate", type=float, help="open loop at this many events/s (for latency at a sustainable load)")
    ap.add_argument("--wait", choices=["queued", "committed"], default="queued",
                    help="queued: 202 on enqueue like queue.add, throughput = first enqueue to last commit "
                         "(the seed harness's measure); committed: every request waits for its commit")
    args = ap.parse_args()
    events_file = os.path.join(tempfile.gettempdir(), f"scaleout-events-{args.events}.ndjson")
    if not os.path.exists(events_file):
        subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bullmq", "gen-events.py"), str(args.events),
                        "--out", events_file, "--distinct", "1024"], check=True)
    if not os.environ.get("VELLUM_BENCH_PERF"):
        print(f"# fsync before: {fsync_probe()}", flush=True)
    rows = {}
    for workers in args.workers:
        v_runs, b_runs = [], []
        for i in range(args.runs):
            v = {"eventsPerSecond": None, "latencyMs": {"p50": None, "p99": None}}
            if args.only != "seed":
                v = vellum_run(workers, args.events, args.log, args.batch, args.concurrency, args.wait, args.rate)
                print(json.dumps({"stack": "vellum", "workers": workers, "run": i + 1, **v}), flush=True)
            if args.only == "vellum":
                v_runs.append(v)
                b_runs.append({"eventsPerSecond": None, "latencyMs": {"p50": None, "p99": None}})
                continue
            # With --batch N, the seed's producer enqueues N jobs per call too (addBulk).
            b = bullmq_run(workers, events_file, args.log, args.batch, args.rate)
            print(json.dumps({"stack": "bullmq", "workers": workers, "run": i + 1,
                              "eventsPerSecond": b["eventsPerSecond"], "latencyMs": b["latencyMs"],
                              "committed": b["committed"], "verify": b.get("verify", {}).get("ok")}), flush=True)
            v_runs.append(v)
            b_runs.append(b)
        rows[workers] = (v_runs, b_runs)
    print(f"# fsync after: {fsync_probe()}")
    print(f"\n| workers | Vellum events/s | seed stack events/s | ratio per pair | Vellum p50 / p99 ms | seed p50 / p99 ms |")
    print("| --- | --- | --- | --- | --- | --- |")
    for workers, (v_runs, b_runs) in rows.items():
        ratios = [v["eventsPerSecond"] / b["eventsPerSecond"] for v, b in zip(v_runs, b_runs)
                  if b["eventsPerSecond"] and v["eventsPerSecond"]]
        v_lat = f"{med([v['latencyMs']['p50'] for v in v_runs])} / {med([v['latencyMs']['p99'] for v in v_runs])}"
        b_lat = f"{med([b['latencyMs']['p50'] for b in b_runs])} / {med([b['latencyMs']['p99'] for b in b_runs])}"
        print(f"| {workers} | {med([v['eventsPerSecond'] for v in v_runs])} | {med([b['eventsPerSecond'] for b in b_runs])} "
              f"| {', '.join(f'{r:.1f}×' for r in ratios)} | {v_lat} | {b_lat} |")


if __name__ == "__main__":
    main()
