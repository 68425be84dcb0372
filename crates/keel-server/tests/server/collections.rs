//! `/v1/collections…` and the local `/v1/embeddings` over HTTP: tenant
//! isolation, text embedded by the collection's embedder, documents
//! chunked with overlap, and every bad input as a 4xx naming the field.

use std::path::PathBuf;

use keel_core::TenantId;
use keel_server::{EmbedderKind, EmbedderSpec};
use keel_sim::SimConfig;
use serde_json::{Value, json};

use crate::support::{self, KEY, Running, key};

/// t2's key.
const OTHER: &str = "sk-keel-other-tenant";

fn model_dir() -> PathBuf {
    std::env::var_os("KEEL_MODEL_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.keel/models/all-MiniLM-L6-v2"),
        PathBuf::from,
    )
}

/// Runs a scenario `async fn(pg: bool)` with the embedded vector store and
/// with collections in PostgreSQL (pgvector).
macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn embedded() {
                super::$name(false).await;
            }

            #[tokio::test]
            async fn postgres() {
                super::$name(true).await;
            }
        }
    };
}

/// keel with a hashing embedder `hash` (64 dims), the local model `minilm`,
/// and a second tenant t2; collections in PostgreSQL when `pg`.
async fn start(pg: bool) -> Running {
    let postgres_url = if pg {
        Some(support::pgvector_database().await)
    } else {
        None
    };
    support::start(SimConfig::default(), |c| {
        c.retrieval.postgres_url = postgres_url;
        let t2 = TenantId::new("t2").unwrap();
        c.keys.push(key(&t2, OTHER));
        c.tenants.push((t2, "T2".into()));
        c.retrieval.fsync = false;
        c.retrieval.embedders = vec![
            EmbedderSpec {
                name: "hash".into(),
                kind: EmbedderKind::Hashing { dimension: 64 },
                max_batch: 32,
            },
            EmbedderSpec {
                name: "minilm".into(),
                kind: EmbedderKind::Local {
                    model_dir: model_dir(),
                },
                max_batch: 32,
            },
        ];
    })
    .await
}

async fn call(
    r: &Running,
    key: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let url = format!("{}{path}", r.app.base_url());
    let request = match method {
        "GET" => r.client.get(url),
        "DELETE" => r.client.delete(url),
        _ => r.client.post(url),
    }
    .bearer_auth(key);
    let request = match body {
        Some(b) => request.json(&b),
        None => request,
    };
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn create_docs(r: &Running) {
    let spec = json!({"name": "docs", "embedder": "hash", "fields": {"lang": "keyword", "year": "integer"}});
    let (status, body) = call(r, KEY, "POST", "/collections", Some(spec)).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["dimension"], 64, "the embedder fixes the dimension");
    let points = json!({"points": [
        {"id": "p1", "text": "how to reset a password", "payload": {"lang": "en", "year": 2023}},
        {"id": "p2", "text": "invoice refund policy", "payload": {"lang": "en", "year": 2024}},
        {"id": "p3", "text": "passwort zuruecksetzen", "payload": {"lang": "de", "year": 2024}},
    ]});
    let (status, body) = call(r, KEY, "POST", "/collections/docs/points", Some(points)).await;
    assert_eq!((status, body), (200, json!({"upserted": 3})));
}

