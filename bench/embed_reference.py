#!/usr/bin/env python3
"""The reference for bench/embed_throughput.sh: the NumPy forward pass of
scripts/reference_embeddings.py, in float32 and batched with an attention
mask, timed on the same texts and batch sizes as keel's example."""

import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "scripts"))
import reference_embeddings as ref  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

SHORT = "How do I reset my password on the billing portal?"
CHUNK = ("Kubernetes pods are restarting with CrashLoopBackOff after the upgrade. "
         "The liveness probe times out because the database migration runs at startup and holds a "
         "lock for several minutes. Moving the migration into an init container, or raising the "
         "probe's initial delay, stops the restarts. The readiness probe should keep failing until "
         "the migration is done so that no traffic reaches a pod that cannot serve it yet, and the "
         "deployment's progress deadline must allow for the longest migration seen in production.")


def main():
    model = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ref.MODEL
    w = {k: v.astype(np.float32) for k, v in load_file(str(model / "model.safetensors")).items()}
    tok = Tokenizer.from_file(str(model / "tokenizer.json"))
    tok.enable_truncation(ref.MAX_TOKENS)
    ref.gelu = lambda x: 0.5 * x * (1.0 + np.tanh(0.7978845608 * (x + 0.044715 * x ** 3)))  # vectorised
    ids = tok.encode(SHORT).ids
    for _ in range(10):
        ref.encode(w, ids)
    lat = []
    for _ in range(100):
        start = time.perf_counter()
        ref.encode(w, ids)
        lat.append((time.perf_counter() - start) * 1000)
    lat.sort()
    print(f"NumPy reference: one short text: p50 {lat[50]:.2f} ms, p90 {lat[90]:.2f} ms")
    chunk_ids = tok.encode(CHUNK).ids
    for batch in (1, 8, 32):
        rounds = max(256 // batch // 4, 2)
        start = time.perf_counter()
        for _ in range(rounds * batch):
            ref.encode(w, chunk_ids)
        rate = rounds * batch / (time.perf_counter() - start)
        print(f"NumPy reference: ~110-token chunks, batch {batch:>2}: {rate:.1f} texts/s (one at a time)")


if __name__ == "__main__":
    main()
