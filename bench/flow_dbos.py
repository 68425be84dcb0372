"""DBOS (from PyPI) doing what bench/flow_bench.sh has keel do, on the same
PostgreSQL: workflows of chained steps that do nothing but be checkpointed.

    flow_dbos.py throughput DATABASE_URL RUNS STEPS
    flow_dbos.py latency DATABASE_URL RATE SECONDS

Throughput: wall time from the first enqueue until every workflow finished,
as steps per second. Latency: one-step workflows enqueued at RATE per
second; enqueue-to-start is the time from the enqueue call to the step's
function starting. Prints one JSON line like keel's flow_bench.
"""

import json
import sys
import threading
import time

from dbos import DBOS, DBOSConfig

mode, url = sys.argv[1], sys.argv[2]
DBOS(config=DBOSConfig(name="keel_bench", system_database_url=url, log_level="ERROR",
                       max_executor_threads=64))
started = {}
lock = threading.Lock()


@DBOS.step()
def step(n, i):
    if i == 0:
        with lock:
            started.setdefault(n, time.perf_counter())
    return i


@DBOS.workflow()
def chain(n, steps):
    for i in range(steps):
        step(n, i)
    return n


DBOS.launch()
queue = DBOS.register_queue("bench", polling_interval_sec=0.01)

if mode == "throughput":
    runs, steps = int(sys.argv[3]), int(sys.argv[4])
    t0 = time.perf_counter()
    handles = [queue.enqueue(chain, n, steps) for n in range(runs)]
    for h in handles:
        h.get_result()
    elapsed = time.perf_counter() - t0
    print(json.dumps({"mode": "throughput", "system": "dbos", "runs": runs, "steps_per_run": steps,
                      "seconds": round(elapsed, 3), "steps_per_sec": round(runs * steps / elapsed, 1)}))
else:
    rate, seconds = float(sys.argv[3]), float(sys.argv[4])
    total = int(rate * seconds)
    enqueued, handles = {}, []
    t0 = time.perf_counter()
    for n in range(total):
        due = t0 + n / rate
        while (now := time.perf_counter()) < due:
            time.sleep(min(due - now, 0.001))
        enqueued[n] = time.perf_counter()
        handles.append(queue.enqueue(chain, n, 1))
    for h in handles:
        h.get_result()
    waits = sorted((started[n] - enqueued[n]) * 1000 for n in enqueued if n in started)
    at = lambda q: waits[int((len(waits) - 1) * q)]
    print(json.dumps({"mode": "latency", "system": "dbos", "rate": rate, "runs": len(waits),
                      "p50_ms": round(at(0.5), 2), "p99_ms": round(at(0.99), 2),
                      "max_ms": round(at(1.0), 2)}))
DBOS.destroy()