both!(text_points_are_embedded_and_queried_with_filters);
async fn text_points_are_embedded_and_queried_with_filters(pg: bool) {
    let r = start(pg).await;
    create_docs(&r).await;
    let (status, body) = call(
        &r,
        KEY,
        "POST",
        "/collections/docs/query",
        Some(json!({"text": "reset password", "k": 2})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["points"][0]["id"], "p1");
    assert_eq!(
        body["points"][0]["payload"]["text"], "how to reset a password",
        "text is kept"
    );

    let filtered = json!({"text": "reset password", "filter": {"must": [{"key": "year", "range": {"gte": 2024}}], "must_not": [{"key": "lang", "match": {"value": "de"}}]}});
    let (_, body) = call(&r, KEY, "POST", "/collections/docs/query", Some(filtered)).await;
    let ids: Vec<&str> = body["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["p2"]);
    assert_eq!(body["strategy"], if pg { "database" } else { "exact" });

    let (_, body) = call(
        &r,
        KEY,
        "POST",
        "/collections/docs/count",
        Some(json!({"filter": {"must": [{"key": "lang", "match": {"value": "en"}}]}})),
    )
    .await;
    assert_eq!(body["count"], 2);
    let (_, body) = call(
        &r,
        KEY,
        "POST",
        "/collections/docs/points/get",
        Some(json!({"ids": ["p3"], "with_vector": true})),
    )
    .await;
    assert_eq!(body["points"][0]["vector"].as_array().unwrap().len(), 64);
    let (_, body) = call(
        &r,
        KEY,
        "POST",
        "/collections/docs/points/delete",
        Some(json!({"ids": ["p3"]})),
    )
    .await;
    assert_eq!(body["deleted"], 1);
    let (_, body) = call(&r, KEY, "GET", "/collections/docs", None).await;
    assert_eq!(body["points"], 2);
    let (_, body) = call(&r, KEY, "GET", "/collections", None).await;
    assert_eq!(body["data"][0]["name"], "docs");
    let (status, _) = call(&r, KEY, "DELETE", "/collections/docs", None).await;
    assert_eq!(status, 200);
    let (status, _) = call(&r, KEY, "GET", "/collections/docs", None).await;
    assert_eq!(status, 404);
}

both!(one_tenant_cannot_read_or_query_anothers_collection);
async fn one_tenant_cannot_read_or_query_anothers_collection(pg: bool) {
    let r = start(pg).await;
    create_docs(&r).await;
    for (method, path, body) in [
        ("GET", "/collections/docs", None),
        (
            "POST",
            "/collections/docs/query",
            Some(json!({"text": "password"})),
        ),
        (
            "POST",
            "/collections/docs/points/get",
            Some(json!({"ids": ["p1"]})),
        ),
        (
            "POST",
            "/collections/docs/points",
            Some(json!({"points": [{"id": "x", "text": "y"}]})),
        ),
        (
            "POST",
            "/collections/docs/points/delete",
            Some(json!({"ids": ["p1"]})),
        ),
        ("POST", "/collections/docs/count", Some(json!({}))),
        ("DELETE", "/collections/docs", None),
    ] {
        let (status, body) = call(&r, OTHER, method, path, body).await;
        assert_eq!(status, 404, "{method} {path}: {body}");
        assert_eq!(body["error"]["code"], "not_found");
    }
    let (_, body) = call(&r, OTHER, "GET", "/collections", None).await;
    assert_eq!(body["data"], json!([]));
    let (_, body) = call(&r, KEY, "GET", "/collections/docs", None).await;
    assert_eq!(body["points"], 3, "nothing the other tenant sent landed");
    let (status, _) = call(&r, "sk-not-a-key", "GET", "/collections", None).await;
    assert_eq!(status, 401);
}

both!(bad_input_gets_a_4xx_naming_the_field);
async fn bad_input_gets_a_4xx_naming_the_field(pg: bool) {
    let r = start(pg).await;
    create_docs(&r).await;
    let (status, body) = call(
        &r,
        KEY,
        "POST",
        "/collections",
        Some(json!({"name": "v", "dimension": 3})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let cases = [
        (
            "/collections",
            json!({"name": "docs", "dimension": 3}),
            409,
            "name",
        ),
        (
            "/collections",
            json!({"name": "bad/name", "dimension": 3}),
            400,
            "name",
        ),
        (
            "/collections",
            json!({"name": "x", "embedder": "nope"}),
            400,
            "embedder",
        ),
        (
            "/collections",
            json!({"name": "x", "embedder": "hash", "dimension": 3}),
            400,
            "dimension",
        ),
        (
            "/collections/v/points",
            json!({"points": [{"id": "a", "vector": [1, 2]}]}),
            400,
            "points[0].vector",
        ),
        (
            "/collections/v/points",
            json!({"points": [{"id": "a", "vector": [1, 2, 1e39]}]}),
            400,
            "points[0].vector[2]",
        ),
        (
            "/collections/v/points",
            json!({"points": [{"id": "a", "text": "no embedder"}]}),
            400,
            "points[].text",
        ),
        (
            "/collections/v/points",
            json!({"points": []}),
            400,
            "points",
        ),
        (
            "/collections/v/query",
            json!({"vector": [1, 2, 3, 4]}),
            400,
            "vector",
        ),
        (
            "/collections/v/query",
            json!({"vector": [1, 2, 3], "k": 0}),
            400,
            "k",
        ),
        (
            "/collections/v/query",
            json!({"vector": [1, 2, 3], "filter": {"must": [{"key": "lang", "match": {"value": "en"}}]}}),
            400,
            "filter.must[0].key",
        ),
        (
            "/collections/docs/query",
            json!({"text": "a", "filter": {"must": {"key": "lang"}}}),
            400,
            "filter.must",
        ),
        (
            "/collections/docs/query",
            json!({"text": "a", "filter": {"must": [{"key": "year", "range": {"gte": "soon"}}]}}),
            400,
            "filter.must[0].range.gte",
        ),
        (
            "/collections/docs/query",
            json!({"text": "a", "partition": "p"}),
            400,
            "partition",
        ),
        (
            "/collections/nope/query",
            json!({"vector": [1, 2, 3]}),
            404,
            "collection",
        ),
    ];
    for (path, body, status, param) in cases {
        let (got, reply) = call(&r, KEY, "POST", path, Some(body.clone())).await;
        assert_eq!(got, status, "{path} {body}: {reply}");
        assert_eq!(reply["error"]["param"], param, "{path} {body}: {reply}");
        assert!(!reply["error"]["message"].as_str().unwrap().is_empty());
    }
    // A NaN is not JSON at all: refused as such.
    let response = r
        .client
        .post(format!("{}/collections/v/points", r.app.base_url()))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(r#"{"points": [{"id": "a", "vector": [1, NaN, 3]}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let (_, body) = call(&r, KEY, "GET", "/collections/v", None).await;
    assert_eq!(body["points"], 0, "nothing refused was stored");
}

both!(documents_are_chunked_with_overlap_and_replaced_whole);
async fn documents_are_chunked_with_overlap_and_replaced_whole(pg: bool) {
    let r = start(pg).await;
    create_docs(&r).await;
    let long: Vec<String> = (0..100).map(|i| format!("word{i}")).collect();
    let doc = json!({"documents": [{"id": "manual", "text": long.join(" "), "payload": {"lang": "en"}}],
                     "chunking": {"max_words": 40, "overlap_words": 10}});
    let (status, body) = call(&r, KEY, "POST", "/collections/docs/documents", Some(doc)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"documents": 1, "chunks": 3}));
    let (_, body) = call(
        &r,
        KEY,
        "POST",
        "/collections/docs/points/get",
        Some(json!({"ids": ["manual#0", "manual#1", "manual#2"]})),
    )
    .await;
    let chunks = body["points"].as_array().unwrap();
    assert_eq!(chunks.len(), 3);
    assert!(
        chunks[1]["payload"]["text"]
            .as_str()
            .unwrap()
            .starts_with("word30 "),
        "ten words overlap"
    );
    assert_eq!(chunks[2]["payload"]["document_id"], "manual");
    assert_eq!(chunks[2]["payload"]["lang"], "en");

    // A shorter version replaces every old chunk.
    let doc = json!({"documents": [{"id": "manual", "text": "now it is short"}]});
    let (_, body) = call(&r, KEY, "POST", "/collections/docs/documents", Some(doc)).await;
    assert_eq!(body["chunks"], 1);
    let (_, body) = call(&r, KEY, "POST", "/collections/docs/count", Some(json!({}))).await;
    assert_eq!(body["count"], 4, "three points and one chunk");
}

#[tokio::test]
async fn local_embeddings_are_served_in_process_as_openai_does() {
    let r = start(false).await;
    let (status, body) = call(
        &r,
        KEY,
        "POST",
        "/embeddings",
        Some(json!({"model": "minilm", "input": ["reset my password", "I forgot my login"]})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let a = body["data"][0]["embedding"].as_array().unwrap();
    let b = body["data"][1]["embedding"].as_array().unwrap();
    assert_eq!(a.len(), 384);
    let cosine: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| x.as_f64().unwrap() * y.as_f64().unwrap())
        .sum();
    assert!(cosine > 0.4, "paraphrases are close: {cosine}");
    assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() >= 8);
    assert_eq!(body["model"], "minilm");

    // base64, as the official Python client asks by default.
    let (_, body) = call(
        &r,
        KEY,
        "POST",
        "/embeddings",
        Some(json!({"model": "minilm", "input": "x", "encoding_format": "base64"})),
    )
    .await;
    assert_eq!(
        body["data"][0]["embedding"].as_str().unwrap().len(),
        384 * 4 * 4 / 3
    );

    let (status, body) = call(
        &r,
        KEY,
        "POST",
        "/embeddings",
        Some(json!({"model": "minilm", "input": [1, 2, 3]})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["param"].as_str()),
        (400, Some("input"))
    );
    let (status, body) = call(
        &r,
        KEY,
        "POST",
        "/embeddings",
        Some(json!({"model": "minilm", "input": "x", "dimensions": 12})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["param"].as_str()),
        (400, Some("dimensions"))
    );
}

#[tokio::test]
async fn embedding_for_collections_is_limited_and_accounted() {
    let r = support::start(SimConfig::default(), |c| {
        c.retrieval.fsync = false;
        // An embedding model on the simulator, priced, behind a remote embedder.
        let mut model = c.gateway.models[0].clone();
        model.name = "emb".into();
        model.kind = keel_gateway::ModelKind::Embedding;
        model.deployments[0].pricing =
            keel_core::Pricing::from_dollars_per_mtok(20.0, 0.0).unwrap();
        c.gateway.models.push(model);
        c.retrieval.embedders = vec![
            EmbedderSpec {
                name: "hash".into(),
                kind: EmbedderKind::Hashing { dimension: 64 },
                max_batch: 32,
            },
            EmbedderSpec {
                name: "remote".into(),
                kind: EmbedderKind::Remote {
                    model: "emb".into(),
                    dimension: 384,
                },
                max_batch: 32,
            },
        ];
        let rule =
            r#"{"id": "hash-rpm", "scope": "tenant=t1,model=hash", "requests": 2, "per": "1m"}"#;
        c.limits.config.rules.push(
            serde_json::from_str::<keel_limits::RuleSpec>(rule)
                .unwrap()
                .check()
                .unwrap(),
        );
    })
    .await;
    for (name, embedder) in [("h", "hash"), ("rem", "remote")] {
        let (status, body) = call(
            &r,
            KEY,
            "POST",
            "/collections",
            Some(json!({"name": name, "embedder": embedder})),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    let points = json!({"points": [{"id": "a", "text": "one two three"}]});
    assert_eq!(
        call(
            &r,
            KEY,
            "POST",
            "/collections/h/points",
            Some(points.clone())
        )
        .await
        .0,
        200
    );
    assert_eq!(
        call(
            &r,
            KEY,
            "POST",
            "/collections/h/query",
            Some(json!({"text": "one"}))
        )
        .await
        .0,
        200
    );
    let (status, body) = call(
        &r,
        KEY,
        "POST",
        "/collections/h/query",
        Some(json!({"text": "two"})),
    )
    .await;
    assert_eq!(
        status, 429,
        "the third embedding call passes the rule: {body}"
    );
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    // Queries by vector embed nothing and are not limited by it.
    let (status, _) = call(
        &r,
        KEY,
        "POST",
        "/collections/h/query",
        Some(json!({"vector": vec![0.5; 64]})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        call(&r, KEY, "POST", "/collections/rem/points", Some(points))
            .await
            .0,
        200
    );

    let url = r.store_url.clone();
    r.app.shutdown().await;
    let store = keel_store::Store::connect(&url).await.unwrap();
    let rows = store
        .usage(&keel_store::UsageQuery::default())
        .await
        .unwrap();
    let hashed: Vec<_> = rows.iter().filter(|r| r.model == "hash").collect();
    assert_eq!(hashed.len(), 3, "two embedded, one refused");
    assert!(
        hashed
            .iter()
            .filter(|r| r.status == 200)
            .all(|r| r.prompt_tokens > 0 && r.cost_micros == 0)
    );
    let remote: Vec<_> = rows.iter().filter(|r| r.model == "emb").collect();
    assert_eq!(remote.len(), 1);
    assert!(
        remote[0].prompt_tokens > 0 && remote[0].cost_micros > 0,
        "{:?}",
        remote[0]
    );
}
