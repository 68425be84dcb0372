#!/usr/bin/env bash
# The demo: fetches the local embedding model if it is missing (the example
# config serves it), then builds keel and runs `keel demo`, which starts the
# simulator and the gateway in one process on the embedded store. Arguments
# pass through: scripts/demo.sh --requests 500
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/model.sh
exec cargo run --quiet -p keel -- demo "$@"
