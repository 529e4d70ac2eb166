#!/usr/bin/env python3
"""Search and export benchmarks for BENCHMARKS.md (issue 4) against a running `vellum serve`.

Usage: bench/search.py URL KEYFILE [--runs N] [--per-run M] [--exports] [--pid PID]
       bench/search.py URL KEYFILE --compare URL2 KEYFILE2 [--runs N] [--per-run M]

Search: for each common query shape, M sequential requests (after a warm-up) with random
parameters; prints p50/p99 per run and the median (min-max) over N runs. Every search is itself
audited (a durable `audit.read` commit), which is part of the latency a client sees.
Compare (--compare): the same shapes against two servers over copies of one store, A and B
alternating shape by shape and run by run (A B B A ...), with identical random parameters on
both; prints each side's median p50/p99 and the B/A ratio of each pair's p99.
Exports (--exports): streams each format for a ~1/8 selection of the store, prints events/s and
the server's RSS growth while exporting (sampled from /proc/PID/status; --pid required).

Data shape expected: the store made by `proof_bench` (principals dr-0..996, patients
p-0..100002, actions fhir.<noun>.<verb>, timestamps over 2025-11-23..2026-11-23, text like
"amended observation record 123 for ward 17").
"""
import json, random, statistics, sys, threading, time, urllib.parse, urllib.request

args = sys.argv[1:]
if len(args) < 2:
    sys.exit(__doc__)
URL, KEY = args[0].rstrip("/"), open(args[1]).read().strip()
runs = int(args[args.index("--runs") + 1]) if "--runs" in args else 5
per_run = int(args[args.index("--per-run") + 1]) if "--per-run" in args else 200
pid = int(args[args.index("--pid") + 1]) if "--pid" in args else None
rng = random.Random(7)
# --only "shape,shape": restrict --compare to these shapes ("deep pages" included by name).
only = set(args[args.index("--only") + 1].split(",")) if "--only" in args else set()


def get(path, params, url=None, key=None):
    req = urllib.request.Request(
        f"{url or URL}{path}?{urllib.parse.urlencode(params)}",
        headers={"Authorization": f"Bearer {key or KEY}"},
    )
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=120) as r:
        body = r.read()
    return (time.perf_counter() - t) * 1000, body


def day(offset):
    return time.strftime("%Y-%m-%dT00:00:00Z", time.gmtime(1763856000 + offset * 86400))


NOUNS = ["patient", "observation", "encounter", "medication", "condition", "procedure"]
NOUNS_ALL = NOUNS + ["allergy", "immunization"]
SHAPES = {
    "principal": lambda: {"principalId": f"dr-{rng.randrange(997)}", "limit": 50},
    "patient": lambda: {"patientId": f"p-{rng.randrange(100003)}", "limit": 50},
    "action prefix + 7-day range": lambda: (
        lambda d: {"action": f"fhir.{rng.choice(NOUNS)}.*", "from": day(d), "to": day(d + 7), "limit": 50}
    )(rng.randrange(350)),
    # The generator writes verb k%4 with noun k%8, so only nouns j with j%4 == i follow verb i.
    "full text (2 words)": lambda: (
        lambda j: {"q": f"{['viewed', 'amended', 'exported', 'printed'][j % 4]} {NOUNS_ALL[j]}", "limit": 50}
    )(rng.randrange(8)),
    "full text + principal": lambda: {"q": "exported", "principalId": f"dr-{rng.randrange(997)}", "limit": 50},
    # ~61k matches of 10M (a verb is 1/4, a ward 1/41): the old plans' slowest case.
    "full text (mid-frequency)": lambda: {"q": f"{rng.choice(['viewed', 'amended', 'exported', 'printed'])} ward {rng.randrange(41)}", "limit": 50},
    # A broad prefix (5 actions, 1/8 of the store) with no time range.
    "action prefix without range": lambda: {"action": f"fhir.{rng.choice(NOUNS_ALL)}.*", "limit": 50},
}


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round((len(xs) - 1) * p)))]


