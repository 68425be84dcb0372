"""The usage ledger, the admin API (tenants, users, keys) and /metrics."""

from __future__ import annotations

import re
import threading
import uuid

import httpx
import openai
import pytest

from e2e_support import (
    ADMIN_TOKEN,
    ANTHROPIC_MODEL,
    CHAT_MODEL,
    CLAUDE,
    DEMO_KEY,
    DEMO_TENANT,
    EMBED,
    EMBED_MODEL,
    PRICE_IN,
    PRICE_OUT,
    PRIMARY,
    PRIMARY_UPSTREAM,
    assert_error,
    make_client,
    sim_tag,
    user,
    wait_until,
)

SESSION = "s-e2e"
WORKFLOW = "wf-e2e"
TAGS = {"x-keel-session": SESSION, "x-keel-workflow": WORKFLOW}


def usage(admin: httpx.Client, **params) -> dict:
    r = admin.get("/usage", params=params)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list"
    return body


def wait_for_rows(admin: httpx.Client, count: int, **params) -> dict:
    """Polls the ledger until `count` rows match (it is written in batches,
    off the request path)."""
    return wait_until(
        lambda: (body := usage(admin, **params)) and len(body["data"]) >= count and body,
        timeout=10,
        message=f"{count} ledger rows for {params}",
    )


# -- the usage ledger -------------------------------------------------------------


def test_usage_ledger_records_attributed_requests(client: openai.OpenAI, admin: httpx.Client):
    expected = {}  # request id -> (prompt tokens, completion tokens, stream)
    for prompt in ["ledger one", "ledger two"]:
        raw = client.chat.completions.with_raw_response.create(
            model=CHAT_MODEL, messages=user(prompt), extra_headers=TAGS
        )
        u = raw.parse().usage
        expected[raw.headers["x-request-id"]] = (u.prompt_tokens, u.completion_tokens, False)
    with client.chat.completions.with_streaming_response.create(
        model=CHAT_MODEL,
        messages=user("ledger stream"),
        stream=True,
        stream_options={"include_usage": True},
        extra_headers=TAGS,
    ) as response:
        request_id = response.headers["x-request-id"]
        chunks = list(response.parse())
    u = chunks[-1].usage
    expected[request_id] = (u.prompt_tokens, u.completion_tokens, True)

    wait_for_rows(admin, len(expected), session=SESSION)
    # Read again once every row is in: keel computes totals and rows in two
    # separate queries, so a response taken while the ledger was flushing
    # may not agree with itself (totals from before the flush, rows after).
    body = usage(admin, session=SESSION)
    rows = body["data"]
    assert len(rows) == len(expected)
    assert {row["request_id"] for row in rows} == set(expected)
    for row in rows:
        prompt_tokens, completion_tokens, stream = expected[row["request_id"]]
        assert row["tenant_id"] == DEMO_TENANT
        assert row["key_id"]
        assert row["session"] == SESSION
        assert row["workflow"] == WORKFLOW
        assert row["model"] == CHAT_MODEL
        assert row["deployment"] == PRIMARY
        assert row["provider"] == "sim"
        assert row["status"] == 200
        assert row["error_code"] is None
        assert row["stream"] is stream
        assert row["attempts"] == 1
        assert row["prompt_tokens"] == prompt_tokens > 0
        assert row["completion_tokens"] == completion_tokens > 0
        assert row["cost_micros"] >= 0
        assert row["cost_micros"] == prompt_tokens * PRICE_IN + completion_tokens * PRICE_OUT
        assert row["latency_us"] > 0
        assert 0 <= row["overhead_us"] <= row["latency_us"]
        if stream:
            assert row["ttft_us"] is not None and row["ttft_us"] > 0
    # Newest first.
    assert [r["ts_ms"] for r in rows] == sorted((r["ts_ms"] for r in rows), reverse=True)

    totals = body["totals"]
    assert totals["requests"] == len(rows)
    assert totals["errors"] == 0
    assert totals["prompt_tokens"] == sum(r["prompt_tokens"] for r in rows)
    assert totals["completion_tokens"] == sum(r["completion_tokens"] for r in rows)
    assert totals["cost_micros"] == sum(r["cost_micros"] for r in rows)

    # The other filters find the same rows.
    by_workflow = usage(admin, workflow=WORKFLOW)
    assert {r["request_id"] for r in by_workflow["data"]} == set(expected)
    both = usage(admin, session=SESSION, workflow=WORKFLOW, model=CHAT_MODEL, tenant=DEMO_TENANT)
    assert both["totals"] == totals
    assert len(usage(admin, session=SESSION, limit=1)["data"]) == 1
    assert usage(admin, session=SESSION, model=EMBED_MODEL)["totals"]["requests"] == 0


