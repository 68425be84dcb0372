//! The vector store as a client uses it: collections per tenant, upserts,
//! filtered and partitioned queries, and persistence across restarts. Each
//! scenario runs on both backends: embedded, and PostgreSQL with pgvector
//! (`KEEL_TEST_PGVECTOR_URL`, default the server `scripts/pgvector.sh`
//! starts on port 5433), each test in a database of its own.

#![expect(clippy::unwrap_used, clippy::panic, reason = "tests fail loudly")]

use keel_vector::{
    CollectionSpec, EmbeddedOptions, EmbeddedStore, PgVectorStore, Point, Query, Strategy,
    VectorError, VectorStore,
};
use serde_json::{Value, json};

fn spec(json: Value) -> CollectionSpec {
    serde_json::from_value(json).unwrap()
}

fn point(id: &str, vector: Vec<f32>, payload: Value) -> Point {
    let Value::Object(payload) = payload else {
        panic!("payload must be an object")
    };
    Point {
        id: id.to_owned(),
        vector,
        payload,
    }
}

/// Where a test's collections live; `open` gives a fresh handle to the
/// same data, as a restarted process would get.
enum Backend {
    Embedded(tempfile::TempDir),
    Postgres(String),
}

impl Backend {
    fn embedded() -> Backend {
        Backend::Embedded(tempfile::tempdir().unwrap())
    }

    /// A new database on the pgvector server.
    async fn postgres() -> Backend {
        let url = keel_vector::testing::scratch_database("keel_vec_test")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        Backend::Postgres(url)
    }

    async fn open(&self) -> VectorStore {
        match self {
            Backend::Embedded(dir) => {
                let mut options = EmbeddedOptions::new(dir.path());
                options.fsync = false;
                VectorStore::Embedded(EmbeddedStore::open(options).await.unwrap())
            }
            Backend::Postgres(url) => {
                VectorStore::Postgres(PgVectorStore::connect(url).await.unwrap())
            }
        }
    }

    fn is_embedded(&self) -> bool {
        matches!(self, Backend::Embedded(_))
    }
}

/// Runs a scenario `async fn(Backend)` once per backend.
macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn embedded() {
                super::$name(super::Backend::embedded()).await;
            }

            #[tokio::test]
            async fn postgres() {
                super::$name(super::Backend::postgres().await).await;
            }
        }
    };
}

fn query(vector: Vec<f32>, k: usize) -> Query {
    Query {
        vector,
        k,
        with_payload: true,
        ..Query::default()
    }
}

/// A deterministic pseudo-random unit-ish vector.
fn vector(seed: u64, dim: usize) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..dim)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 2000) as f32 / 1000.0 - 1.0
        })
        .collect()
}

async fn docs(store: &VectorStore) {
    store
        .create(
            "acme",
            spec(json!({"name": "docs", "dimension": 3, "fields": {
                "lang": "keyword", "n": "integer", "price": "float",
                "at": "datetime", "ok": "bool", "tags": "keyword"}})),
        )
        .await
        .unwrap();
    let points = vec![
        point(
            "a",
            vec![1.0, 0.0, 0.0],
            json!({"lang": "en", "n": 1, "price": 9.5, "at": "2024-01-01T00:00:00Z", "ok": true, "tags": ["x", "y"]}),
        ),
        point(
            "b",
            vec![0.9, 0.1, 0.0],
            json!({"lang": "de", "n": 2, "price": 20.0, "at": "2024-06-01T00:00:00Z", "ok": false}),
        ),
        point(
            "c",
            vec![0.0, 1.0, 0.0],
            json!({"lang": "en", "n": 3, "at": "2025-01-01T00:00:00Z", "tags": "y"}),
        ),
        point(
            "d",
            vec![0.0, 0.0, 1.0],
            json!({"lang": "fr", "unindexed": {"deep": 1}}),
        ),
    ];
    assert_eq!(store.upsert("acme", "docs", points).await.unwrap(), 4);
}

async fn ids(store: &VectorStore, filter: Value) -> Vec<String> {
    let result = store
        .query(
            "acme",
            "docs",
            Some(&filter),
            query(vec![1.0, 0.0, 0.0], 10),
        )
        .await
        .unwrap();
    let mut ids: Vec<String> = result.points.into_iter().map(|p| p.id).collect();
    ids.sort();
    ids
}

