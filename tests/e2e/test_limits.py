"""Rate limits, budgets and the kill switch, as the official openai client
meets them. Each test adds its rules through the admin API, scoped to a
session of its own, and removes them afterwards."""

from __future__ import annotations

import uuid

import httpx
import openai
import pytest

from e2e_support import CHAT_MODEL, DEMO_TENANT, assert_error, user


@pytest.fixture
def session() -> str:
    return f"limits-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def rules(admin: httpx.Client):
    """Adds rules for one test and deletes them after it."""
    created: list[str] = []

    def add(**spec) -> dict:
        r = admin.post("/limits/rules", json=spec)
        assert r.status_code == 201, r.text
        created.append(spec["id"])
        return r.json()

    yield add
    for rule_id in created:
        admin.delete(f"/limits/rules/{rule_id}")


def test_rate_limit_headers_and_rate_limit_error(client: openai.OpenAI, rules, session: str):
    rules(id=f"rpm-{session}", scope=f"tenant={DEMO_TENANT},session={session}", requests=2, per="1m")
    headers = {"x-keel-session": session}
    for remaining in ("1", "0"):
        raw = client.chat.completions.with_raw_response.create(
            model=CHAT_MODEL, messages=user("hi"), max_tokens=5, extra_headers=headers
        )
        assert raw.headers["x-ratelimit-limit-requests"] == "2"
        assert raw.headers["x-ratelimit-remaining-requests"] == remaining
        assert raw.parse().choices[0].message.content
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(
            model=CHAT_MODEL, messages=user("hi"), max_tokens=5, extra_headers=headers
        )
    assert_error(
        caught.value,
        status=429,
        type="rate_limit_error",
        code="rate_limit_exceeded",
        mentions=(f"rpm-{session}", session),
    )
    assert int(caught.value.response.headers["retry-after"]) >= 1
    assert caught.value.response.headers["x-ratelimit-remaining-requests"] == "0"


def test_budget_refuses_what_it_cannot_cover(client: openai.OpenAI, admin: httpx.Client, rules, session: str):
    # A budget of 300 µ$: a request holding 1,000 completion tokens at
    # PRICE_OUT (2 µ$/token) can never fit; a small one does.
    rules(
        id=f"budget-{session}",
        scope=f"tenant={DEMO_TENANT},session={session}",
        budget_usd=0.0003,
        period="day",
    )
    headers = {"x-keel-session": session}
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(
            model=CHAT_MODEL, messages=user("hi"), max_tokens=1000, extra_headers=headers
        )
    body = assert_error(
        caught.value,
        status=402,
        type="insufficient_quota",
        code="budget_exceeded",
        mentions=(f"budget-{session}",),
    )
    assert "retry-after" in caught.value.response.headers, body
    ok = client.chat.completions.create(
        model=CHAT_MODEL, messages=user("hi"), max_tokens=5, extra_headers=headers
    )
    assert ok.usage.completion_tokens <= 5
    r = admin.get(
        "/limits/accounts",
        params={"rule": f"budget-{session}", "scope": f"tenant={DEMO_TENANT},session={session}"},
    )
    assert r.status_code == 200, r.text
    assert 0 < r.json()["spent_micros"] <= 300


def test_streams_under_a_budget_end_cleanly_within_it(client: openai.OpenAI, rules, session: str):
    rules(
        id=f"stream-budget-{session}",
        scope=f"tenant={DEMO_TENANT},session={session}",
        budget_usd=0.01,
        period="day",
    )
    stream = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=user("stream please"),
        max_tokens=50,
        stream=True,
        extra_headers={"x-keel-session": session},
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text


def test_the_kill_switch_blocks_at_once(client: openai.OpenAI, admin: httpx.Client, session: str):
    scope = f"tenant={DEMO_TENANT},session={session}"
    r = admin.post("/blocks", json={"scope": scope, "reason": "runaway agent"})
    assert r.status_code == 201, r.text
    try:
        with pytest.raises(openai.PermissionDeniedError) as caught:
            client.chat.completions.create(
                model=CHAT_MODEL, messages=user("hi"), extra_headers={"x-keel-session": session}
            )
        assert_error(
            caught.value, status=403, type="permission_error", code="forbidden", mentions=("runaway agent",)
        )
    finally:
        r = admin.delete(f"/blocks/{scope}")
        assert r.status_code == 200, r.text
    client.chat.completions.create(
        model=CHAT_MODEL, messages=user("hi"), max_tokens=5, extra_headers={"x-keel-session": session}
    )


@pytest.mark.parametrize(
    ("spec", "param"),
    [
        ({"id": "bad", "scope": "tenant=demo", "requests": -5, "per": "1m"}, None),
        ({"id": "bad", "scope": "org=demo", "requests": 5, "per": "1m"}, "scope"),
        ({"id": "bad", "scope": "tenant=demo", "budget_usd": 5, "period": "fortnight"}, "period"),
        ({"id": "bad", "scope": "tenant=demo", "requests": 5}, "per"),
    ],
)
def test_invalid_rules_are_refused_naming_the_problem(admin: httpx.Client, spec: dict, param):
    r = admin.post("/limits/rules", json=spec)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] in ("invalid_request", "invalid_json"), error
    if param:
        assert error["param"] == param, error
    assert admin.get("/limits/rules").json()["data"] == [] or all(
        rule["id"] != "bad" for rule in admin.get("/limits/rules").json()["data"]
    )