def test_usage_ledger_records_embeddings_and_failures(client: openai.OpenAI, admin: httpx.Client):
    session = f"s-e2e-{uuid.uuid4().hex[:8]}"
    tags = {"x-keel-session": session}
    client.embeddings.create(model=EMBED_MODEL, input=["a", "b"], extra_headers=tags)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=user("x"), extra_headers=tags)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=CHAT_MODEL, messages=[], extra_headers=tags)

    wait_for_rows(admin, 3, session=session)
    body = usage(admin, session=session)
    rows = {row["status"]: row for row in body["data"]}
    assert set(rows) == {200, 404, 400}
    ok = rows[200]
    assert ok["model"] == EMBED_MODEL and ok["deployment"] == EMBED
    assert ok["prompt_tokens"] > 0 and ok["completion_tokens"] == 0
    assert ok["cost_micros"] == ok["prompt_tokens"] * PRICE_IN
    assert rows[404]["error_code"] == "model_not_found"
    assert rows[404]["deployment"] is None and rows[404]["cost_micros"] == 0
    assert rows[400]["error_code"] == "invalid_request"
    assert body["totals"]["requests"] == 3
    assert body["totals"]["errors"] == 2


def test_usage_ledger_counts_anthropic_streams(client: openai.OpenAI, admin: httpx.Client):
    session = f"s-e2e-{uuid.uuid4().hex[:8]}"
    plain = client.chat.completions.create(model=ANTHROPIC_MODEL, messages=user("count me"))
    # The client does not ask for usage; keel still records it.
    for _ in client.chat.completions.create(
        model=ANTHROPIC_MODEL, messages=user("count me"), stream=True,
        extra_headers={"x-keel-session": session, "Cache-Control": "no-cache"},
    ):
        pass
    [row] = wait_for_rows(admin, 1, session=session)["data"]
    assert row["model"] == ANTHROPIC_MODEL and row["deployment"] == CLAUDE
    assert row["provider"] == "sim-anthropic"
    assert row["stream"] is True and row["status"] == 200 and row["error_code"] is None
    assert row["prompt_tokens"] == plain.usage.prompt_tokens
    assert row["completion_tokens"] == plain.usage.completion_tokens
    assert row["cost_micros"] == (
        row["prompt_tokens"] * PRICE_IN + row["completion_tokens"] * PRICE_OUT
    )


def test_usage_ledger_records_abandoned_streams(keel, sim, admin: httpx.Client):
    """A client that hangs up mid-stream still pays for what was generated:
    the row is written with status 499."""
    session = f"s-e2e-{uuid.uuid4().hex[:8]}"
    sim.http.put("/sim/config", json={"tokens_per_sec": 20}).raise_for_status()
    with make_client(keel.api_base) as c:
        stream = c.chat.completions.create(
            model=CHAT_MODEL, messages=user("I will hang up"), stream=True,
            extra_headers={"x-keel-session": session},
        )
        for chunk in stream:
            if any(ch.delta.content for ch in chunk.choices):
                break
        stream.close()
    [row] = wait_for_rows(admin, 1, session=session)["data"]
    assert row["status"] == 499, row
    assert row["stream"] is True
    assert row["deployment"] == PRIMARY
    assert row["prompt_tokens"] > 0


def test_usage_query_is_checked(admin: httpx.Client):
    r = admin.get("/usage", params={"limit": 0})
    assert_error(r, status=400, type="invalid_request_error", code="invalid_request",
                 param="limit", mentions=("limit",))
    r = admin.get("/usage", params={"sesion": "typo"})
    assert_error(r, status=400, type="invalid_request_error", code="invalid_request",
                 mentions=("sesion",))


# -- the admin API ---------------------------------------------------------------


