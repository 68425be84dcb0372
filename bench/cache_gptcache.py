#!/usr/bin/env python3
"""GPTCache (from PyPI) on the labelled pairs of bench/cache/, beside keel.

For each pair, a fresh GPTCache (its default SQLite + FAISS data manager
and its distance evaluation) stores an answer for question `a`, then is
asked question `b`: a paraphrase should be answered, a near miss must not
be. Questions are embedded with all-MiniLM-L6-v2, the model keel uses,
through the NumPy forward pass of scripts/reference_embeddings.py (the one
keel's own vectors are checked against), so both sides see the same
vectors and differ only in how they decide.

GPTCache runs twice: at its default `similarity_threshold` (0.8, which with
unit vectors and its L2 distance means cosine >= 0.6) and at the threshold
that means keel's cosine (`--keel-threshold`). keel's decisions come from
the records the `cache_eval` example wrote (`--keel`).

    cache_gptcache.py --pairs FILE --keel RECORDS --model DIR [--keel-threshold T]
"""

from __future__ import annotations

import argparse
import atexit
import json
import pathlib
import shutil
import sys
import tempfile
from collections import defaultdict

import numpy as np
from gptcache import Cache, Config
from gptcache.adapter.api import get, init_similar_cache, put
from gptcache.embedding.base import BaseEmbedding
from gptcache.processor.post import first
from safetensors.numpy import load_file
from tokenizers import Tokenizer

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "scripts"))
import reference_embeddings as ref  # noqa: E402


class MiniLM(BaseEmbedding):
    """all-MiniLM-L6-v2 for GPTCache, memoised per text."""

    def __init__(self, model: pathlib.Path):
        self.w = {k: v.astype(np.float32) for k, v in load_file(str(model / "model.safetensors")).items()}
        self.tok = Tokenizer.from_file(str(model / "tokenizer.json"))
        # The file pads to a fixed length; pads must not enter the mean.
        self.tok.no_padding()
        self.tok.enable_truncation(ref.MAX_TOKENS)
        self.memo: dict[str, np.ndarray] = {}

    def to_embeddings(self, data, **_kwargs):
        if data not in self.memo:
            self.memo[data] = ref.encode(self.w, self.tok.encode(data).ids).astype(np.float32)
        return self.memo[data]

    @property
    def dimension(self) -> int:
        return 384


# GPTCache writes each cache's index at exit; the directories go after.
SCRATCH = tempfile.mkdtemp(prefix="gptcache-eval-")
atexit.register(shutil.rmtree, SCRATCH, True)


def gptcache_hits(pairs, embedding: MiniLM, threshold: float) -> dict[str, bool]:
    """Whether GPTCache answers `b` from a cache holding only `a`, per pair."""
    hits = {}
    for p in pairs:
        cache = Cache()
        init_similar_cache(
            data_dir=tempfile.mkdtemp(dir=SCRATCH),
            cache_obj=cache,
            embedding=embedding,
            post_func=first,
            config=Config(similarity_threshold=threshold),
        )
        put(p["a"], "answer to a", cache_obj=cache)
        hits[p["id"]] = get(p["b"], cache_obj=cache) is not None
    return hits


def rates(pairs, hit) -> tuple[float, float]:
    """(paraphrase hit rate, near-miss false-hit rate) in percent."""
    counts = defaultdict(lambda: [0, 0])
    for p in pairs:
        c = counts[p["label"]]
        c[0] += 1
        c[1] += bool(hit(p))
    pct = lambda label: 100.0 * counts[label][1] / max(counts[label][0], 1)  # noqa: E731
    return pct("paraphrase"), pct("near_miss")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", required=True, type=pathlib.Path)
    parser.add_argument("--keel", required=True, type=pathlib.Path, help="records from cache_eval --out")
    parser.add_argument("--model", required=True, type=pathlib.Path)
    parser.add_argument("--keel-threshold", type=float, default=0.80)
    args = parser.parse_args()

    pairs = [json.loads(line) for line in args.pairs.read_text().splitlines() if line.strip()]
    keel = {r["id"]: r for r in map(json.loads, args.keel.read_text().splitlines()) if r}
    embedding = MiniLM(args.model)

    # GPTCache's rank is max_distance (4) minus the squared L2 distance,
    # 2 + 2 cos for unit vectors; it hits at rank >= 4 * threshold.
    matched = (2.0 + 2.0 * args.keel_threshold) / 4.0
    runs = {
        "GPTCache 0.1.44, default threshold 0.8 (cosine >= 0.60)": gptcache_hits(pairs, embedding, 0.8),
        f"GPTCache 0.1.44, threshold {matched:.3f} (cosine >= {args.keel_threshold:.2f})": gptcache_hits(
            pairs, embedding, matched
        ),
    }
    t = args.keel_threshold
    rows = [(name, rates(pairs, lambda p, h=hits: h[p["id"]])) for name, hits in runs.items()]
    rows.append((f"keel, cosine >= {t:.2f}, no guard", rates(pairs, lambda p: keel[p["id"]]["similarity"] >= t)))
    rows.append(
        (
            f"keel, cosine >= {t:.2f}, guard",
            rates(pairs, lambda p: keel[p["id"]]["similarity"] >= t and keel[p["id"]]["veto"] is None),
        )
    )
    n = defaultdict(int)
    for p in pairs:
        n[p["label"]] += 1
    print(f"\n{args.pairs.name}: {n['paraphrase']} paraphrases, {n['near_miss']} near misses")
    print("| system | paraphrase hits | near-miss false hits |")
    print("|---|---|---|")
    for name, (hits, false_hits) in rows:
        print(f"| {name} | {hits:.1f} % | {false_hits:.1f} % |")

    # The near misses each system served, by category, for the write-up.
    by = defaultdict(lambda: [0, 0, 0])
    default_hits = next(iter(runs.values()))
    for p in pairs:
        if p["label"] != "near_miss":
            continue
        r = keel[p["id"]]
        c = by[p["category"]]
        c[0] += 1
        c[1] += default_hits[p["id"]]
        c[2] += r["similarity"] >= t and r["veto"] is None
    print("\nnear misses served, by category (GPTCache default / keel with guard):")
    for category, (total, g, k) in sorted(by.items()):
        print(f"  {category:>12}: {g:>3} / {k:>3} of {total}")


if __name__ == "__main__":
    main()