both!(every_filter_kind_keeps_the_right_points);
async fn every_filter_kind_keeps_the_right_points(backend: Backend) {
    let store = backend.open().await;
    docs(&store).await;
    let cases = [
        (json!({}), vec!["a", "b", "c", "d"]),
        (
            json!({"must": [{"key": "lang", "match": {"value": "en"}}]}),
            vec!["a", "c"],
        ),
        (
            json!({"must": [{"key": "lang", "match": {"any": ["de", "fr"]}}]}),
            vec!["b", "d"],
        ),
        (
            json!({"must": [{"key": "tags", "match": {"value": "y"}}]}),
            vec!["a", "c"],
        ),
        (
            json!({"must": [{"key": "n", "range": {"gte": 2}}]}),
            vec!["b", "c"],
        ),
        (
            json!({"must": [{"key": "price", "range": {"gt": 9.5, "lte": 20}}]}),
            vec!["b"],
        ),
        (
            json!({"must": [{"key": "at", "range": {"gte": "2024-03-01T00:00:00Z", "lt": "2025-01-01T00:00:00Z"}}]}),
            vec!["b"],
        ),
        (
            json!({"must": [{"key": "ok", "match": {"value": false}}]}),
            vec!["b"],
        ),
        (json!({"must": [{"exists": "price"}]}), vec!["a", "b"]),
        (json!({"must_not": [{"exists": "n"}]}), vec!["d"]),
        (
            json!({"should": [{"key": "lang", "match": {"value": "fr"}}, {"key": "n", "range": {"lt": 2}}]}),
            vec!["a", "d"],
        ),
        (
            json!({"must": [{"key": "lang", "match": {"value": "en"}}], "must_not": [{"key": "tags", "match": {"value": "x"}}]}),
            vec!["c"],
        ),
        (
            json!({"must": [{"should": [{"key": "n", "match": {"value": 1}}, {"key": "n", "match": {"value": 3}}]}]}),
            vec!["a", "c"],
        ),
    ];
    for (filter, expected) in cases {
        assert_eq!(
            ids(&store, filter.clone()).await,
            expected,
            "filter {filter}"
        );
    }
    let count = store
        .count(
            "acme",
            "docs",
            Some(&json!({"must": [{"key": "lang", "match": {"value": "en"}}]})),
            None,
        )
        .await
        .unwrap();
    assert_eq!(count, 2);
}

both!(answers_closest_first_with_scores_and_payloads);
async fn answers_closest_first_with_scores_and_payloads(backend: Backend) {
    let store = backend.open().await;
    docs(&store).await;
    let result = store
        .query("acme", "docs", None, query(vec![1.0, 0.0, 0.0], 2))
        .await
        .unwrap();
    let got: Vec<&str> = result.points.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(got, vec!["a", "b"]);
    assert!((result.points[0].score - 1.0).abs() < 1e-5);
    assert!(result.points[0].score > result.points[1].score);
    assert_eq!(result.points[0].payload.as_ref().unwrap()["lang"], "en");

    let got = store
        .get("acme", "docs", vec!["d".into(), "zz".into()], true)
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload["unindexed"]["deep"], 1);
    assert_eq!(got[0].vector, vec![0.0, 0.0, 1.0]);
}

both!(upsert_replaces_and_delete_removes);
async fn upsert_replaces_and_delete_removes(backend: Backend) {
    let store = backend.open().await;
    docs(&store).await;
    store
        .upsert(
            "acme",
            "docs",
            vec![point("a", vec![0.0, 1.0, 0.0], json!({"lang": "de"}))],
        )
        .await
        .unwrap();
    assert_eq!(
        ids(
            &store,
            json!({"must": [{"key": "lang", "match": {"value": "en"}}]})
        )
        .await,
        vec!["c"]
    );
    assert_eq!(
        ids(
            &store,
            json!({"must": [{"key": "lang", "match": {"value": "de"}}]})
        )
        .await,
        vec!["a", "b"]
    );
    assert_eq!(store.info("acme", "docs").await.unwrap().points, 4);

    assert_eq!(
        store
            .delete("acme", "docs", vec!["a".into(), "nope".into()])
            .await
            .unwrap(),
        1
    );
    assert_eq!(ids(&store, json!({})).await, vec!["b", "c", "d"]);
    assert!(
        store
            .get("acme", "docs", vec!["a".into()], false)
            .await
            .unwrap()
            .is_empty()
    );
}