def test_admin_routes_need_the_admin_token(keel, admin: httpx.Client):
    routes = [
        ("GET", "/tenants"),
        ("POST", "/tenants"),
        ("GET", "/keys"),
        ("POST", "/keys"),
        ("DELETE", "/keys/key_whatever"),
        ("GET", "/breakers"),
        ("POST", f"/breakers/{PRIMARY}/reset"),
        ("GET", "/usage"),
        ("GET", f"/tenants/{DEMO_TENANT}/users"),
        ("POST", f"/tenants/{DEMO_TENANT}/users"),
    ]
    for auth in [None, "Bearer wrong-token", f"Bearer {DEMO_KEY}", ADMIN_TOKEN, f"Basic {ADMIN_TOKEN}"]:
        headers = {"Authorization": auth} if auth else {}
        for method, path in routes:
            # One connection per request: keel drops the connection after
            # this refusal (see test_errors.test_connection_after_an_early_refusal).
            body = {"id": "sneaky", "tenant": DEMO_TENANT} if method == "POST" else None
            r = httpx.request(method, f"{keel.url}/admin/v1{path}", headers=headers, json=body)
            assert_error(r, status=401, type="authentication_error", code="invalid_api_key",
                         mentions=("admin token",))
    # Nothing was created on the way.
    assert "sneaky" not in [t["id"] for t in admin.get("/tenants").json()["data"]]
    assert "sneaky" not in [u["id"] for u in admin.get(f"/tenants/{DEMO_TENANT}/users").json()["data"]]


def test_tenant_key_lifecycle(keel, admin: httpx.Client, http: httpx.Client):
    tenant = f"acme-{uuid.uuid4().hex[:8]}"

    # Tenant.
    r = admin.post("/tenants", json={"id": tenant, "name": "Acme Inc"})
    assert r.status_code == 201, r.text
    assert r.json()["id"] == tenant and r.json()["name"] == "Acme Inc"
    assert tenant in [t["id"] for t in admin.get("/tenants").json()["data"]]
    r = admin.post("/tenants", json={"id": tenant})
    assert_error(r, status=409, type="invalid_request_error", code="conflict")

    # User.
    r = admin.post(f"/tenants/{tenant}/users", json={"id": "alice", "name": "Alice"})
    assert r.status_code == 201, r.text
    assert [u["id"] for u in admin.get(f"/tenants/{tenant}/users").json()["data"]] == ["alice"]

    # Key: the secret is in the creation response and nowhere else.
    r = admin.post("/keys", json={"tenant": tenant, "user": "alice", "name": "ci"})
    assert r.status_code == 201, r.text
    created = r.json()
    secret, key_id = created["secret"], created["id"]
    assert secret and key_id and secret != key_id
    assert created["tenant_id"] == tenant and created["user_id"] == "alice"
    assert created["name"] == "ci"
    assert created["revoked_ms"] is None
    assert secret.startswith(created["prefix"]) and len(created["prefix"]) < len(secret)
    assert "hash" not in created
    listed = admin.get("/keys", params={"tenant": tenant}).json()["data"]
    assert [k["id"] for k in listed] == [key_id]
    assert "secret" not in listed[0] and "hash" not in listed[0]
    assert secret not in admin.get("/keys").text

    # The new key works at once, and its calls are billed to its tenant.
    with make_client(keel.api_base, api_key=secret) as c:
        completion = c.chat.completions.create(model=CHAT_MODEL, messages=user("new key"))
        assert completion.choices[0].message.content.startswith(sim_tag("new key"))
        assert [m.id for m in c.models.list()]
    rows = wait_for_rows(admin, 1, tenant=tenant)["data"]
    assert len(rows) == 1
    assert (rows[0]["tenant_id"], rows[0]["user_id"], rows[0]["key_id"]) == (tenant, "alice", key_id)
    assert usage(admin, key=key_id)["totals"]["requests"] == 1
    assert usage(admin, user="alice", tenant=tenant)["totals"]["requests"] == 1

    # Revoked: refused at once, and revoking twice is a 404.
    r = admin.delete(f"/keys/{key_id}")
    assert r.status_code == 200, r.text
    assert r.json() == {"id": key_id, "revoked": True}
    with make_client(keel.api_base, api_key=secret) as c:
        with pytest.raises(openai.AuthenticationError) as e:
            c.chat.completions.create(model=CHAT_MODEL, messages=user("revoked key"))
    assert_error(e.value, status=401, type="authentication_error", code="invalid_api_key",
                 mentions=("revoked",))
    listed = admin.get("/keys", params={"tenant": tenant}).json()["data"]
    assert listed[0]["revoked_ms"] is not None
    r = admin.delete(f"/keys/{key_id}")
    assert_error(r, status=404, type="invalid_request_error", code="not_found", mentions=(key_id,))

    # The demo key is untouched.
    assert http.get("/v1/models", headers={"Authorization": f"Bearer {DEMO_KEY}"}).status_code == 200


