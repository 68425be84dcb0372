"""Retrieval as a client uses it: keel's own /v1/embeddings served by the
local model through the official openai client (which asks for base64),
and collections over HTTP with text embedded by the local model or by an
upstream model through the gateway."""

from __future__ import annotations

import math
import uuid

import httpx
import openai
import pytest

from e2e_support import DEMO_KEY, EMBEDDING_DIM, LOCAL_EMBEDDER, REMOTE_EMBEDDER, assert_error


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


@pytest.fixture
def api(http: httpx.Client) -> httpx.Client:
    """keel's own API with the demo key."""
    http.headers["Authorization"] = f"Bearer {DEMO_KEY}"
    yield http
    del http.headers["Authorization"]


@pytest.fixture
def collection(api: httpx.Client):
    """A fresh collection name, deleted after the test."""
    name = f"c-{uuid.uuid4().hex[:10]}"
    yield name
    api.delete(f"/v1/collections/{name}")


def test_local_embeddings_through_the_openai_client(client: openai.OpenAI):
    texts = ["How do I reset my password?", "I forgot my login credentials", "Best pizza in Naples"]
    response = client.embeddings.create(model=LOCAL_EMBEDDER, input=texts)
    vectors = [d.embedding for d in response.data]
    assert [len(v) for v in vectors] == [384, 384, 384]
    assert response.model == LOCAL_EMBEDDER
    assert response.usage.prompt_tokens > 10
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.2

    as_floats = client.embeddings.create(model=LOCAL_EMBEDDER, input=texts[0], encoding_format="float")
    assert cosine(as_floats.data[0].embedding, vectors[0]) > 0.9999


def test_documents_are_chunked_embedded_and_found_by_text(api: httpx.Client, collection: str):
    r = api.post("/v1/collections", json={
        "name": collection, "embedder": LOCAL_EMBEDDER,
        "fields": {"team": "keyword", "updated": "datetime"},
    })
    assert r.status_code == 201, r.text
    assert r.json()["dimension"] == 384
    documents = [
        {"id": "vpn", "text": "To connect to the VPN, install the client and sign in with your SSO account.",
         "payload": {"team": "it", "updated": "2024-03-01T00:00:00Z"}},
        {"id": "refunds", "text": "Refunds above 500 dollars need a manager's approval before they are paid.",
         "payload": {"team": "finance", "updated": "2024-06-01T00:00:00Z"}},
        {"id": "leave", "text": "Annual leave requests go through the HR portal at least two weeks ahead.",
         "payload": {"team": "hr", "updated": "2023-01-01T00:00:00Z"}},
    ]
    r = api.post(f"/v1/collections/{collection}/documents", json={"documents": documents})
    assert r.status_code == 200, r.text
    assert r.json() == {"documents": 3, "chunks": 3}

    r = api.post(f"/v1/collections/{collection}/query", json={"text": "who approves a large refund?", "k": 1})
    assert r.status_code == 200, r.text
    best = r.json()["points"][0]
    assert best["payload"]["document_id"] == "refunds"
    assert "manager" in best["payload"]["text"]

    recent = {"must": [{"key": "updated", "range": {"gte": "2024-01-01T00:00:00Z"}}],
              "must_not": [{"key": "team", "match": {"value": "finance"}}]}
    r = api.post(f"/v1/collections/{collection}/query", json={"text": "holiday", "k": 3, "filter": recent})
    assert [p["payload"]["document_id"] for p in r.json()["points"]] == ["vpn"]


def test_a_remote_embedder_goes_through_the_gateway(api: httpx.Client, collection: str):
    r = api.post("/v1/collections", json={"name": collection, "embedder": REMOTE_EMBEDDER})
    assert r.status_code == 201, r.text
    assert r.json()["dimension"] == EMBEDDING_DIM
    r = api.post(f"/v1/collections/{collection}/points", json={"points": [
        {"id": "a", "text": "alpha"}, {"id": "b", "text": "beta"},
    ]})
    assert r.status_code == 200, r.text
    r = api.post(f"/v1/collections/{collection}/query", json={"text": "alpha", "k": 2})
    assert r.status_code == 200, r.text
    assert r.json()["points"][0]["id"] == "a"


def test_bad_collection_requests_get_openai_errors(api: httpx.Client, collection: str):
    r = api.post("/v1/collections", json={"name": collection, "dimension": 3, "fields": {"n": "integer"}})
    assert r.status_code == 201, r.text
    assert_error(api.post(f"/v1/collections/{collection}/points", json={"points": [{"id": "x", "vector": [1, 2]}]}),
                 status=400, type="invalid_request_error", code="invalid_request",
                 param="points[0].vector", mentions=("expected dim: 3, got 2",))
    assert_error(api.post(f"/v1/collections/{collection}/query", json={"vector": [1, 2, 3], "filter": {"must": [{"key": "zz", "match": {"value": 1}}]}}),
                 status=400, type="invalid_request_error", code="invalid_request",
                 param="filter.must[0].key", mentions=("not indexed",))
    assert_error(api.post("/v1/collections/no-such-collection/query", json={"vector": [1, 2, 3]}),
                 status=404, type="invalid_request_error", code="not_found", param="collection")
