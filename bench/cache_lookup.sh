#!/usr/bin/env bash
# How long one response-cache lookup takes with 10k and 100k entries stored
# (exact hit, semantic hit, miss; p50/p99, without embedding), keel beside
# GPTCache 0.1.44 in the same run. Each system runs alone, pinned to one
# core. Results and method: bench/RESULTS.md.
#
#   bench/cache_lookup.sh [--entries 10000,100000] [--queries 2000]
set -euo pipefail
cd "$(dirname "$0")/.."

entries=10000,100000
queries=2000
while [ $# -gt 0 ]; do
  case "$1" in
    --entries) entries="$2"; shift 2 ;;
    --queries) queries="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

cargo build --release --quiet -p keel-cache --example cache_lookup
venv=bench/.venv-cache
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check \
  gptcache==0.1.44 faiss-cpu sqlalchemy numpy

mkdir -p bench/out
out=bench/out/cache_lookup.jsonl
: > "$out"
echo "== keel"
taskset -c 0 target/release/examples/cache_lookup --entries "$entries" --contexts 1,1000 \
  --queries "$queries" | tee -a "$out"
echo "== GPTCache"
taskset -c 0 "$venv/bin/python" bench/cache_lookup_gptcache.py --entries "$entries" \
  --queries "$queries" 2> >(grep -v FileIOWriter >&2) | tee -a "$out"
