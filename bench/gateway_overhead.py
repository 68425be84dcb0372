#!/usr/bin/env python3
"""Gateway overhead: the latency keel adds, measured side by side in one run.

Three paths to the same `keel sim` upstream, each driven by `oha`:

  direct   client -> keel sim
  keel     client -> keel serve -> keel sim
  floor    client -> minimal axum + hyper-client proxy -> keel sim
  litellm  client -> LiteLLM proxy -> keel sim   (skipped with --no-litellm)

The floor is crates/keel-server/examples/minimal_proxy.rs: the same HTTP
stack as keel with nothing else (no auth, parsing, routing or accounting),
so "keel minus floor" is what keel's own features cost.

For each load point the paths run back to back, alternating, and the added
latency is the difference of their percentiles in that same run. Load points:
concurrency 1 (closed loop), then fixed rates (open loop, oha -q with latency
correction so a slow response cannot hide queueing). A sweep then finds the
highest rate at which keel's added p99 stays at or under 1 ms. keel's peak RSS
(VmHWM) is read from /proc at the end.

Usage: python3 bench/gateway_overhead.py [--quick] [--no-litellm]
Needs: oha (cargo install oha), a release build of keel, and for LiteLLM a
virtualenv with litellm[proxy] (created under bench/.venv on first use).
Results go to stdout (markdown) and bench/out/gateway_overhead.json.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEEL = os.path.join(ROOT, "target", "release", "keel")
FLOOR = os.path.join(ROOT, "target", "release", "examples", "minimal_proxy")
OUT = os.path.join(ROOT, "bench", "out")
VENV = os.path.join(ROOT, "bench", ".venv")
KEY = "sk-keel-bench-0000"
LITELLM_KEY = "sk-litellm-bench-0123456789abcdef0123456789abcdef"
BODY = json.dumps({
    "model": "bench",
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
    "max_tokens": 16,
})


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, proc, deadline_s=60, headers=None):
    end = time.time() + deadline_s
    while time.time() < end:
        if proc.poll() is not None:
            raise SystemExit(f"process for {url} exited with {proc.returncode}")
        try:
            req = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(req, timeout=1) as r:
                if r.status < 500:
                    return
        except Exception:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not come up in {deadline_s}s")


def oha(url, auth, *, n=None, duration=None, rate=None, conns=1):
    cmd = ["oha", "--no-tui", "--output-format", "json", "-m", "POST",
           "-H", "content-type: application/json", "-d", BODY, "-c", str(conns)]
    if auth:
        cmd += ["-H", f"authorization: Bearer {auth}"]
    if n:
        cmd += ["-n", str(n)]
    if duration:
        cmd += ["-z", f"{duration}s"]
    if rate:
        cmd += ["-q", str(rate), "--latency-correction"]
    out = subprocess.run(cmd + [url], check=True, capture_output=True, text=True).stdout
    data = json.loads(out)
    pct = data["latencyPercentiles"]
    codes = data.get("statusCodeDistribution", {})
    ok = sum(v for k, v in codes.items() if k.startswith("2"))
    total = sum(codes.values()) or 1
    return {
        "p50_ms": pct["p50"] * 1000,
        "p99_ms": pct["p99"] * 1000,
        "rps": data["summary"]["requestsPerSec"],
        "ok_ratio": ok / total,
        "errors": data.get("errorDistribution", {}),
    }


def start_sim(port):
    return subprocess.Popen([KEEL, "sim", "--listen", f"127.0.0.1:{port}", "--completion-tokens", "16"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_keel(port, sim_port, tmp, workers, name=None, store_extra="", extra=""):
    """keel on one model ("bench", served by the simulator as gpt-4o-mini)
    with one tenant and key; `store_extra` and `extra` add config lines."""
    name = name or str(workers)
    config = os.path.join(tmp, f"keel-{name}.toml")
    with open(config, "w") as f:
        f.write(f"""
