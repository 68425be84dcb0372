#!/usr/bin/env bash
# How often the semantic cache serves a paraphrase and how often it serves a
# wrong answer, on the labelled pairs in bench/cache/, with GPTCache (PyPI)
# on the same pairs and the same embedding model in the same run.
#
#   bench/cache_eval.sh [--threshold T]
#
# The threshold is chosen on pairs_dev.jsonl (the sweep printed first) and
# reported on pairs_test.jsonl, which played no part in choosing it or in
# designing the guard. Results and method: bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."

threshold=""
if [ "${1:-}" = "--threshold" ]; then
  threshold="$2"
fi

scripts/model.sh >/dev/null
model="$PWD/.keel/models/all-MiniLM-L6-v2"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

cargo build --release --quiet -p keel-cache --example cache_eval
eval_bin=target/release/examples/cache_eval
args=(--model "$model")
if [ -n "$threshold" ]; then
  args+=(--threshold "$threshold")
fi

venv=bench/.venv-cache
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check \
  gptcache==0.1.44 faiss-cpu sqlalchemy numpy safetensors tokenizers

for set in dev test; do
  echo "== keel on pairs_$set.jsonl"
  "$eval_bin" --pairs "bench/cache/pairs_$set.jsonl" --out "$out/keel_$set.jsonl" "${args[@]}"
  echo "== GPTCache beside keel on pairs_$set.jsonl"
  "$venv/bin/python" bench/cache_gptcache.py --pairs "bench/cache/pairs_$set.jsonl" \
    --keel "$out/keel_$set.jsonl" --model "$model" --keel-threshold "${threshold:-0.80}"
done
