#!/usr/bin/env bash
# keel's orchestrator against DBOS (from PyPI) on the same PostgreSQL, and
# keel on SQLite: durable steps per second (500 workflows of 10 chained
# steps, timed from the first enqueue to the last finish) and
# enqueue-to-start latency (one-step workflows enqueued at a fixed rate).
# Steps do nothing but be recorded. Results are printed as JSON lines;
# bench/RESULTS.md has the method and a run's figures.
#
#   bench/flow_bench.sh [RATE]   (default 200 workflows a second)
set -euo pipefail
cd "$(dirname "$0")/.."

RATE="${1:-200}"
PG="${KEEL_BENCH_PG:-postgres://postgres@127.0.0.1:5432}"

if [ ! -x bench/.venv-dbos/bin/python ]; then
    python3 -m venv bench/.venv-dbos
    bench/.venv-dbos/bin/pip install -q dbos==3.4.0
fi
cargo build --release -q -p keel-flow --example flow_bench
keel=target/release/examples/flow_bench

fresh() { # a new, empty database on the server
    psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $1" -c "CREATE DATABASE $1" >/dev/null
}
sqlite() { rm -rf bench/out/flow && mkdir -p bench/out/flow && echo "sqlite://bench/out/flow/keel.db"; }

echo "== throughput: 500 workflows x 10 steps"
"$keel" throughput "$(sqlite)" 500 10 1
fresh keel_flow_bench && "$keel" throughput "$PG/keel_flow_bench" 500 10 2
psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS dbos_bench" >/dev/null
bench/.venv-dbos/bin/python bench/flow_dbos.py throughput "${PG/postgres:/postgresql:}/dbos_bench" 500 10

echo "== enqueue-to-start at $RATE workflows a second for 5 s"
"$keel" latency "$(sqlite)" "$RATE" 5 1
fresh keel_flow_bench && "$keel" latency "$PG/keel_flow_bench" "$RATE" 5 2
psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS dbos_bench" >/dev/null
bench/.venv-dbos/bin/python bench/flow_dbos.py latency "${PG/postgres:/postgresql:}/dbos_bench" "$RATE" 5