[server]
listen = "127.0.0.1:{port}"
worker_threads = {workers}
[store]
data_dir = "{tmp}/data-{name}"
{store_extra}
[[providers]]
name = "sim"
base_url = "http://127.0.0.1:{sim_port}/v1"
max_idle_per_host = 1024
[[models]]
name = "bench"
[[models.deployments]]
provider = "sim"
model = "gpt-4o-mini"
input_per_mtok = 0.15
output_per_mtok = 0.60
[[tenants]]
id = "bench"
[[keys]]
tenant = "bench"
secret = "{KEY}"
{extra}
""")
    env = dict(os.environ, KEEL_LOG="warn")
    return subprocess.Popen([KEEL, "serve", "--config", config], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, f"keel-{name}.log"), "w"))


def start_litellm(port, sim_port, tmp):
    if not os.path.exists(os.path.join(VENV, "bin", "litellm")):
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
        subprocess.run([os.path.join(VENV, "bin", "pip"), "install", "-q", "litellm[proxy]"], check=True)
    config = os.path.join(tmp, "litellm.yaml")
    with open(config, "w") as f:
        f.write(f"""model_list:
  - model_name: bench
    litellm_params:
      model: openai/bench
      api_base: http://127.0.0.1:{sim_port}/v1
      api_key: sk-unused