both!(tenants_cannot_see_each_others_collections);
async fn tenants_cannot_see_each_others_collections(backend: Backend) {
    let store = backend.open().await;
    docs(&store).await;
    let other = store
        .query("globex", "docs", None, query(vec![1.0, 0.0, 0.0], 1))
        .await;
    assert!(matches!(other, Err(VectorError::NotFound { .. })));
    assert!(
        store
            .get("globex", "docs", vec!["a".into()], false)
            .await
            .is_err()
    );
    assert!(store.list("globex").await.unwrap().is_empty());
    // The same name is free for another tenant, and separate.
    store
        .create("globex", spec(json!({"name": "docs", "dimension": 3})))
        .await
        .unwrap();
    assert_eq!(store.info("globex", "docs").await.unwrap().points, 0);
    assert_eq!(store.info("acme", "docs").await.unwrap().points, 4);
}

both!(bad_input_is_refused_naming_the_field);
async fn bad_input_is_refused_naming_the_field(backend: Backend) {
    let store = backend.open().await;
    docs(&store).await;
    let field = |e: VectorError| match e {
        VectorError::Invalid { field, .. } | VectorError::Dimension { field, .. } => field,
        other => panic!("expected a caller error, got {other:?}"),
    };
    let e = store
        .upsert("acme", "docs", vec![point("x", vec![1.0, 0.0], json!({}))])
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "points[0].vector: expected dim: 3, got 2");
    let e = store
        .upsert(
            "acme",
            "docs",
            vec![point("x", vec![1.0, f32::NAN, 0.0], json!({}))],
        )
        .await
        .unwrap_err();
    assert_eq!(field(e), "points[0].vector[1]");
    let e = store
        .upsert("acme", "docs", vec![point("x", vec![0.0; 3], json!({}))])
        .await
        .unwrap_err();
    assert_eq!(field(e), "points[0].vector");
    let e = store
        .upsert(
            "acme",
            "docs",
            vec![point("x", vec![1.0; 3], json!({"n": "three"}))],
        )
        .await
        .unwrap_err();
    assert_eq!(field(e), "points[0].payload.n");
    let e = store
        .upsert("acme", "docs", vec![point("", vec![1.0; 3], json!({}))])
        .await
        .unwrap_err();
    assert_eq!(field(e), "points[0].id");
    let e = store
        .query(
            "acme",
            "docs",
            Some(&json!({"must": [{"key": "nope", "match": {"value": 1}}]})),
            query(vec![1.0; 3], 1),
        )
        .await
        .unwrap_err();
    assert_eq!(field(e), "filter.must[0].key");
    let e = store
        .query("acme", "docs", None, query(vec![1.0; 4], 1))
        .await
        .unwrap_err();
    assert!(matches!(
        e,
        VectorError::Dimension {
            expected: 3,
            got: 4,
            ..
        }
    ));
    let e = store
        .create("acme", spec(json!({"name": "docs", "dimension": 3})))
        .await
        .unwrap_err();
    assert!(matches!(e, VectorError::AlreadyExists { .. }));
    // Nothing refused was stored.
    assert_eq!(store.info("acme", "docs").await.unwrap().points, 4);
}

both!(partitions_keep_points_apart_and_queries_name_one);
async fn partitions_keep_points_apart_and_queries_name_one(backend: Backend) {
    let store = backend.open().await;
    store
        .create(
            "acme",
            spec(json!({"name": "kb", "dimension": 2, "partition_key": "customer"})),
        )
        .await
        .unwrap();
    let points = vec![
        point("1", vec![1.0, 0.0], json!({"customer": "c1"})),
        point("2", vec![1.0, 0.1], json!({"customer": "c2"})),
        point("3", vec![0.0, 1.0], json!({"customer": "c1"})),
    ];
    store.upsert("acme", "kb", points).await.unwrap();
    let in_partition = |p: &str| Query {
        partition: Some(p.to_owned()),
        ..query(vec![1.0, 0.0], 10)
    };
    let got: Vec<String> = store
        .query("acme", "kb", None, in_partition("c1"))
        .await
        .unwrap()
        .points
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(got, vec!["1", "3"]);
    assert_eq!(
        store
            .query("acme", "kb", None, in_partition("c3"))
            .await
            .unwrap()
            .points
            .len(),
        0
    );
    assert_eq!(store.info("acme", "kb").await.unwrap().partitions, 2);

    let e = store
        .query("acme", "kb", None, query(vec![1.0, 0.0], 10))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("partition: this collection is partitioned"),
        "{e}"
    );
    let e = store
        .upsert("acme", "kb", vec![point("4", vec![1.0, 0.0], json!({}))])
        .await
        .unwrap_err();
    assert!(
        e.to_string().starts_with("points[0].payload.customer"),
        "{e}"
    );

    // Moving a point to another partition takes it out of the first.
    store
        .upsert(
            "acme",
            "kb",
            vec![point("1", vec![1.0, 0.0], json!({"customer": "c2"}))],
        )
        .await
        .unwrap();
    let got: Vec<String> = store
        .query("acme", "kb", None, in_partition("c1"))
        .await
        .unwrap()
        .points
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(got, vec!["3"]);
    assert_eq!(store.count("acme", "kb", None, None).await.unwrap(), 3);
}

