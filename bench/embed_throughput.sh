#!/usr/bin/env bash
# Local embedding speed, keel's candle model beside the NumPy reference in
# the same run. Needs the model (scripts/model.sh) and a venv with numpy,
# tokenizers and safetensors (created under bench/.venv-embed on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/model.sh
if [ ! -x bench/.venv-embed/bin/python ]; then
  python3 -m venv bench/.venv-embed
  bench/.venv-embed/bin/pip install --quiet numpy tokenizers safetensors
fi
cargo run --release -q -p keel-embed --example embed_throughput
bench/.venv-embed/bin/python bench/embed_reference.py
