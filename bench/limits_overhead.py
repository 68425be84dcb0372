#!/usr/bin/env python3
"""What limits add to a request, measured side by side in one run.

Four paths to the same `keel sim` upstream, each driven by `oha`:

  direct        client -> keel sim
  keel          client -> keel serve (no rules)        -> keel sim
  keel+limits   client -> keel serve (4 rules, in process) -> keel sim
  keel+redis    client -> keel serve (4 rules in Redis)     -> keel sim

The four rules cover every request and never refuse one: a request rate per
tenant and user, a token rate, a concurrency limit and a monthly budget. So
each request pays for counting its prompt (o200k_base), one admission and
one settlement; with Redis, two Lua script runs (the settlement after the
response). The paths run back to back at each load point (concurrency 1,
then fixed rates, open loop) and the added latency is the difference of
percentiles in that same run.

Usage: python3 bench/limits_overhead.py [--quick] [--redis redis://127.0.0.1:6379]
Needs: oha (cargo install oha), Redis, a release build of keel (built here).
Results go to stdout (markdown) and bench/out/limits_overhead.json.
"""

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time

from gateway_overhead import KEY, OUT, ROOT, free_port, oha, start_keel, start_sim, stop_all, wait_http

RULES = """
[[limits.rules]]
id = "rpm"
scope = "tenant=*,key=*"
requests = 100000000
per = "1m"

[[limits.rules]]
id = "tpm"
scope = "tenant=*"
tokens = 4000000000
per = "1m"

[[limits.rules]]
id = "in-flight"
scope = "tenant=*"
concurrency = 100000

[[limits.rules]]
id = "monthly"
scope = "tenant=*"
budget_usd = 100000000.0
period = "month"
"""


def start_limited_keel(port, sim_port, tmp, name, limits, redis_url=None):
    store = ""
    if redis_url:
        store = f'redis_url = "{redis_url}"\nredis_prefix = "keel-bench:{name}:{int(time.time())}"'
    return start_keel(port, sim_port, tmp, 2, name=name, store_extra=store, extra=RULES if limits else "")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="shorter runs, for a smoke test")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379")
    args = ap.parse_args()
    if not shutil.which("oha"):
        raise SystemExit("oha not found: cargo install oha")
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "keel", "--bin", "keel"], check=True, cwd=ROOT)
    dur = 4 if args.quick else 10
    n_c1 = 1000 if args.quick else 5000

    tmp = tempfile.mkdtemp(prefix="keel-bench-limits-")
    procs = []
    try:
        sim_port = free_port()
        sim = start_sim(sim_port)
        procs.append(sim)
        wait_http(f"http://127.0.0.1:{sim_port}/v1/models", sim)
        paths = {"direct": (f"http://127.0.0.1:{sim_port}/v1/chat/completions", None)}
        for name, limits, redis in (("keel", False, None), ("keel+limits", True, None),
                                    ("keel+redis", True, args.redis)):
            port = free_port()
            p = start_limited_keel(port, sim_port, tmp, name.replace("+", "-"), limits, redis)
            procs.append(p)
            wait_http(f"http://127.0.0.1:{port}/healthz", p)
            paths[name] = (f"http://127.0.0.1:{port}/v1/chat/completions", KEY)
        for url, auth in paths.values():
            oha(url, auth, n=500, conns=8)  # warm pools and caches

        results = {"concurrency_1": {}, "rates": {}}
        for name, (url, auth) in paths.items():
            results["concurrency_1"][name] = oha(url, auth, n=n_c1, conns=1)
            print("c1", name, results["concurrency_1"][name], flush=True)
        for rate in (1000, 2000):
            results["rates"][rate] = {}
            for name, (url, auth) in paths.items():
                results["rates"][rate][name] = oha(url, auth, duration=dur, rate=rate, conns=64)
                print(rate, name, results["rates"][rate][name], flush=True)

        os.makedirs(OUT, exist_ok=True)
        with open(os.path.join(OUT, "limits_overhead.json"), "w") as f:
            json.dump(results, f, indent=2)
        report(results)
    finally:
        stop_all(procs)
        shutil.rmtree(tmp, ignore_errors=True)


def report(r):
    print("\n| load | path | p50 ms | added p50 vs direct | p99 ms | added p99 vs direct "
          "| added p99 vs keel without rules | req/s | ok ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    loads = [("concurrency 1", r["concurrency_1"])] + [(f"{k} req/s", v) for k, v in r["rates"].items()]
    for label, res in loads:
        d, k = res["direct"], res["keel"]
        for name in ("keel", "keel+limits", "keel+redis"):
            x = res[name]
            print(f"| {label} | {name} | {x['p50_ms']:.3f} | {x['p50_ms'] - d['p50_ms']:+.3f} | {x['p99_ms']:.3f} "
                  f"| {x['p99_ms'] - d['p99_ms']:+.3f} | {x['p99_ms'] - k['p99_ms']:+.3f} | {x['rps']:.0f} "
                  f"| {x['ok_ratio']:.3f} |")


if __name__ == "__main__":
    main()
