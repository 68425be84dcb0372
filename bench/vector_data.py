#!/usr/bin/env python3
"""The data set for bench/vector_search.sh, made here and the same on every
run with the same arguments (seeded NumPy PCG64).

N base vectors and Q query vectors of dimension DIM, each one a Gaussian
cluster centre (one of --clusters, picked uniformly) plus Gaussian noise,
normalised to unit length, so cosine similarity is the inner product. The
queries are fresh draws, never base points. Every base point has an integer
attribute `bucket`, uniform in 0..99, so `bucket < 1` keeps about 1 % of the
points, `bucket < 10` about 10 % and `bucket < 50` about 50 %.

Exact top-K ground truth by inner product (float64 over the stored float32
vectors), with no filter and for each of the three filters.

Written to --out (default bench/data/vectors), all little-endian, row-major:

  base.f32      N*DIM float32
  queries.f32   Q*DIM float32
  buckets.u8    N uint8
  gt_all.u32    Q*K uint32, best first (no filter)
  gt_1.u32      Q*K uint32, among points with bucket < 1
  gt_10.u32     Q*K uint32, among points with bucket < 10
  gt_50.u32     Q*K uint32, among points with bucket < 50
  meta.json     {n, q, dim, k, seed, clusters, noise, filters}

A ground-truth row with fewer than K points that pass its filter (tiny N
only) is padded with 0xFFFFFFFF.

Usage: python3 bench/vector_data.py [--n 100000] [--q 1000] [--dim 384] [--out DIR]
"""

import argparse
import json
import pathlib
import time

import numpy as np

FILTERS = (1, 10, 50)  # bucket < s
PAD = np.uint32(0xFFFFFFFF)


def clustered(rng, centres, count, noise):
    """count unit vectors, each a random centre plus N(0, noise^2) per coordinate."""
    dim = centres.shape[1]
    out = np.empty((count, dim), dtype=np.float32)
    step = 20_000
    for start in range(0, count, step):
        m = min(step, count - start)
        pick = rng.integers(0, len(centres), m)
        x = centres[pick] + rng.standard_normal((m, dim)) * noise
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[start:start + m] = x
    return out


def top_k(base64, queries64, k, allowed=None):
    """Exact top-k indices by inner product, best first; allowed is a bool mask."""
    q = len(queries64)
    gt = np.full((q, k), PAD, dtype=np.uint32)
    if allowed is not None:
        ids = np.flatnonzero(allowed)
        base64 = base64[ids]
    else:
        ids = np.arange(len(base64))
    kk = min(k, len(ids))
    if kk == 0:
        return gt
    step = 100
    for start in range(0, q, step):
        scores = queries64[start:start + step] @ base64.T
        part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        rows = np.arange(len(part))[:, None]
        order = np.argsort(-scores[rows, part], axis=1, kind="stable")
        gt[start:start + len(part), :kk] = ids[part[rows, order]]
    return gt


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="base vectors")
    ap.add_argument("--q", type=int, default=1000, help="query vectors")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--k", type=int, default=10, help="ground-truth depth")
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--noise", type=float, default=0.03,
                    help="noise std per coordinate (0.03 at dim 384: a point's cosine to its centre is about 0.86)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", default=str(pathlib.Path(__file__).resolve().parent / "data" / "vectors"))
    args = ap.parse_args()

    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    centres = rng.standard_normal((args.clusters, args.dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    base = clustered(rng, centres, args.n, args.noise)
    queries = clustered(rng, centres, args.q, args.noise)
    buckets = rng.integers(0, 100, args.n).astype(np.uint8)

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base.astype("<f4").tofile(out / "base.f32")
    queries.astype("<f4").tofile(out / "queries.f32")
    buckets.tofile(out / "buckets.u8")

    base64 = base.astype(np.float64)
    queries64 = queries.astype(np.float64)
    top_k(base64, queries64, args.k).astype("<u4").tofile(out / "gt_all.u32")
    for s in FILTERS:
        top_k(base64, queries64, args.k, buckets < s).astype("<u4").tofile(out / f"gt_{s}.u32")

    meta = {"n": args.n, "q": args.q, "dim": args.dim, "k": args.k, "seed": args.seed,
            "clusters": args.clusters, "noise": args.noise, "filters": list(FILTERS)}
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    kept = ", ".join(f"bucket<{s}: {int((buckets < s).sum())}" for s in FILTERS)
    print(f"vector data: {args.n} x {args.dim} base, {args.q} queries, {kept}; "
          f"written to {out} in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