def test_admin_api_refuses_bad_input(admin: httpx.Client):
    r = admin.post("/keys", json={"tenant": "no-such-tenant-e2e"})
    assert_error(r, status=404, type="invalid_request_error", code="not_found",
                 mentions=("no-such-tenant-e2e",))
    r = admin.post("/tenants", json={"id": "x", "colour": "blue"})
    assert_error(r, status=400, type="invalid_request_error", code="invalid_request",
                 mentions=("colour",))
    r = admin.post("/tenants", json={"id": ""})
    assert_error(r, status=400, type="invalid_request_error", code="invalid_request", param="id")
    r = admin.post("/tenants", content=b"{oops", headers={"Content-Type": "application/json"})
    assert_error(r, status=400, type="invalid_request_error", code="invalid_json")


# -- health and metrics ----------------------------------------------------------


def test_health_endpoints(http: httpx.Client):
    assert http.get("/healthz").status_code == 200
    r = http.get("/readyz")
    assert r.status_code == 200, r.text


METRIC_FAMILIES = [
    "keel_request_duration_seconds",
    "keel_gateway_overhead_seconds",
    "keel_time_to_first_token_seconds",
    "keel_tokens_total",
    "keel_errors_total",
    "keel_breaker_state",
]


def test_metrics_expose_the_core_families(client: openai.OpenAI, http: httpx.Client):
    client.chat.completions.create(model=CHAT_MODEL, messages=user("metrics plain"))
    for _ in client.chat.completions.create(
        model=CHAT_MODEL, messages=user("metrics stream"), stream=True
    ):
        pass
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="metrics-missing", messages=user("x"))

    r = http.get("/metrics")
    assert r.status_code == 200
    text = r.text
    for family in METRIC_FAMILIES:
        # Counters are declared without their `_total` suffix.
        declared = family.removesuffix("_total")
        assert re.search(rf"^# TYPE {declared} ", text, re.M), f"no TYPE line for {family}"
        assert re.search(rf"^{family}(_bucket|_count|_sum)?\{{", text, re.M), f"no samples of {family}"
    assert re.search(
        rf'^keel_request_duration_seconds_count\{{[^}}]*model="{CHAT_MODEL}"[^}}]*\}} [1-9]', text, re.M
    )
    assert re.search(
        rf'^keel_time_to_first_token_seconds_count\{{model="{CHAT_MODEL}"\}} [1-9]', text, re.M
    )
    assert re.search(
        rf'^keel_tokens_total\{{[^}}]*tenant="{DEMO_TENANT}"[^}}]*\}} [1-9]', text, re.M
    )
    assert re.search(r'^keel_errors_total\{[^}]*code="model_not_found"[^}]*\} [1-9]', text, re.M)
    assert f'keel_breaker_state{{deployment="{PRIMARY}"}} 0' in text
    # An unknown model name never becomes a label value.
    assert "metrics-missing" not in text


def gauge(http: httpx.Client, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", http.get("/metrics").text, re.M)
    assert match, f"no {name} sample"
    return float(match.group(1))


def test_in_flight_gauge_counts_requests_being_served(keel, sim, http: httpx.Client):
    """`keel_in_flight_requests` ("Requests being served") is 1 while the
    simulator holds a request, and back to 0 afterwards."""
    assert gauge(http, "keel_in_flight_requests") == 0
    sim.set_ttft_ms(2000)

    def slow_request():
        with make_client(keel.api_base) as c:
            c.chat.completions.create(model=CHAT_MODEL, messages=user("hold on"))

    worker = threading.Thread(target=slow_request)
    worker.start()
    try:
        wait_until(lambda: sim.requests_for(PRIMARY_UPSTREAM) == 1, timeout=5, interval=0.01,
                   message="the request to reach the simulator")
        value = gauge(http, "keel_in_flight_requests")
    finally:
        worker.join(timeout=30)
    assert value == 1, f"keel_in_flight_requests was {value} while a request was being served"
    assert gauge(http, "keel_in_flight_requests") == 0
