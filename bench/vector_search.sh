#!/usr/bin/env bash
# Vector search, keel beside its peers in one run: hnswlib, FAISS and
# pgvector (bench/vector_peers.py), then keel's own example, on the same
# seeded clustered data (bench/vector_data.py: 100k x 384, 1000 queries,
# exact top-10 with no filter and with 1 %, 10 %, 50 % filters). Prints one
# table: recall@10, QPS on one query thread, QPS as a ratio of hnswlib's,
# the fewest rows a query returned, and build seconds.
#
# Everything it needs is set up on the way: a venv under bench/.venv-vector
# (numpy, hnswlib, faiss-cpu, psycopg), the data in bench/data/vectors when
# it is not there yet, and the pgvector server (scripts/pgvector.sh).
# Arguments go to vector_peers.py (e.g. --systems hnswlib,faiss to leave
# pgvector out). KEEL_VECTOR_SKIP_KEEL=1 runs the peers only.
# Records: bench/out/vector_peers.json, /tmp/keel_vector.json, and the
# merged bench/out/vector_search.json.
#
# Every system runs pinned to one core (BENCH_CPU, default 0; empty to
# leave it unpinned): on this VM the two cores differ by up to 1.5x from
# minute to minute, and a search thread that lands on the slower one
# would decide the comparison. Builds therefore run on that core too.
set -euo pipefail
cd "$(dirname "$0")/.."

data="bench/data/vectors"
pin=()
if [ -n "${BENCH_CPU-0}" ] && command -v taskset >/dev/null; then
  pin=(taskset -c "${BENCH_CPU-0}")
fi
py="bench/.venv-vector/bin/python"
if [ ! -x "$py" ]; then
  python3 -m venv bench/.venv-vector
  bench/.venv-vector/bin/pip install --quiet --disable-pip-version-check \
    numpy hnswlib faiss-cpu "psycopg[binary]"
fi
if [ ! -f "$data/meta.json" ]; then
  "$py" bench/vector_data.py --out "$data"
fi

# The pgvector server, unless the arguments leave pgvector out.
url_args=()
if [[ " $* " != *" --systems "* || " $* " == *pgvector* ]]; then
  url_args=(--url "$(scripts/pgvector.sh | tail -n1)")
fi
"${pin[@]}" "$py" bench/vector_peers.py --data "$data" --json bench/out/vector_peers.json "${url_args[@]}" "$@" >/dev/null

results=(bench/out/vector_peers.json)
if [ "${KEEL_VECTOR_SKIP_KEEL:-}" != 1 ]; then
  # --sweep also times exact scans against filtered walks (the planner's
  # crossover); its records are printed, not merged into the table.
  cargo build --release -q -p keel-vector --example vector_bench
  "${pin[@]}" target/release/examples/vector_bench --data "$data" --json /tmp/keel_vector.json --sweep
  results+=(/tmp/keel_vector.json)
fi
echo
echo "== vector search: $(tr -d '\n ' <"$data/meta.json")"
"$py" bench/vector_peers.py --merge "${results[@]}" --json bench/out/vector_search.json
