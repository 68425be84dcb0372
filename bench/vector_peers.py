#!/usr/bin/env python3
"""The peers for bench/vector_search.sh: hnswlib, FAISS and pgvector on the
data set of bench/vector_data.py, measured the way keel's example
(`cargo run --release -p keel-vector --example vector_bench`) measures keel.

Each system builds an HNSW index over the base vectors (inner product, M=16,
ef_construction=128, with --build-threads threads) and answers every query
with k=10 and ef_search=64, one query at a time on one thread, in four cases:
no filter, and `bucket < 1`, `< 10`, `< 50` (about 1 %, 10 %, 50 % of the
points kept). Per system and case:

  recall     mean over queries of |returned ∩ truth| / |truth| (top 10)
  qps        queries / seconds for the timed loop over all Q queries (after
             a warm-up of the first 50, not counted)
  min_rows   fewest rows any query returned (below 10: the filter starved it)
  build_s    seconds to build the index (pgvector: CREATE INDEX, the COPY is
             in params)

How each system filters:
  hnswlib   knn_query(filter=callable), a Python call per visited node
  faiss     SearchParametersHNSW with an IDSelectorBitmap
  pgvector  WHERE bucket < s ORDER BY embedding <#> $1 LIMIT 10, with
            hnsw.iterative_scan = relaxed_order and a btree on bucket, so the
            planner may also choose the btree and an exact sort (see params.plan)

Usage:
  python3 bench/vector_peers.py [--data bench/data/vectors] [--systems hnswlib,faiss,pgvector]
      [--url postgres://postgres@127.0.0.1:5433/keel] [--json out.json]
  python3 bench/vector_peers.py --merge a.json b.json ...   # one table, QPS ratio vs hnswlib

Needs numpy, hnswlib, faiss-cpu, psycopg[binary] (bench/.venv-vector) and,
for pgvector, the server of scripts/pgvector.sh.
"""

import argparse
import json
import pathlib
import struct
import sys
import time

import numpy as np

CASES = (("unfiltered", None), ("1%", 1), ("10%", 10), ("50%", 50))
K = 10
WARMUP = 50
# Timed passes over the queries; the reported rate is the median pass.
PASSES = 5
PAD = 0xFFFFFFFF
DEFAULT_DATA = pathlib.Path(__file__).resolve().parent / "data" / "vectors"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class Data:
    def __init__(self, path):
        path = pathlib.Path(path)
        self.meta = json.loads((path / "meta.json").read_text())
        self.n, self.q, self.dim, self.k = (self.meta[x] for x in ("n", "q", "dim", "k"))
        self.base = np.fromfile(path / "base.f32", dtype="<f4").reshape(self.n, self.dim)
        self.queries = np.fromfile(path / "queries.f32", dtype="<f4").reshape(self.q, self.dim)
        self.buckets = np.fromfile(path / "buckets.u8", dtype=np.uint8)
        assert len(self.buckets) == self.n
        self.gt = {}
        for name, s in CASES:
            f = path / ("gt_all.u32" if s is None else f"gt_{s}.u32")
            self.gt[name] = np.fromfile(f, dtype="<u4").reshape(self.q, self.k)[:, :K]


def recall(gt, results):
    total, counted = 0.0, 0
    for truth, got in zip(gt, results):
        truth = set(int(x) for x in truth if x != PAD)
        if truth:
            total += len(truth & set(int(x) for x in got)) / len(truth)
            counted += 1
    return total / max(counted, 1)


# ---------------------------------------------------------------- hnswlib

class Hnswlib:
    name = "hnswlib"

    def __init__(self, data, args):
        self.data, self.args = data, args

    def build(self):
        import hnswlib
        a = self.args
        t0 = time.perf_counter()
        self.index = hnswlib.Index(space="ip", dim=self.data.dim)
        self.index.init_index(max_elements=self.data.n, M=a.m, ef_construction=a.ef_construction, random_seed=100)
        self.index.add_items(self.data.base, np.arange(self.data.n), num_threads=a.build_threads)
        build_s = time.perf_counter() - t0
        self.index.set_ef(a.ef)
        return build_s, {"M": a.m, "ef_construction": a.ef_construction, "ef_search": a.ef,
                         "build_threads": a.build_threads, "filter": "knn_query(filter=callable)"}

    def prepare(self, s):
        # A list lookup is the cheapest callable hnswlib can call per node.
        self.filter = None if s is None else (self.data.buckets < s).tolist().__getitem__
        return {}

    def search(self, qv):
        try:
            labels, _ = self.index.knn_query(qv, k=K, num_threads=1, filter=self.filter)
            return labels[0]
        except RuntimeError:
            # hnswlib raises when it finds fewer than k; ask for fewer.
            for k in range(K - 1, 0, -1):
                try:
                    labels, _ = self.index.knn_query(qv, k=k, num_threads=1, filter=self.filter)
                    return labels[0]
                except RuntimeError:
                    pass
            return []

    def close(self):
        pass


