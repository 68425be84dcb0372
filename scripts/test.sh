#!/usr/bin/env bash
# The whole test suite: formatting and lints, every Rust test (the store
# suites run against both SQLite and PostgreSQL, the limits suites against
# Redis, the vector suites embedded and on PostgreSQL with pgvector, the
# local embedder against reference vectors, so the model is fetched and the
# pgvector server started first), then the end-to-end suite,
# which drives a real `keel serve` and `keel sim` with the official `openai`
# Python client. Everything it needs is installed on the way.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh
scripts/model.sh
KEEL_TEST_PGVECTOR_URL="$(scripts/pgvector.sh | tail -n 1)"
export KEEL_TEST_PGVECTOR_URL

echo "== format and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== Rust tests"
cargo test --workspace

echo "== end-to-end tests (openai Python client against keel and keel sim)"
cargo build -p keel --quiet
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r tests/e2e/requirements.txt
KEEL_BIN="$PWD/target/debug/keel" .venv/bin/python -m pytest tests/e2e -q
