//! `/v1/collections…`: a tenant's vector collections.
//!
//! Every route authenticates the key and works inside its tenant; another
//! tenant's collection of the same name is invisible (404). Points and
//! queries may carry text instead of vectors when the collection names an
//! embedder; `documents` chunks long texts before embedding them.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use http::{HeaderMap, StatusCode};
use keel_core::embeddings::{EmbeddingInput, EmbeddingRequest};
use keel_core::{Cost, ErrorCode};
use keel_vector::{Chunking, CollectionInfo, CollectionSpec, Point, Query, QueryResult, chunk};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use crate::accounting::{Outcome, RequestContext};
use crate::body::read_json;
use crate::error::ApiError;
use crate::limiting;
use crate::retrieval::vectors_of;
use crate::routes::refuse;
use crate::state::AppState;

/// Points per upsert request, at most.
const MAX_POINTS: usize = 10_000;
/// Answers per query, at most.
const MAX_K: usize = 1_000;

/// `POST /v1/collections`.
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<CollectionInfo>), ApiError> {
    let caller = state.keys.authenticate(&headers)?;
    let mut spec: CollectionSpec = read_json(body, state.settings.max_body_bytes).await?;
    if let Some(name) = &spec.embedder {
        let embedder = state.retrieval.embedder(name).ok_or_else(|| {
            ApiError::field(
                ErrorCode::InvalidRequest,
                "embedder",
                format!(
                    "no embedder is named {name:?}; configured embedders: [{}]",
                    state.retrieval.embedder_names().join(", ")
                ),
            )
        })?;
        if spec.dimension == 0 {
            spec.dimension = embedder.dimension();
        } else if spec.dimension != embedder.dimension() {
            return Err(ApiError::field(
                ErrorCode::InvalidRequest,
                "dimension",
                format!(
                    "embedder {name:?} makes {}-dimensional vectors, but dimension is {}",
                    embedder.dimension(),
                    spec.dimension
                ),
            ));
        }
    }
    let info = state
        .retrieval
        .vectors
        .create(caller.tenant_id.as_str(), spec)
        .await?;
    Ok((StatusCode::CREATED, Json(info)))
}

/// `GET /v1/collections`.
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let caller = state.keys.authenticate(&headers)?;
    let data = state
        .retrieval
        .vectors
        .list(caller.tenant_id.as_str())
        .await?;
    Ok(Json(json!({"object": "list", "data": data})))
}