both!(selective_filters_search_exactly_and_broad_ones_walk_the_graph);
async fn selective_filters_search_exactly_and_broad_ones_walk_the_graph(backend: Backend) {
    let store = backend.open().await;
    let dim = 16;
    store
        .create(
            "acme",
            spec(json!({"name": "big", "dimension": dim, "fields": {"bucket": "integer"}})),
        )
        .await
        .unwrap();
    let points: Vec<Point> = (0..20_000u64)
        .map(|i| point(&i.to_string(), vector(i, dim), json!({"bucket": i % 100})))
        .collect();
    for batch in points.chunks(2_000) {
        store.upsert("acme", "big", batch.to_vec()).await.unwrap();
    }
    let run = |filter: Value| {
        let store = store.clone();
        async move {
            store
                .query("acme", "big", Some(&filter), query(vector(99_999, dim), 10))
                .await
                .unwrap()
        }
    };
    let embedded = backend.is_embedded();
    let one_percent = run(json!({"must": [{"key": "bucket", "range": {"lt": 1}}]})).await;
    if embedded {
        assert_eq!(one_percent.strategy, Strategy::Exact);
        assert_eq!(one_percent.candidates, 200);
    }
    assert_eq!(one_percent.points.len(), 10);
    assert!(
        one_percent
            .points
            .iter()
            .all(|p| p.payload.as_ref().unwrap()["bucket"] == 0)
    );

    let half = run(json!({"must": [{"key": "bucket", "range": {"lt": 50}}]})).await;
    if embedded {
        assert_eq!(half.strategy, Strategy::FilteredGraph);
    }
    assert_eq!(half.points.len(), 10);
    assert!(
        half.points
            .iter()
            .all(|p| p.payload.as_ref().unwrap()["bucket"].as_u64().unwrap() < 50)
    );

    // Fewer matches than k: every match comes back.
    let three = run(json!({"must": [{"key": "bucket", "match": {"value": 7}}], "must_not": [{"key": "bucket", "range": {"gte": 0}}]})).await;
    assert_eq!(three.points.len(), 0);
    assert_eq!(three.strategy, Strategy::Empty);
}

both!(graph_answers_agree_with_exact_search);
async fn graph_answers_agree_with_exact_search(backend: Backend) {
    let store = backend.open().await;
    let dim = 32;
    store
        .create(
            "acme",
            spec(json!({"name": "r", "dimension": dim, "metric": "l2"})),
        )
        .await
        .unwrap();
    let points: Vec<Point> = (0..5_000u64)
        .map(|i| point(&i.to_string(), vector(i, dim), json!({})))
        .collect();
    store.upsert("acme", "r", points.clone()).await.unwrap();
    let mut found = 0;
    for q in 0..50u64 {
        let qv = vector(1_000_000 + q, dim);
        let mut exact: Vec<(f32, &str)> = points
            .iter()
            .map(|p| {
                (
                    p.vector
                        .iter()
                        .zip(&qv)
                        .map(|(a, b)| (a - b) * (a - b))
                        .sum::<f32>(),
                    p.id.as_str(),
                )
            })
            .collect();
        exact.sort_by(|a, b| a.0.total_cmp(&b.0));
        let truth: Vec<&str> = exact.iter().take(10).map(|e| e.1).collect();
        let got = store.query("acme", "r", None, query(qv, 10)).await.unwrap();
        if backend.is_embedded() {
            assert_eq!(got.strategy, Strategy::Graph);
        }
        found += got
            .points
            .iter()
            .filter(|p| truth.contains(&p.id.as_str()))
            .count();
        // l2 scores are distances, closest first.
        assert!(got.points.windows(2).all(|w| w[0].score <= w[1].score));
    }
    let recall = found as f64 / 500.0;
    assert!(recall >= 0.95, "recall@10 {recall}");
}