# ---------------------------------------------------------------- FAISS

class Faiss:
    name = "faiss"

    def __init__(self, data, args):
        self.data, self.args = data, args

    def build(self):
        import faiss
        self.faiss = faiss
        a = self.args
        faiss.omp_set_num_threads(a.build_threads)
        t0 = time.perf_counter()
        self.index = faiss.IndexHNSWFlat(self.data.dim, a.m, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = a.ef_construction
        self.index.add(self.data.base)
        build_s = time.perf_counter() - t0
        faiss.omp_set_num_threads(1)
        return build_s, {"M": a.m, "ef_construction": a.ef_construction, "ef_search": a.ef,
                         "build_threads": a.build_threads, "filter": "SearchParametersHNSW + IDSelectorBitmap",
                         "version": faiss.__version__}

    def prepare(self, s):
        faiss = self.faiss
        if s is None:
            self.params = faiss.SearchParametersHNSW(efSearch=self.args.ef)
        else:
            # Keep the bitmap alive as long as the selector that points into it.
            self.bitmap = np.packbits(self.data.buckets < s, bitorder="little")
            self.sel = faiss.IDSelectorBitmap(self.data.n, faiss.swig_ptr(self.bitmap))
            self.params = faiss.SearchParametersHNSW(efSearch=self.args.ef, sel=self.sel)
        return {}

    def search(self, qv):
        _, labels = self.index.search(qv, K, params=self.params)
        return labels[0][labels[0] >= 0]

    def close(self):
        pass


# ---------------------------------------------------------------- pgvector

class Pgvector:
    name = "pgvector"
    table = "keel_bench_vectors"

    def __init__(self, data, args):
        self.data, self.args = data, args

    def copy_in(self, cur):
        """Binary COPY, the rows laid out by NumPy (pgvector's wire format:
        int16 dim, int16 unused, dim float4, all big-endian)."""
        d = self.data
        row = np.dtype([("nf", ">i2"), ("l1", ">i4"), ("id", ">i4"), ("l2", ">i4"), ("bucket", ">i4"),
                        ("l3", ">i4"), ("dim", ">i2"), ("unused", ">i2"), ("v", ">f4", (d.dim,))])
        with cur.copy(f"COPY {self.table} (id, bucket, embedding) FROM STDIN (FORMAT BINARY)") as cp:
            cp.write(b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0))
            step = 10_000
            for start in range(0, d.n, step):
                m = min(step, d.n - start)
                rows = np.zeros(m, dtype=row)
                rows["nf"], rows["l1"], rows["l2"], rows["l3"] = 3, 4, 4, 4 + 4 * d.dim
                rows["id"] = np.arange(start, start + m)
                rows["bucket"] = d.buckets[start:start + m]
                rows["dim"] = d.dim
                rows["v"] = d.base[start:start + m]
                cp.write(rows.tobytes())
            cp.write(struct.pack(">h", -1))

    def build(self):
        import psycopg
        from psycopg.adapt import Dumper
        from psycopg.pq import Format
        from psycopg.types import TypeInfo

        a = self.args
        self.conn = psycopg.connect(a.url, autocommit=True)
        info = TypeInfo.fetch(self.conn, "vector")
        if info is None:
            raise SystemExit(f"pgvector: no `vector` type in {a.url} (CREATE EXTENSION vector)")

        class VectorDumper(Dumper):
            format = Format.BINARY
            oid = info.oid

            def dump(self, obj):
                return struct.pack(">HH", obj.shape[0], 0) + obj.astype(">f4", copy=False).tobytes()

        self.conn.adapters.register_dumper(np.ndarray, VectorDumper)
        cur = self.conn.cursor()
        version = cur.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[0]
        cur.execute(f"DROP TABLE IF EXISTS {self.table}")
        cur.execute(f"CREATE TABLE {self.table} (id int, bucket int, embedding vector({self.data.dim}))")
        t0 = time.perf_counter()
        self.copy_in(cur)
        cur.execute(f"VACUUM ANALYZE {self.table}")
        copy_s = time.perf_counter() - t0
        # Room for the whole graph in memory, else pgvector builds on disk.
        cur.execute("SET maintenance_work_mem = '4GB'")
        cur.execute(f"SET max_parallel_maintenance_workers = {max(a.build_threads - 1, 0)}")
        t0 = time.perf_counter()
        cur.execute(f"CREATE INDEX {self.table}_hnsw ON {self.table} USING hnsw (embedding vector_ip_ops) "
                    f"WITH (m = {a.m}, ef_construction = {a.ef_construction})")
        build_s = time.perf_counter() - t0
        cur.execute(f"CREATE INDEX {self.table}_bucket ON {self.table} (bucket)")
        cur.execute(f"ANALYZE {self.table}")
        cur.execute(f"SET hnsw.ef_search = {a.ef}")
        self.cur = cur
        return build_s, {"M": a.m, "ef_construction": a.ef_construction, "ef_search": a.ef,
                         "build_threads": a.build_threads, "copy_s": round(copy_s, 2), "version": version,
                         "filter": "WHERE bucket < s, hnsw.iterative_scan = relaxed_order, btree on bucket"}

    def prepare(self, s):
        where = "" if s is None else f"WHERE bucket < {s} "
        self.cur.execute("SET hnsw.iterative_scan = " + ("off" if s is None else "relaxed_order"))
        self.sql = f"SELECT id FROM {self.table} {where}ORDER BY embedding <#> %b LIMIT {K}"
        plan = self.cur.execute("EXPLAIN (FORMAT JSON) " + self.sql, (self.data.queries[0],)).fetchone()[0]
        return {"plan": " > ".join(plan_nodes(plan[0]["Plan"]))}

    def search(self, qv):
        return [r[0] for r in self.cur.execute(self.sql, (qv,), prepare=True).fetchall()]

    def close(self):
        self.conn.close()