/// `GET /v1/collections/{name}`.
pub async fn info(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<CollectionInfo>, ApiError> {
    let caller = state.keys.authenticate(&headers)?;
    let info = state
        .retrieval
        .vectors
        .info(caller.tenant_id.as_str(), &name)
        .await?;
    Ok(Json(info))
}

/// `DELETE /v1/collections/{name}`.
pub async fn delete_collection(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = state.keys.authenticate(&headers)?;
    state
        .retrieval
        .vectors
        .delete_collection(caller.tenant_id.as_str(), &name)
        .await?;
    Ok(Json(json!({"deleted": true, "name": name})))
}

/// A point as a client sends it: a vector, or text to embed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PointInput {
    id: String,
    #[serde(default)]
    vector: Option<Vec<f32>>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    payload: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpsertBody {
    points: Vec<PointInput>,
}

/// `POST /v1/collections/{name}/points`: stores points, replacing those
/// with the same ids. Points given as text are embedded by the
/// collection's embedder, and the text is kept in the payload as `text`.
pub async fn upsert(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let caller = state.keys.authenticate(&headers)?;
    let ctx = RequestContext::new(
        &state,
        caller.clone(),
        &headers,
        "collections",
        Instant::now(),
    )?;
    let tenant = caller.tenant_id.as_str();
    let spec = state.retrieval.vectors.spec(tenant, &name).await?;
    let body: UpsertBody = read_json(body, state.settings.max_body_bytes).await?;
    if body.points.is_empty() || body.points.len() > MAX_POINTS {
        return Err(ApiError::field(
            ErrorCode::InvalidRequest,
            "points",
            format!(
                "send 1 to {MAX_POINTS} points per request, got {}",
                body.points.len()
            ),
        ));
    }

    // Texts first, all in one embedding call.
    let mut to_embed = Vec::new();
    for (i, p) in body.points.iter().enumerate() {
        match (&p.vector, &p.text) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    &format!("points[{i}]"),
                    "give `vector` or `text`, not both",
                ));
            }
            (None, None) => return Err(bad(&format!("points[{i}]"), "give `vector` or `text`")),
            (None, Some(text)) => to_embed.push(text.clone()),
            (Some(_), None) => {}
        }
    }
    let mut vectors = embed_texts(&state, &ctx, &spec, &to_embed, "points[].text")
        .await?
        .into_iter();
    let points: Vec<Point> = body
        .points
        .into_iter()
        .map(|p| {
            let mut payload = p.payload;
            let vector = match (p.vector, p.text) {
                (Some(v), _) => v,
                (None, text) => {
                    if let Some(text) = text {
                        payload.entry("text").or_insert(Value::String(text));
                    }
                    vectors.next().unwrap_or_default()
                }
            };
            Point {
                id: p.id,
                vector,
                payload,
            }
        })
        .collect();
    let upserted = state
        .retrieval
        .vectors
        .upsert(tenant, &name, points)
        .await?;
    Ok(Json(json!({"upserted": upserted})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdsBody {
    ids: Vec<String>,
    #[serde(default)]
    with_vector: bool,
}

/// `POST /v1/collections/{name}/points/get`.
pub async fn get_points(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let caller = state.keys.authenticate(&headers)?;
    let body: IdsBody = read_json(body, state.settings.max_body_bytes).await?;
    let points = state
        .retrieval
        .vectors
        .get(caller.tenant_id.as_str(), &name, body.ids, body.with_vector)
        .await?;
    let points: Vec<Value> = points
        .into_iter()
        .map(|p| {
            let mut v = json!({"id": p.id, "payload": p.payload});
            if body.with_vector {
                v["vector"] = json!(p.vector);
            }
            v
        })
        .collect();
    Ok(Json(json!({"points": points})))
}

/// `POST /v1/collections/{name}/points/delete`.
pub async fn delete_points(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let caller = state.keys.authenticate(&headers)?;
    let body: IdsBody = read_json(body, state.settings.max_body_bytes).await?;
    let deleted = state
        .retrieval
        .vectors
        .delete(caller.tenant_id.as_str(), &name, body.ids)
        .await?;
    Ok(Json(json!({"deleted": deleted})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CountBody {
    #[serde(default)]
    filter: Option<Value>,
    #[serde(default)]
    partition: Option<String>,
}

/// `POST /v1/collections/{name}/count`.
pub async fn count(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let caller = state.keys.authenticate(&headers)?;
    let body: CountBody = read_json(body, state.settings.max_body_bytes).await?;
    let count = state
        .retrieval
        .vectors
        .count(
            caller.tenant_id.as_str(),
            &name,
            body.filter.as_ref(),
            body.partition,
        )
        .await?;
    Ok(Json(json!({"count": count})))
}

fn default_k() -> usize {
    10
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryBody {
    #[serde(default)]
    vector: Option<Vec<f32>>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default = "default_k")]
    k: usize,
    #[serde(default)]
    filter: Option<Value>,
    #[serde(default)]
    partition: Option<String>,
    #[serde(default = "yes")]
    with_payload: bool,
    #[serde(default)]
    with_vector: bool,
}

/// `POST /v1/collections/{name}/query`: the `k` nearest points the filter
/// keeps, by vector or by text.
pub async fn query(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Body,
) -> Result<Json<QueryResult>, ApiError> {
    let caller = state.keys.authenticate(&headers)?;
    let ctx = RequestContext::new(
        &state,
        caller.clone(),
        &headers,
        "collections",
        Instant::now(),
    )?;
    let tenant = caller.tenant_id.as_str();
    let spec = state.retrieval.vectors.spec(tenant, &name).await?;
    let body: QueryBody = read_json(body, state.settings.max_body_bytes).await?;
    if body.k == 0 || body.k > MAX_K {
        return Err(bad("k", &format!("must be 1 to {MAX_K}, got {}", body.k)));
    }
    let vector = match (body.vector, body.text) {
        (Some(v), None) => v,
        (None, Some(text)) => embed_texts(&state, &ctx, &spec, &[text], "text")
            .await?
            .pop()
            .unwrap_or_default(),
        _ => return Err(bad("vector", "give `vector` or `text` (exactly one)")),
    };
    let query = Query {
        vector,
        k: body.k,
        partition: body.partition,
        with_payload: body.with_payload,
        with_vector: body.with_vector,
        ..Query::default()
    };
    let result = state
        .retrieval
        .vectors
        .query(tenant, &name, body.filter.as_ref(), query)
        .await?;
    Ok(Json(result))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DocumentInput {
    id: String,
    text: String,
    #[serde(default)]
    payload: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ChunkingInput {
    max_words: usize,
    overlap_words: usize,
}

impl Default for ChunkingInput {
    fn default() -> Self {
        let d = Chunking::default();
        ChunkingInput {
            max_words: d.max_words,
            overlap_words: d.overlap_words,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DocumentsBody {
    documents: Vec<DocumentInput>,
    #[serde(default)]
    chunking: ChunkingInput,
}

/// `POST /v1/collections/{name}/documents`: chunks each document with
/// overlap, embeds the chunks, and stores them as points `{id}#{n}` whose
/// payload is the document's plus `document_id`, `chunk` and `text`. A
/// document sent again replaces all its old chunks.
pub async fn documents(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let caller = state.keys.authenticate(&headers)?;
    let ctx = RequestContext::new(
        &state,
        caller.clone(),
        &headers,
        "collections",
        Instant::now(),
    )?;
    let tenant = caller.tenant_id.as_str();
    let spec = state.retrieval.vectors.spec(tenant, &name).await?;
    let body: DocumentsBody = read_json(body, state.settings.max_body_bytes).await?;
    let how = &body.chunking;
    if how.max_words == 0 || how.max_words > 4096 || how.overlap_words >= how.max_words {
        return Err(bad(
            "chunking",
            "max_words must be 1 to 4096 and overlap_words less than max_words",
        ));
    }
    if body.documents.is_empty() {
        return Err(bad("documents", "send at least one document"));
    }
    let chunking = Chunking {
        max_words: how.max_words,
        overlap_words: how.overlap_words,
    };

    let mut points = Vec::new();
    let mut counts = Vec::new();
    for (i, doc) in body.documents.into_iter().enumerate() {
        let pieces = chunk(&doc.text, chunking);
        if pieces.is_empty() {
            return Err(bad(&format!("documents[{i}].text"), "must not be empty"));
        }
        counts.push((doc.id.clone(), pieces.len()));
        for (n, text) in pieces.into_iter().enumerate() {
            let mut payload = doc.payload.clone();
            payload.insert("document_id".into(), Value::String(doc.id.clone()));
            payload.insert("chunk".into(), Value::from(n));
            payload.insert("text".into(), Value::String(text));
            points.push(Point {
                id: format!("{}#{n}", doc.id),
                vector: Vec::new(),
                payload,
            });
        }
    }
    if points.len() > MAX_POINTS {
        return Err(bad(
            "documents",
            &format!(
                "the documents make {} chunks; send at most {MAX_POINTS} per request",
                points.len()
            ),
        ));
    }
    let texts: Vec<String> = points
        .iter()
        .map(|p| {
            p.payload
                .get("text")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    let vectors = embed_texts(&state, &ctx, &spec, &texts, "documents[].text").await?;
    for (p, v) in points.iter_mut().zip(vectors) {
        p.vector = v;
    }
    let chunks = points.len();
    let vectors = &state.retrieval.vectors;
    vectors.upsert(tenant, &name, points).await?;

    // Chunks beyond the new count belong to an older, longer version.
    for (id, count) in &counts {
        let mut n = *count;
        loop {
            let stale: Vec<String> = (n..n + 64).map(|k| format!("{id}#{k}")).collect();
            let found = vectors.get(tenant, &name, stale.clone(), false).await?;
            if found.is_empty() {
                break;
            }
            vectors.delete(tenant, &name, stale).await?;
            n += 64;
        }
    }
    Ok(Json(json!({"documents": counts.len(), "chunks": chunks})))
}

/// Embeds texts with the collection's embedder, as a request of its own in
/// the caller's name: rate limits and budgets apply and the usage ledger
/// records the tokens (and, through the gateway, the cost) under the
/// embedder's name, or the remote model's.
async fn embed_texts(
    state: &AppState,
    ctx: &RequestContext,
    spec: &CollectionSpec,
    texts: &[String],
    field: &str,
) -> Result<Vec<Vec<f32>>, ApiError> {
    if texts.is_empty() {
        return Ok(Vec::new());
    }
    let name = spec.embedder.as_deref().ok_or_else(|| {
        bad(
            field,
            "this collection has no embedder; send vectors, or create it with `embedder`",
        )
    })?;
    if let Some((model, dimension)) = state.retrieval.remote_model(name) {
        return embed_remotely(state, ctx, model, dimension, texts).await;
    }
    let embedder = state.retrieval.embedder(name).ok_or_else(|| {
        ApiError::new(
            ErrorCode::UpstreamUnavailable,
            format!("embedder {name:?} is no longer configured on this server"),
        )
    })?;
    let tokens = embedder.count_tokens(texts);
    let admission = match limiting::admit_free(state, ctx, name, tokens).await {
        Ok(a) => a,
        Err(e) => return Err(refuse(state, ctx, name.to_owned(), e).await),
    };
    let vectors = match embedder.embed(texts).await {
        Ok(v) => v,
        Err(e) => {
            let error = ApiError::internal("embed texts", &e);
            return Err(refuse(state, ctx, name.to_owned(), error).await);
        }
    };
    let outcome = Outcome {
        model: name.to_owned(),
        prompt_tokens: tokens,
        status: 200,
        ..Outcome::default()
    };
    ctx.finish(state, outcome).await;
    if let Some(admission) = admission {
        limiting::settle(state, admission, tokens, Cost::ZERO).await;
    }
    Ok(vectors)
}

/// Embeds through the gateway, exactly as `/v1/embeddings` would.
async fn embed_remotely(
    state: &AppState,
    ctx: &RequestContext,
    model: String,
    dimension: usize,
    texts: &[String],
) -> Result<Vec<Vec<f32>>, ApiError> {
    let request = EmbeddingRequest {
        model: model.clone(),
        input: EmbeddingInput::Texts(texts.to_vec()),
        encoding_format: None,
        dimensions: None,
        extra: Map::new(),
    };
    let admission = match limiting::admit_embeddings(state, ctx, &request).await {
        Ok(a) => a,
        Err(e) => return Err(refuse(state, ctx, model, e).await),
    };
    let (response, served) = match state.gateway.embed(&request).await {
        Ok(answer) => answer,
        Err(e) => return Err(refuse(state, ctx, model, ApiError::from(e)).await),
    };
    let tokens = response.usage.prompt_tokens;
    let vectors = vectors_of(&response, texts.len(), dimension, &model)
        .map_err(|message| ApiError::new(ErrorCode::UpstreamBadResponse, message));
    let outcome = Outcome {
        model,
        served: Some(served),
        prompt_tokens: tokens,
        status: if vectors.is_ok() { 200 } else { 502 },
        error: vectors.as_ref().err().map(|e| e.code),
        ..Outcome::default()
    };
    let (cost, _) = ctx.finish(state, outcome).await;
    if let Some(admission) = admission {
        limiting::settle(state, admission, tokens, cost).await;
    }
    vectors
}

fn bad(field: &str, message: &str) -> ApiError {
    ApiError::field(ErrorCode::InvalidRequest, field, message.to_owned())
}
