#!/usr/bin/env python3
"""The reference for bench/cache_lookup.sh: GPTCache 0.1.44 (its default
SQLite + FAISS store and distance evaluation) answering the same three kinds
of lookup as keel's `cache_lookup` example, with the same number of stored
entries, without embedding.

Entries are random 384-dimensional unit vectors; the "embedding" function
returns the vector prepared for each text, so what is timed is GPTCache's
own path: pre-processing, the FAISS search, the SQLite fetch and the
evaluation. GPTCache has no notion of a conversation's context, so it is
compared with keel's one-context case (every entry searched). Its threshold
is set to cosine >= 0.80, keel's default.

    cache_lookup_gptcache.py [--entries 10000,100000] [--queries 2000]
"""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import tempfile
import time

import numpy as np
from gptcache import Cache, Config
from gptcache.adapter.api import get, init_similar_cache
from gptcache.embedding.base import BaseEmbedding
from gptcache.manager import manager_factory
from gptcache.processor.post import first

DIM = 384
SCRATCH = tempfile.mkdtemp(prefix="gptcache-lookup-")
atexit.register(shutil.rmtree, SCRATCH, True)


class Prepared(BaseEmbedding):
    """Returns the vector prepared for each text."""

    def __init__(self):
        self.vectors: dict[str, np.ndarray] = {}

    def to_embeddings(self, data, **_kwargs):
        return self.vectors[data]

    @property
    def dimension(self) -> int:
        return DIM


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def run(entries: int, queries: int) -> dict:
    rng = np.random.default_rng(7)
    embedding = Prepared()
    stored = unit(rng, entries)
    questions = [f"How do I configure item {i} in my workspace?" for i in range(entries)]
    embedding.vectors.update(zip(questions, stored))
    cache = Cache()
    # Its default bound (1,000 entries, then LRU eviction) is raised to hold
    # every entry, as keel's is.
    data_manager = manager_factory(
        "sqlite,faiss",
        data_dir=tempfile.mkdtemp(dir=SCRATCH),
        vector_params={"dimension": DIM},
        eviction_params={"max_size": entries + 1},
    )
    # Cosine >= 0.80 for unit vectors: rank 4 - (2 - 2 cos) >= 4 * 0.9.
    init_similar_cache(
        cache_obj=cache,
        embedding=embedding,
        data_manager=data_manager,
        post_func=first,
        config=Config(similarity_threshold=0.9),
    )
    started = time.perf_counter()
    cache.import_data(questions, ["Open Settings, then Billing."] * entries)
    fill_per_s = entries / (time.perf_counter() - started)

    results = {}
    for kind in ("exact", "semantic", "miss"):
        times, hits = [], 0
        for _ in range(queries):
            i = int(rng.integers(entries))
            if kind == "exact":
                text = questions[i]
            elif kind == "semantic":
                text = f"how can i set up item {i} in my workspace #{len(embedding.vectors)}"
                noise = unit(rng, 1)[0]
                v = stored[i] + 0.48 * noise
                embedding.vectors[text] = (v / np.linalg.norm(v)).astype(np.float32)
            else:
                text = f"What is new in release {i}? #{len(embedding.vectors)}"
                embedding.vectors[text] = unit(rng, 1)[0]
            t = time.perf_counter()
            answer = get(text, cache_obj=cache)
            times.append((time.perf_counter() - t) * 1e6)
            hits += (answer is not None) == (kind != "miss") and kind != "miss"
        times.sort()
        pick = lambda p: times[round((len(times) - 1) * p)]  # noqa: E731
        results[kind] = {"p50_us": pick(0.5), "p99_us": pick(0.99), "hit_rate": hits / queries}
    return {"system": "GPTCache 0.1.44", "entries": entries, "contexts": 1,
            "fill_per_s": fill_per_s, "lookups": results}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", default="10000,100000")
    parser.add_argument("--queries", type=int, default=2000)
    args = parser.parse_args()
    for entries in map(int, args.entries.split(",")):
        print(json.dumps(run(entries, args.queries)), flush=True)


if __name__ == "__main__":
    main()