def search_bench():
    for name, make in SHAPES.items():
        for _ in range(20):
            get("/v1/events", make())
        p50s, p99s, counts = [], [], []
        for _ in range(runs):
            lat = []
            for _ in range(per_run):
                ms, body = get("/v1/events", make())
                lat.append(ms)
                counts.append(len(json.loads(body)["events"]))
            p50s.append(pct(lat, 0.5))
            p99s.append(pct(lat, 0.99))
        print(f"{name}: p50 {statistics.median(p50s):.1f} ms ({min(p50s):.1f}-{max(p50s):.1f}), "
              f"p99 {statistics.median(p99s):.1f} ms ({min(p99s):.1f}-{max(p99s):.1f}), "
              f"mean results/page {statistics.mean(counts):.1f}")
    # Deep pages: follow the cursor 100 pages into one principal's history.
    lat = []
    for _ in range(runs):
        params = {"principalId": f"dr-{rng.randrange(997)}", "limit": 100}
        for page in range(100):
            ms, body = get("/v1/events", params)
            data = json.loads(body)
            if page >= 50:
                lat.append(ms)
            if not data.get("nextCursor"):
                break
            params["cursor"] = data["nextCursor"]
    print(f"deep pages (pages 50-100 of a principal, 100/page): p50 {pct(lat, 0.5):.1f} ms, p99 {pct(lat, 0.99):.1f} ms")


def compare_bench(url_b, key_b):
    sides = {"A": (URL, KEY), "B": (url_b, key_b)}
    for name, make in SHAPES.items():
        if only and name not in only:
            continue
        for side in sides.values():
            for _ in range(20):
                get("/v1/events", make(), *side)
        result = {"A": ([], []), "B": ([], [])}
        ratios = []
        for run in range(runs):
            params = [make() for _ in range(per_run)]
            order = ["A", "B"] if run % 2 == 0 else ["B", "A"]
            p99 = {}
            for side in order:
                lat = [get("/v1/events", p, *sides[side])[0] for p in params]
                result[side][0].append(pct(lat, 0.5))
                result[side][1].append(pct(lat, 0.99))
                p99[side] = pct(lat, 0.99)
            ratios.append(p99["B"] / p99["A"])
        line = [f"{name}:"]
        for side in "AB":
            p50s, p99s = result[side]
            line.append(f"{side} p50 {statistics.median(p50s):.1f} ({min(p50s):.1f}-{max(p50s):.1f}) "
                        f"p99 {statistics.median(p99s):.1f} ({min(p99s):.1f}-{max(p99s):.1f});")
        line.append(f"B/A p99 {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})")
        print(" ".join(line), flush=True)
    if only and "deep pages" not in only:
        return
    # Deep pages: the same principal followed 100 pages deep on both sides, alternating.
    lat = {"A": [], "B": []}
    for run in range(runs):
        principal = f"dr-{rng.randrange(997)}"
        for side in (["A", "B"] if run % 2 == 0 else ["B", "A"]):
            params = {"principalId": principal, "limit": 100}
            for page in range(100):
                ms, body = get("/v1/events", params, *sides[side])
                data = json.loads(body)
                if page >= 50:
                    lat[side].append(ms)
                if not data.get("nextCursor"):
                    break
                params["cursor"] = data["nextCursor"]
    if not lat["A"] or not lat["B"]:
        print("deep pages: skipped (no principal has 50 pages in this store)", flush=True)
        return
    print("deep pages (50-100, 100/page): " + "; ".join(
        f"{side} p50 {pct(lat[side], 0.5):.1f} p99 {pct(lat[side], 0.99):.1f}" for side in "AB"), flush=True)


def rss_kib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def export_bench():
    params = {"organizationId": "org-3"}  # 1/7 of the store, along the (organization_id, ts) index
    for fmt in ["ndjson", "json", "csv", "fhir", "pdf", "bundle"]:
        base = rss_kib()
        peak = [base]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], rss_kib())
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        req = urllib.request.Request(
            f"{URL}/v1/export?{urllib.parse.urlencode(dict(params, format=fmt))}",
            headers={"Authorization": f"Bearer {KEY}"},
        )
        t = time.perf_counter()
        size = 0
        with urllib.request.urlopen(req, timeout=3600) as r:
            while True:
                chunk = r.read(1 << 20)
                if not chunk:
                    break
                size += len(chunk)
        secs = time.perf_counter() - t
        stop.set()
        sampler.join()
        print(f"export {fmt}: {size / 1e6:.0f} MB in {secs:.1f} s, server RSS {base / 1024:.0f} -> peak {peak[0] / 1024:.0f} MiB")


if __name__ == "__main__":
    if "--compare" in args:
        i = args.index("--compare")
        compare_bench(args[i + 1].rstrip("/"), open(args[i + 2]).read().strip())
        sys.exit(0)
    if "--exports-only" not in args:
        search_bench()
    if "--exports" in args or "--exports-only" in args:
        if pid is None:
            sys.exit("--exports needs --pid PID of the server")
        export_bench()