both!(writes_survive_a_restart_with_and_without_a_snapshot);
async fn writes_survive_a_restart_with_and_without_a_snapshot(backend: Backend) {
    {
        let store = backend.open().await;
        docs(&store).await;
        store.snapshot_all().await.unwrap();
        // After the snapshot: only in the log.
        store
            .upsert(
                "acme",
                "docs",
                vec![point("e", vec![0.5, 0.5, 0.0], json!({"lang": "en"}))],
            )
            .await
            .unwrap();
        store
            .delete("acme", "docs", vec!["b".into()])
            .await
            .unwrap();
    }
    let store = backend.open().await;
    assert_eq!(ids(&store, json!({})).await, vec!["a", "c", "d", "e"]);
    assert_eq!(
        ids(
            &store,
            json!({"must": [{"key": "lang", "match": {"value": "en"}}]})
        )
        .await,
        vec!["a", "c", "e"]
    );
    let got = store
        .get("acme", "docs", vec!["d".into()], false)
        .await
        .unwrap();
    assert_eq!(got[0].payload["unindexed"], json!({"deep": 1}));

    // A second snapshot, a restart, and writes keep working.
    store.snapshot_all().await.unwrap();
    drop(store);
    let store = backend.open().await;
    assert_eq!(store.info("acme", "docs").await.unwrap().points, 4);
    store
        .upsert(
            "acme",
            "docs",
            vec![point("f", vec![0.0, 0.5, 0.5], json!({}))],
        )
        .await
        .unwrap();
    assert_eq!(ids(&store, json!({})).await.len(), 5);
}

both!(a_deleted_collection_is_gone_after_a_restart);
async fn a_deleted_collection_is_gone_after_a_restart(backend: Backend) {
    {
        let store = backend.open().await;
        docs(&store).await;
        store.delete_collection("acme", "docs").await.unwrap();
        assert!(store.info("acme", "docs").await.is_err());
    }
    let store = backend.open().await;
    assert!(store.list("acme").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_full_log_is_snapshotted_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = EmbeddedOptions::new(dir.path());
    options.fsync = false;
    options.snapshot_wal_bytes = 1;
    let store = VectorStore::Embedded(EmbeddedStore::open(options).await.unwrap());
    docs(&store).await;
    for _ in 0..100 {
        if dir.path().join("acme/docs/snapshot/manifest.json").exists() {
            break;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(dir.path().join("acme/docs/snapshot/manifest.json").exists());
}

both!(racing_creates_of_one_name_make_exactly_one_collection);
async fn racing_creates_of_one_name_make_exactly_one_collection(backend: Backend) {
    let store = backend.open().await;
    let mut racers = Vec::new();
    for dim in 1..=8usize {
        let store = store.clone();
        racers.push(tokio::spawn(async move {
            let created = store
                .create("acme", spec(json!({"name": "race", "dimension": dim})))
                .await;
            (dim, created.is_ok())
        }));
    }
    let mut winners = Vec::new();
    for r in racers {
        let (dim, won) = r.await.unwrap();
        if won {
            winners.push(dim);
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    // What is on disk (or in the catalog) is the winner's spec.
    drop(store);
    let store = backend.open().await;
    assert_eq!(
        store.info("acme", "race").await.unwrap().spec.dimension,
        winners[0]
    );
}

/// Processes starting together on a fresh database all set it up (the
/// extension, the catalog) without tripping over each other.
#[tokio::test]
async fn processes_starting_together_all_connect() {
    let Backend::Postgres(url) = Backend::postgres().await else {
        unreachable!("postgres() makes a PostgreSQL backend");
    };
    let mut connects = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let url = url.clone();
        connects.spawn(async move { PgVectorStore::connect(&url).await.map(drop) });
    }
    while let Some(connected) = connects.join_next().await {
        let connected = connected.unwrap();
        assert!(connected.is_ok(), "{:?}", connected.err());
    }
}
