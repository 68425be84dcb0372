#!/usr/bin/env python3
"""Reference vectors for keel's local embedder, from an independent forward
pass of all-MiniLM-L6-v2 written here in NumPy (BERT encoder, mean pooling,
L2 normalisation) with the Python `tokenizers` package.

keel-embed's test checks its candle implementation against these vectors
(cosine >= 0.999). Run once and commit the output; re-run only if the model
or the texts change:

    python3 -m venv /tmp/ref && /tmp/ref/bin/pip install numpy tokenizers safetensors
    /tmp/ref/bin/python scripts/reference_embeddings.py [MODEL_DIR]
"""

import json
import math
import pathlib
import sys

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODEL = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / ".keel/models/all-MiniLM-L6-v2"
OUT = ROOT / "crates/keel-embed/tests/data/minilm_reference.json"

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "How do I reset my password?",
    "I forgot my login credentials, how can I recover my account?",
    "Quarterly revenue grew 12% driven by enterprise subscriptions.",
    "Le chat dort sur le canapé.",
    "def add(a, b): return a + b",
    "A",
    "Kubernetes pods are restarting with CrashLoopBackOff after the upgrade; "
    "the liveness probe times out because the database migration runs at startup "
    "and holds a lock for several minutes.",
]

MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model
HEADS = 12
EPS = 1e-12


def layer_norm(x, w, b):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + EPS) * w + b


def gelu(x):
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def encode(w, ids):
    n = len(ids)
    x = (w["embeddings.word_embeddings.weight"][ids]
         + w["embeddings.position_embeddings.weight"][:n]
         + w["embeddings.token_type_embeddings.weight"][0])
    x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
    hidden = x.shape[-1]
    head = hidden // HEADS
    for i in range(6):
        p = f"encoder.layer.{i}."
        lin = lambda t, name: t @ w[p + name + ".weight"].T + w[p + name + ".bias"]
        q = lin(x, "attention.self.query").reshape(n, HEADS, head).transpose(1, 0, 2)
        k = lin(x, "attention.self.key").reshape(n, HEADS, head).transpose(1, 0, 2)
        v = lin(x, "attention.self.value").reshape(n, HEADS, head).transpose(1, 0, 2)
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(head)
        scores -= scores.max(-1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(-1, keepdims=True)
        ctx = (probs @ v).transpose(1, 0, 2).reshape(n, hidden)
        x = layer_norm(lin(ctx, "attention.output.dense") + x,
                       w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"])
        inner = gelu(lin(x, "intermediate.dense"))
        x = layer_norm(lin(inner, "output.dense") + x,
                       w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"])
    pooled = x.mean(0)  # one text at a time: every token is real, no padding
    return pooled / np.linalg.norm(pooled)


def main():
    weights = {k: v.astype(np.float64) for k, v in load_file(str(MODEL / "model.safetensors")).items()}
    tokenizer = Tokenizer.from_file(str(MODEL / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(MAX_TOKENS)
    out = []
    for text in TEXTS:
        ids = tokenizer.encode(text).ids
        vector = encode(weights, ids)
        out.append({"text": text, "tokens": len(ids), "vector": [round(float(v), 7) for v in vector]})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"model": "sentence-transformers/all-MiniLM-L6-v2",
                               "method": "scripts/reference_embeddings.py (NumPy float64 forward pass)",
                               "texts": out}, indent=1) + "\n")
    print(f"wrote {len(out)} vectors to {OUT}")


if __name__ == "__main__":
    main()
