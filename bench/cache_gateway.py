#!/usr/bin/env python3
"""The response cache end to end: a repeated-question workload through two
keel gateways at once, one with the cache on and one with it off, each in
front of its own `keel sim` (the same latency: 400 ms to the first token,
100 tokens/s, 48-token answers, priced as gpt-4o).

The workload draws questions from bench/cache/pairs_dev.jsonl with a
Zipf-like skew (a few questions asked often, most rarely), as support and
agent traffic repeats itself: each draw picks a pair, then its `a` or `b`
side, so repeats (exact hits), paraphrases (semantic hits) and near misses
(which must not hit) all occur. Both gateways get the same sequence from
the same number of concurrent clients.

Reported per gateway: latency p50/p99, upstream calls, spend and the spend
avoided (from keel's own /v1/usage), hits by kind, and wrong answers: hits
whose answer was generated for a question that is neither the one asked nor
a labelled paraphrase of it (the simulator tags each answer with a hash of
the prompt it answered).

Usage: python3 bench/cache_gateway.py [--requests 600] [--clients 8]
Needs: a build of keel (target/release/keel, else target/debug/keel), the
local model (scripts/model.sh) and httpx.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import socket
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = "sk-keel-bench-cache-0000"
MODEL_DIR = os.path.join(ROOT, ".keel", "models", "all-MiniLM-L6-v2")


def keel_binary() -> str:
    for profile in ("release", "debug"):
        path = os.path.join(ROOT, "target", profile, "keel")
        if os.path.exists(path):
            return path
    raise SystemExit("build keel first: cargo build --release -p keel")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url: str, proc: subprocess.Popen, seconds: float = 120) -> None:
    end = time.time() + seconds
    while time.time() < end:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: process exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not come up")


def tag(prompt: str) -> str:
    return "sim:" + hashlib.sha256(prompt.encode()).hexdigest()[:8]


def start(binary: str, tmp: str, name: str, cache: bool) -> tuple[str, list[subprocess.Popen]]:
    sim_port, port = free_port(), free_port()
    sim = subprocess.Popen(
        [binary, "sim", "--listen", f"127.0.0.1:{sim_port}", "--ttft-ms", "400",
         "--tokens-per-sec", "100", "--completion-tokens", "48"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    config = os.path.join(tmp, f"{name}.toml")
    with open(config, "w") as f:
        f.write(f"""
[server]
listen = "127.0.0.1:{port}"
[store]
data_dir = "{tmp}/{name}"
[ledger]
flush_interval_ms = 50
[[providers]]
name = "sim"
base_url = "http://127.0.0.1:{sim_port}/v1"
[[models]]
name = "gpt-4o"
[[models.deployments]]
provider = "sim"
model = "gpt-4o"
input_per_mtok = 2.50
output_per_mtok = 10.00
[[tenants]]
id = "bench"
[[keys]]
tenant = "bench"
secret = "{KEY}"
[[embedders]]
name = "minilm"
kind = "local"
model_dir = "{MODEL_DIR}"
[vectors]
fsync = false
[cache]
enabled = {str(cache).lower()}
""")
    log = open(os.path.join(tmp, f"{name}.log"), "w")
    proc = subprocess.Popen([binary, "serve", "--config", config], stdout=subprocess.DEVNULL,
                            stderr=log, env=dict(os.environ, KEEL_LOG="warn"))
    base = f"http://127.0.0.1:{port}"
    wait_up(f"http://127.0.0.1:{sim_port}/v1/models", sim)
    wait_up(f"{base}/healthz", proc)
    return base, [proc, sim]


def workload(n: int, seed: int) -> list[tuple[str, str]]:
    """(pair id, question) draws with a Zipf-like skew over the pairs."""
    pairs = [json.loads(line) for line in open(os.path.join(ROOT, "bench", "cache", "pairs_dev.jsonl"))
             if line.strip()]
    rng = random.Random(seed)
    rng.shuffle(pairs)
    weights = [1.0 / (rank + 1) ** 1.1 for rank in range(len(pairs))]
    out = []
    for p in rng.choices(pairs, weights=weights, k=n):
        out.append((p, p["a"] if rng.random() < 0.5 else p["b"]))
    return out


def drive(base: str, draws, clients: int) -> dict:
    latencies, kinds, wrong, wrong_ids = [], {}, 0, set()
    lock = threading.Lock()
    client = httpx.Client(base_url=base, timeout=60,
                          headers={"authorization": f"Bearer {KEY}"},
                          limits=httpx.Limits(max_connections=clients))

    def one(draw):
        nonlocal wrong
        pair, question = draw
        body = {"model": "gpt-4o", "temperature": 0,
                "messages": [{"role": "user", "content": question}]}
        started = time.perf_counter()
        r = client.post("/v1/chat/completions", json=body)
        elapsed = time.perf_counter() - started
        r.raise_for_status()
        answered = r.json()["choices"][0]["message"]["content"].split(" ")[0]
        kind = r.headers.get("x-keel-cache", "off")
        # A right answer was generated for this question, or for its
        # labelled paraphrase.
        right = {tag(question)}
        if pair["label"] == "paraphrase":
            right |= {tag(pair["a"]), tag(pair["b"])}
        with lock:
            latencies.append(elapsed)
            kinds[kind] = kinds.get(kind, 0) + 1
            if answered not in right:
                wrong += 1
                wrong_ids.add(f"{pair['id']} ({pair['category']}, {kind})")

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, draws))
    time.sleep(0.5)  # the ledger writes in batches
    usage = client.get("/v1/usage").json()["data"][0]
    latencies.sort()
    pick = lambda p: latencies[round((len(latencies) - 1) * p)] * 1000  # noqa: E731
    return {"p50_ms": pick(0.5), "p99_ms": pick(0.99), "mean_ms": 1000 * sum(latencies) / len(latencies),
            "kinds": kinds, "wrong_answers": wrong, "wrong_pairs": sorted(wrong_ids), "cost_usd": usage["cost_usd"],
            "saved_usd": usage["saved_usd"], "requests": usage["requests"],
            "cache_hits": usage["cache_hits"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    binary = keel_binary()
    draws = workload(args.requests, args.seed)
    distinct = len({q for _, q in draws})
    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            on, p1 = start(binary, tmp, "on", True)
            off, p2 = start(binary, tmp, "off", False)
            procs = p1 + p2
            results = {}
            threads = [threading.Thread(target=lambda k=k, b=b: results.__setitem__(k, drive(b, draws, args.clients)))
                       for k, b in (("cache on", on), ("cache off", off))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            for p in procs:
                p.terminate()
    print(f"{args.requests} requests ({distinct} distinct questions), {args.clients} clients each, "
          f"keel at {os.path.relpath(binary, ROOT)}")
    print("| gateway | p50 | p99 | mean | upstream calls | spend | spend avoided | hits (exact / semantic) | wrong answers |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        k = r["kinds"]
        upstream = k.get("miss", 0) + k.get("off", 0)
        print(f"| {name} | {r['p50_ms']:.0f} ms | {r['p99_ms']:.0f} ms | {r['mean_ms']:.0f} ms | {upstream} | "
              f"${r['cost_usd']} | ${r['saved_usd']} | {k.get('exact', 0)} / {k.get('semantic', 0)} | "
              f"{r['wrong_answers']} |")
    for name, r in results.items():
        if r["wrong_pairs"]:
            print(f"{name}: wrong answers on {', '.join(r['wrong_pairs'])}")
    os.makedirs(os.path.join(ROOT, "bench", "out"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "out", "cache_gateway.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