""")
    env = dict(os.environ, LITELLM_LOG="ERROR", LITELLM_MASTER_KEY=LITELLM_KEY)
    return subprocess.Popen([os.path.join(VENV, "bin", "litellm"), "--config", config, "--port", str(port),
                             "--host", "127.0.0.1"], env=env, stdout=subprocess.DEVNULL,
                            stderr=open(os.path.join(tmp, "litellm.log"), "w"))


def stop_all(procs):
    """SIGTERM every process, then wait (killing any that hang)."""
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()


def rss_peak_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="shorter runs, for a smoke test")
    ap.add_argument("--no-litellm", action="store_true")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                    help="keel runtime worker threads to measure (server.worker_threads)")
    args = ap.parse_args()
    if not shutil.which("oha"):
        raise SystemExit("oha not found: cargo install oha")
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "keel", "-p", "keel-server",
                    "--example", "minimal_proxy", "--bin", "keel"], check=True, cwd=ROOT)
    dur = 4 if args.quick else 10
    n_c1 = 1000 if args.quick else 5000

    tmp = tempfile.mkdtemp(prefix="keel-bench-")
    sim_port, lite_port = free_port(), free_port()
    procs = []
    try:
        sim = start_sim(sim_port); procs.append(sim)
        wait_http(f"http://127.0.0.1:{sim_port}/v1/models", sim)
        direct = (f"http://127.0.0.1:{sim_port}/v1/chat/completions", None)
        litellm = None
        if not args.no_litellm:
            lite = start_litellm(lite_port, sim_port, tmp); procs.append(lite)
            wait_http(f"http://127.0.0.1:{lite_port}/health/liveliness", lite, deadline_s=180)
            litellm = (f"http://127.0.0.1:{lite_port}/v1/chat/completions", LITELLM_KEY)
            oha(litellm[0], LITELLM_KEY, n=500, conns=8)

        all_results = {"machine": {"cores": os.cpu_count(), "uname": " ".join(os.uname())}, "runs": {}}
        for workers in args.workers:
            keel_port = free_port()
            keel = start_keel(keel_port, sim_port, tmp, workers); procs.append(keel)
            wait_http(f"http://127.0.0.1:{keel_port}/healthz", keel)
            floor_port = free_port()
            floor = subprocess.Popen([FLOOR, f"127.0.0.1:{floor_port}", f"http://127.0.0.1:{sim_port}/v1", str(workers)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(floor)
            time.sleep(0.5)
            paths = {"direct": direct, "keel": (f"http://127.0.0.1:{keel_port}/v1/chat/completions", KEY),
                     "floor": (f"http://127.0.0.1:{floor_port}/v1/chat/completions", None)}
            if litellm and workers == args.workers[0]:
                paths["litellm"] = litellm
            results = measure(paths, dur, n_c1)
            results["keel_peak_rss_mb"] = rss_peak_mb(keel.pid)
            all_results["runs"][f"keel_{workers}_workers"] = results
            print(f"\n### keel with {workers} worker thread(s)")
            report(results)
            for p in (keel, floor):
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=30)
                procs.remove(p)

        os.makedirs(OUT, exist_ok=True)
        with open(os.path.join(OUT, "gateway_overhead.json"), "w") as f:
            json.dump(all_results, f, indent=2)
    finally:
        stop_all(procs)
        shutil.rmtree(tmp, ignore_errors=True)


def measure(paths, dur, n_c1):
    """Every load point for these paths; direct and keel back to back."""
    for url, auth in paths.values():
        oha(url, auth, n=500, conns=8)  # warm pools and caches

    results = {"concurrency_1": {}, "rates": {}, "sweep": {}}
    for name, (url, auth) in paths.items():
        results["concurrency_1"][name] = oha(url, auth, n=n_c1, conns=1)
        print("c1", name, results["concurrency_1"][name], flush=True)

    for rate in (1000, 2000):
        results["rates"][rate] = {}
        for name, (url, auth) in paths.items():
            if name == "litellm" and rate > 1000:
                continue  # measured once at 1000/s; beyond that it saturates
            results["rates"][rate][name] = oha(url, auth, duration=dur, rate=rate, conns=64)
            print(rate, name, results["rates"][rate][name], flush=True)

    best = None
    for rate in (500, 1000, 1500, 2000, 2500, 3000, 3500, 4000, 5000, 6000):
        d = oha(paths["direct"][0], None, duration=dur, rate=rate, conns=64)
        k = oha(paths["keel"][0], paths["keel"][1], duration=dur, rate=rate, conns=64)
        added = k["p99_ms"] - d["p99_ms"]
        results["sweep"][rate] = {"direct": d, "keel": k, "added_p99_ms": added}
        print("sweep", rate, f"added p99 {added:.3f} ms", "achieved", round(k["rps"]), flush=True)
        if added > 1.0 or k["ok_ratio"] < 1.0 or k["rps"] < 0.95 * rate:
            break
        best = rate
    results["highest_rate_p99_added_le_1ms"] = best
    return results


def report(r):
    def row(label, res):
        d = res["direct"]
        out = []
        for name in ("keel", "floor", "litellm"):
            if name in res:
                x = res[name]
                out.append(f"| {label} | {name} | {d['p50_ms']:.3f} | {x['p50_ms']:.3f} | {x['p50_ms'] - d['p50_ms']:+.3f} "
                           f"| {d['p99_ms']:.3f} | {x['p99_ms']:.3f} | {x['p99_ms'] - d['p99_ms']:+.3f} | {x['rps']:.0f} | {x['ok_ratio']:.3f} |")
        return out
    print("\n| load | path | direct p50 ms | path p50 ms | added p50 | direct p99 ms | path p99 ms | added p99 | achieved req/s | ok ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for line in row("concurrency 1", r["concurrency_1"]):
        print(line)
    for rate, res in r["rates"].items():
        for line in row(f"{rate} req/s", res):
            print(line)
    c1 = r["concurrency_1"]
    if "litellm" in c1:
        k = c1["keel"]["p50_ms"] - c1["direct"]["p50_ms"]
        l = c1["litellm"]["p50_ms"] - c1["direct"]["p50_ms"]
        print(f"\nLiteLLM adds {l:.3f} ms at p50 (concurrency 1), keel {k:.3f} ms: ratio {l / max(k, 1e-6):.0f}x")
    print(f"\nhighest rate with keel's added p99 <= 1 ms: {r['highest_rate_p99_added_le_1ms']} req/s")
    print(f"keel peak RSS: {r['keel_peak_rss_mb']:.1f} MB")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
