#!/usr/bin/env bash
# Unfiltered vector search, keel against hnswlib, measured so that this
# machine's drift cannot decide the ratio: both systems build (each on its
# own core), then query at the same time for DURATION seconds, one pinned
# to each core; then again with the cores swapped. Per round the ratio is
# the geometric mean of the two arrangements, which cancels a difference
# between the cores; time-varying speed hits both systems at once.
#
# Sharing the machine costs both a little (memory bandwidth, last-level
# cache); the ratio, not the absolute rates, is what this measures.
#
#   bench/vector_race.sh            # ROUNDS=3 DURATION=20 by default
#
# Needs what bench/vector_search.sh sets up (venv and data); run that once
# first. Records: bench/out/vector_race.json.
set -euo pipefail
cd "$(dirname "$0")/.."

data="bench/data/vectors"
py="bench/.venv-vector/bin/python"
rounds="${ROUNDS:-3}"
duration="${DURATION:-20}"
if [ ! -x "$py" ] || [ ! -f "$data/meta.json" ]; then
  echo "run bench/vector_search.sh once first (venv and data)" >&2
  exit 2
fi
cargo build --release -q -p keel-vector --example vector_bench

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
records=()
for round in $(seq "$rounds"); do
  for keel_cpu in 0 1; do
    peer_cpu=$((1 - keel_cpu))
    dir="$work/r$round-k$keel_cpu"
    mkdir -p "$dir"
    taskset -c "$keel_cpu" target/release/examples/vector_bench --data "$data" \
      --race "$dir" --duration "$duration" --json "$dir/keel.json" >/dev/null &
    keel_pid=$!
    taskset -c "$peer_cpu" "$py" bench/vector_peers.py --data "$data" --systems hnswlib \
      --build-threads 1 --race "$dir" --duration "$duration" --json "$dir/hnswlib.json" >/dev/null 2>&1 &
    peer_pid=$!
    until [ -f "$dir/keel.ready" ] && [ -f "$dir/hnswlib.ready" ]; do
      if ! kill -0 "$keel_pid" "$peer_pid" 2>/dev/null; then
        echo "a racer exited before it was ready" >&2
        kill "$keel_pid" "$peer_pid" 2>/dev/null || true
        exit 1
      fi
      sleep 0.1
    done
    touch "$dir/go"
    wait "$keel_pid" "$peer_pid"
    records+=("$dir/keel.json" "$dir/hnswlib.json")
  done
done

"$py" - "$rounds" "$work" <<'PY'
import json, math, pathlib, statistics, sys
rounds, work = int(sys.argv[1]), pathlib.Path(sys.argv[2])
qps = lambda d, s: json.loads((d / f"{s}.json").read_text())[0]
print("| round | keel on core 0 | hnswlib on core 1 | keel on core 1 | hnswlib on core 0 | keel / hnswlib |")
print("|---:|---:|---:|---:|---:|---:|")
ratios, out = [], []
for r in range(1, rounds + 1):
    a, b = work / f"r{r}-k0", work / f"r{r}-k1"
    k0, h1, k1, h0 = qps(a, "keel"), qps(a, "hnswlib"), qps(b, "keel"), qps(b, "hnswlib")
    ratio = math.sqrt((k0["qps"] / h1["qps"]) * (k1["qps"] / h0["qps"]))
    ratios.append(ratio)
    out += [dict(x, round=r, cpu=c) for x, c in ((k0, 0), (h1, 1), (k1, 1), (h0, 0))]
    print(f"| {r} | {k0['qps']:.0f} | {h1['qps']:.0f} | {k1['qps']:.0f} | {h0['qps']:.0f} | {ratio:.2f}x |")
print(f"\nmedian keel / hnswlib: {statistics.median(ratios):.2f}x over {rounds} rounds; "
      f"recall@10 keel {k0['recall']:.4f}, hnswlib {h0['recall']:.4f}")
path = pathlib.Path("bench/out/vector_race.json")
path.parent.mkdir(parents=True, exist_ok=True)
path.write_text(json.dumps(out, indent=2) + "\n")
PY