def plan_nodes(node):
    name = node["Node Type"] + (f" ({node['Index Name']})" if "Index Name" in node else "")
    out = [name]
    for child in node.get("Plans", []):
        out += plan_nodes(child)
    return out


SYSTEMS = {"hnswlib": Hnswlib, "faiss": Faiss, "pgvector": Pgvector}


def run(system, data, cases):
    log(f"{system.name}: building")
    build_s, params = system.build()
    log(f"{system.name}: built in {build_s:.1f} s")
    records = []
    for case, s in CASES:
        if case not in cases:
            continue
        extra = system.prepare(s)
        for qv in data.queries[:WARMUP]:
            system.search(qv[None, :] if system.name != "pgvector" else qv)
        shaped = [qv[None, :] for qv in data.queries] if system.name != "pgvector" else list(data.queries)
        rates = []
        for _ in range(PASSES):
            results = []
            t0 = time.perf_counter()
            for qv in shaped:
                results.append(system.search(qv))
            rates.append(data.q / (time.perf_counter() - t0))
        qps = sorted(rates)[PASSES // 2]
        rec = {"system": system.name, "case": case, "recall": round(recall(data.gt[case], results), 4),
               "qps": round(qps, 1), "min_rows": int(min(len(r) for r in results)),
               "build_s": round(build_s, 2), "params": {**params, **extra}}
        log(f"{system.name} {case}: recall {rec['recall']:.4f}, {rec['qps']:.0f} QPS, min rows {rec['min_rows']}"
            + (f", plan {extra['plan']}" if "plan" in extra else ""))
        records.append(rec)
    system.close()
    return records


def race(system, data, args):
    """Unfiltered search for a fixed time, started together with another
    process: builds, writes RACE/<name>.ready, waits for RACE/go, then
    queries round the query set for --duration seconds
    (bench/vector_race.sh runs two systems at once on opposite cores)."""
    log(f"{system.name}: building for a race")
    build_s, params = system.build()
    system.prepare(None)
    results = [system.search(qv[None, :]) for qv in data.queries]
    race_dir = pathlib.Path(args.race)
    (race_dir / f"{system.name}.ready").write_text("")
    while not (race_dir / "go").exists():
        time.sleep(0.01)
    shaped = [qv[None, :] for qv in data.queries]
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < args.duration:
        for qv in shaped:
            system.search(qv)
        done += len(shaped)
    qps = done / (time.perf_counter() - t0)
    system.close()
    return [{"system": system.name, "case": "unfiltered", "recall": round(recall(data.gt["unfiltered"], results), 4),
             "qps": round(qps, 1), "min_rows": int(min(len(r) for r in results)), "build_s": round(build_s, 2),
             "params": params}]


# ---------------------------------------------------------------- report

CASE_ALIASES = {"unfiltered": "unfiltered", "all": "unfiltered", "none": "unfiltered", "gt_all": "unfiltered",
                "1%": "1%", "1": "1%", "1pct": "1%", "gt_1": "1%",
                "10%": "10%", "10": "10%", "10pct": "10%", "gt_10": "10%",
                "50%": "50%", "50": "50%", "50pct": "50%", "gt_50": "50%"}
CASE_ORDER = [c for c, _ in CASES]


def table(records):
    """A markdown table, cases in order, systems in order of appearance, with
    QPS as a ratio of hnswlib's in the same case where hnswlib ran."""
    for r in records:
        r["case"] = CASE_ALIASES.get(str(r["case"]).strip().lower(), r["case"])
    systems = list(dict.fromkeys(r["system"] for r in records))
    base = {r["case"]: r["qps"] for r in records if r["system"] == "hnswlib"}
    lines = ["| system | case | recall@10 | QPS | vs hnswlib | min rows | build s |",
             "|---|---|---:|---:|---:|---:|---:|"]
    order = {c: i for i, c in enumerate(CASE_ORDER)}
    def num(r, key, fmt):
        return format(r[key], fmt) if isinstance(r.get(key), (int, float)) else "-"

    for r in sorted(records, key=lambda r: (order.get(r["case"], 99), systems.index(r["system"]))):
        ratio = f"{r['qps'] / base[r['case']]:.2f}x" if base.get(r["case"]) and num(r, "qps", "") != "-" else "-"
        lines.append(f"| {r['system']} | {r['case']} | {num(r, 'recall', '.4f')} | {num(r, 'qps', '.0f')} | {ratio} "
                     f"| {num(r, 'min_rows', 'd')} | {num(r, 'build_s', '.1f')} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--systems", default="hnswlib,faiss,pgvector")
    ap.add_argument("--cases", default=",".join(c for c, _ in CASES), help="e.g. unfiltered,1%%")
    ap.add_argument("--url", default="postgres://postgres@127.0.0.1:5433/keel")
    ap.add_argument("--m", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=128)
    ap.add_argument("--ef", type=int, default=64, help="ef_search")
    ap.add_argument("--build-threads", type=int, default=1)
    ap.add_argument("--json", help="write the records here")
    ap.add_argument("--race", metavar="DIR", help="unfiltered, timed, started with another process (vector_race.sh)")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of querying in a race")
    ap.add_argument("--merge", nargs="+", metavar="JSON",
                    help="only print one table of these record files (and write it with --json)")
    args = ap.parse_args()

    if args.merge:
        records = []
        for f in args.merge:
            # Records without a QPS (keel's planner sweep) stay out of the table.
            records += [r for r in json.loads(pathlib.Path(f).read_text()) if "qps" in r]
    else:
        data = Data(args.data)
        log(f"data: {data.n} x {data.dim}, {data.q} queries, from {args.data}")
        records = []
        for name in [s.strip() for s in args.systems.split(",") if s.strip()]:
            if name not in SYSTEMS:
                raise SystemExit(f"unknown system {name!r} (know {', '.join(SYSTEMS)})")
            if args.race:
                records += race(SYSTEMS[name](data, args), data, args)
            else:
                records += run(SYSTEMS[name](data, args), data, args.cases.split(","))
    if args.json:
        pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.json).write_text(json.dumps(records, indent=2) + "\n")
    print(table(records))


if __name__ == "__main__":
    main()
