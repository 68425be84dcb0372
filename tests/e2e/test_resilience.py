"""Failure handling with faults injected into the simulator at runtime:
failover, retries on 429, the circuit breaker, total outages and streams cut
mid-way."""

from __future__ import annotations

import json
import threading
import uuid

import httpx
import openai
import pytest

from e2e_support import (
    BACKUP,
    BACKUP_UPSTREAM,
    CHAT_MODEL,
    DEMO_KEY,
    EMBED_MODEL,
    EMBED_PREFIX,
    FAILURE_THRESHOLD,
    MAX_ATTEMPTS,
    OPEN_MS,
    PRIMARY,
    PRIMARY_PREFIX,
    PRIMARY_UPSTREAM,
    SOLO,
    SOLO_MODEL,
    SOLO_PREFIX,
    SOLO_UPSTREAM,
    assert_error,
    breakers,
    make_client,
    sim_tag,
    sse_events,
    user,
    wait_until,
)

# Every request here must reach the simulator, whose faults are the point:
# the response cache is told not to answer (`no-cache`). It still stores
# what succeeds, so these tests also run every fill path under faults.
NO_CACHE = {"Cache-Control": "no-cache"}


@pytest.fixture(scope="module")
def client(keel):
    """The openai client, asking keel not to answer from its cache."""
    c = make_client(keel.api_base, default_headers=NO_CACHE)
    yield c
    c.close()


@pytest.fixture(scope="module")
def http(keel):
    """A raw client for keel that asks it not to answer from its cache."""
    with httpx.Client(base_url=keel.url, timeout=30.0, headers=NO_CACHE) as c:
        yield c

AUTH = {"Authorization": f"Bearer {DEMO_KEY}"}


def chat(client: openai.OpenAI, prompt: str, model: str = CHAT_MODEL):
    """A plain chat call; returns (deployment, attempts, text)."""
    raw = client.chat.completions.with_raw_response.create(model=model, messages=user(prompt))
    text = raw.parse().choices[0].message.content
    return raw.headers["x-keel-deployment"], int(raw.headers["x-keel-attempts"]), text


def retry_after_of(response: httpx.Response) -> int:
    value = response.headers.get("retry-after")
    assert value is not None, f"no retry-after header: {dict(response.headers)}"
    assert value.isdigit() and int(value) >= 1, value
    return int(value)


# -- failover -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["500", "503", "malformed", "cut"])
def test_failing_primary_fails_over_to_the_backup(client: openai.OpenAI, sim, admin, kind):
    sim.set_faults(f"{kind}:1.0:{PRIMARY_PREFIX}")
    for i in range(FAILURE_THRESHOLD - 1):
        prompt = f"failover {kind} {i}"
        deployment, attempts, text = chat(client, prompt)
        assert deployment == BACKUP
        assert attempts == 2, "the primary was tried first"
        assert text.startswith(sim_tag(prompt) + " ")
    stats = sim.stats()
    assert stats["requests_by_model"][PRIMARY_UPSTREAM] == FAILURE_THRESHOLD - 1
    assert stats["requests_by_model"][BACKUP_UPSTREAM] == FAILURE_THRESHOLD - 1
    assert stats["faults_by_kind"][kind] == FAILURE_THRESHOLD - 1
    # Below the threshold the breaker stays closed but counts.
    primary = breakers(admin)[PRIMARY]
    assert primary["state"] == "closed"
    assert primary["consecutive_failures"] == FAILURE_THRESHOLD - 1


def test_stream_fails_over_before_the_first_chunk(client: openai.OpenAI, sim, http: httpx.Client):
    sim.set_faults(f"500:1.0:{PRIMARY_PREFIX}")
    with client.chat.completions.with_streaming_response.create(
        model=CHAT_MODEL, messages=user("stream failover"), stream=True
    ) as response:
        assert response.headers["x-keel-deployment"] == BACKUP
        assert response.headers["x-keel-attempts"] == "2"
        text = "".join(c.choices[0].delta.content or "" for c in response.parse() if c.choices)
    assert text.startswith(sim_tag("stream failover") + " ")
    assert len(text.split()) == 16

    r = http.post(
        "/v1/chat/completions",
        headers=AUTH,
        json={"model": CHAT_MODEL, "messages": user("raw stream failover"), "stream": True},
    )
    assert r.status_code == 200
    assert r.headers["x-keel-deployment"] == BACKUP
    assert sse_events(r.text)[-1] == "[DONE]"


def test_upstream_429_fails_over_to_the_backup(client: openai.OpenAI, sim):
    sim.set_faults(f"429:1.0:{PRIMARY_PREFIX}")
    deployment, attempts, text = chat(client, "rate limited primary")
    assert (deployment, attempts) == (BACKUP, 2)
    assert text.startswith(sim_tag("rate limited primary"))
    assert sim.faults("429") == 1


def test_upstream_429_is_retried_after_retry_after(keel, sim):
    """A single deployment answers 429 with `Retry-After: 1`: keel waits and
    tries it again. The fault is lifted as soon as the first attempt was
    seen, well within that second, so the retry succeeds."""
    sim.set_faults(f"429:1.0:{SOLO_PREFIX}")
    result: dict = {}

    def call():
        with make_client(keel.api_base) as c:
            try:
                result["value"] = chat(c, "retry me", model=SOLO_MODEL)
            except Exception as e:  # noqa: BLE001 - reported by the main thread
                result["error"] = e

    worker = threading.Thread(target=call)
    worker.start()
    try:
        wait_until(lambda: sim.requests_for(SOLO_UPSTREAM) >= 1, timeout=5, interval=0.01,
                   message="the first attempt to reach the simulator")
        sim.clear_faults()
    finally:
        worker.join(timeout=30)
    assert "error" not in result, result.get("error")
    deployment, attempts, text = result["value"]
    assert (deployment, attempts) == (SOLO, 2)
    assert text.startswith(sim_tag("retry me"))
    assert sim.requests_for(SOLO_UPSTREAM) == 2
    assert sim.faults("429") == 1


# -- the circuit breaker ----------------------------------------------------------


def trip_primary(client: openai.OpenAI, sim, admin) -> None:
    """Fails the primary until its breaker opens; every request is still
    served by the backup."""
    sim.set_faults(f"500:1.0:{PRIMARY_PREFIX}")
    for i in range(FAILURE_THRESHOLD):
        assert breakers(admin)[PRIMARY]["state"] == "closed"
        deployment, attempts, _ = chat(client, f"trip {i}")
        assert (deployment, attempts) == (BACKUP, 2)
    primary = breakers(admin)[PRIMARY]
    assert primary["state"] == "open", primary
    assert 0 <= primary["reopens_in_ms"] <= OPEN_MS, primary
    assert breakers(admin)[BACKUP]["state"] == "closed"


def test_breaker_opens_skips_the_primary_and_recovers(client: openai.OpenAI, sim, admin, http):
    trip_primary(client, sim, admin)
    seen = sim.requests_for(PRIMARY_UPSTREAM)
    assert seen == FAILURE_THRESHOLD

    # Open: requests go straight to the backup, the primary sees nothing.
    for i in range(3):
        deployment, attempts, text = chat(client, f"while open {i}")
        assert (deployment, attempts) == (BACKUP, 1)
        assert text.startswith(sim_tag(f"while open {i}"))
    assert sim.requests_for(PRIMARY_UPSTREAM) == seen
    metrics = http.get("/metrics").text
    assert f'keel_breaker_state{{deployment="{PRIMARY}"}} 2' in metrics

    # Still failing when open_ms is over: the one probe fails and the
    # breaker opens again. Requests meanwhile are served by the backup.
    def probe_seen():
        deployment, attempts, _ = chat(client, "probe while failing")
        assert deployment == BACKUP
        return attempts == 2

    wait_until(probe_seen, timeout=OPEN_MS / 1000 + 10, interval=0.05,
               message="a half-open probe to the failing primary")
    assert sim.requests_for(PRIMARY_UPSTREAM) == seen + 1
    assert breakers(admin)[PRIMARY]["state"] == "open"

    # Healed: once open_ms is over, a probe succeeds and closes the breaker.
    sim.clear_faults()

    def served_by_primary():
        deployment, attempts, _ = chat(client, "probe while healthy")
        assert attempts == 1
        return deployment == PRIMARY

    wait_until(served_by_primary, timeout=OPEN_MS / 1000 + 10, interval=0.05,
               message="the primary to serve again")
    primary = breakers(admin)[PRIMARY]
    assert primary["state"] == "closed", primary
    assert primary["consecutive_failures"] == 0
    assert chat(client, "after recovery")[:2] == (PRIMARY, 1)
    assert f'keel_breaker_state{{deployment="{PRIMARY}"}} 0' in http.get("/metrics").text


def test_half_open_breaker_lets_one_probe_through(keel, client: openai.OpenAI, sim, admin):
    """While the single probe is in flight (the simulator holds it for a
    while), the breaker is half-open and other requests use the backup."""
    trip_primary(client, sim, admin)
    sim.clear_faults()
    wait_until(lambda: breakers(admin)[PRIMARY]["reopens_in_ms"] == 0,
               timeout=OPEN_MS / 1000 + 10, message="the open period to end")
    sim.set_ttft_ms(1500)
    result: dict = {}

    def probe():
        with make_client(keel.api_base) as c:
            try:
                result["value"] = chat(c, "the probe")
            except Exception as e:  # noqa: BLE001 - reported by the main thread
                result["error"] = e

    worker = threading.Thread(target=probe)
    worker.start()
    try:
        wait_until(lambda: breakers(admin)[PRIMARY]["state"] == "half_open", timeout=5,
                   interval=0.01, message="the breaker to turn half-open")
        deployment, attempts, _ = chat(client, "during the probe")
        assert (deployment, attempts) == (BACKUP, 1)
    finally:
        worker.join(timeout=30)
    assert "error" not in result, result.get("error")
    assert result["value"][:2] == (PRIMARY, 1)
    assert breakers(admin)[PRIMARY]["state"] == "closed"


def test_breaker_reset_through_the_admin_api(client: openai.OpenAI, sim, admin):
    trip_primary(client, sim, admin)
    sim.clear_faults()
    r = admin.post(f"/breakers/{PRIMARY}/reset")
    assert r.status_code == 200
    assert r.json() == {"deployment": PRIMARY, "state": "closed"}
    assert breakers(admin)[PRIMARY]["state"] == "closed"
    assert chat(client, "after reset")[:2] == (PRIMARY, 1)
    r = admin.post("/breakers/no-such-deployment/reset")
    assert_error(r, status=404, type="invalid_request_error", code="not_found",
                 mentions=("no-such-deployment",))


# -- total outages ----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["500", "503"])
def test_every_deployment_failing_gives_503_with_retry_after(client: openai.OpenAI, sim, kind):
    sim.set_faults(f"{kind}:1.0")
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(model=CHAT_MODEL, messages=user("nobody home"))
    assert_error(e.value, status=503, type="upstream_error", code="upstream_unavailable",
                 param=None, mentions=(CHAT_MODEL, f"{MAX_ATTEMPTS} upstream attempt"))
    retry_after_of(e.value.response)
    stats = sim.stats()
    assert stats["requests_by_model"][PRIMARY_UPSTREAM] + stats["requests_by_model"][
        BACKUP_UPSTREAM
    ] == MAX_ATTEMPTS
    assert stats["faults_by_kind"][kind] == MAX_ATTEMPTS


def test_every_deployment_rate_limited_gives_429_with_retry_after(client: openai.OpenAI, sim):
    sim.set_faults("429:1.0")
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model=CHAT_MODEL, messages=user("slow down"))
    assert_error(e.value, status=429, type="upstream_error", code="upstream_rate_limited",
                 param=None, mentions=(CHAT_MODEL, "rate limit"))
    assert retry_after_of(e.value.response) >= 1
    assert sim.faults("429") == MAX_ATTEMPTS


def test_failing_stream_start_is_a_plain_error(client: openai.OpenAI, sim):
    sim.set_faults("503:1.0")
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(model=CHAT_MODEL, messages=user("no stream"), stream=True)
    assert_error(e.value, status=503, type="upstream_error", code="upstream_unavailable")
    retry_after_of(e.value.response)


def test_failing_embeddings_give_503(client: openai.OpenAI, sim):
    sim.set_faults(f"500:1.0:{EMBED_PREFIX}")
    with pytest.raises(openai.InternalServerError) as e:
        client.embeddings.create(model=EMBED_MODEL, input="x")
    assert_error(e.value, status=503, type="upstream_error", code="upstream_unavailable",
                 mentions=(EMBED_MODEL,))
    retry_after_of(e.value.response)


def test_every_breaker_open_fails_fast_without_calling_upstreams(
    client: openai.OpenAI, sim, admin
):
    sim.set_faults("500:1.0")

    def both_open():
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model=CHAT_MODEL, messages=user("outage"))
        states = breakers(admin)
        return states[PRIMARY]["state"] == "open" and states[BACKUP]["state"] == "open"

    wait_until(both_open, timeout=10, interval=0, message="both breakers to open")
    seen = sim.stats()["requests_total"]
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(model=CHAT_MODEL, messages=user("outage"))
    assert_error(e.value, status=503, type="upstream_error", code="upstream_unavailable",
                 param=None, mentions=(CHAT_MODEL, "unavailable"))
    wait = retry_after_of(e.value.response)
    assert wait <= -(-OPEN_MS // 1000), "retry-after points at the breakers' reopening"
    assert sim.stats()["requests_total"] == seen, "no upstream was called"


# -- streams cut mid-way ---------------------------------------------------------


def test_cut_stream_ends_with_an_error_event_and_no_done(http: httpx.Client, sim):
    sim.set_faults(f"cut:1.0:{SOLO_PREFIX}")
    with http.stream(
        "POST",
        "/v1/chat/completions",
        headers=AUTH,
        json={"model": SOLO_MODEL, "messages": user("cut me off"), "stream": True},
    ) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["x-keel-deployment"] == SOLO
        body = r.read().decode()
    assert "data: [DONE]" not in body
    events = sse_events(body)
    parsed = [json.loads(e) for e in events]
    assert "error" in parsed[-1], parsed[-1]
    error = parsed[-1]["error"]
    assert error["type"] == "upstream_error"
    assert error["code"] == "upstream_bad_response"
    assert error["message"]
    # What arrived before the cut is a true prefix of the answer.
    text = "".join(
        (c["choices"][0]["delta"].get("content") or "") for c in parsed[:-1] if c.get("choices")
    )
    assert text.startswith(sim_tag("cut me off"))
    assert len(text.split()) < 16


def test_cut_stream_raises_in_the_openai_client(client: openai.OpenAI, sim):
    prompt = "cut the client off"
    whole = client.chat.completions.create(model=SOLO_MODEL, messages=user(prompt))
    whole_text = whole.choices[0].message.content
    sim.set_faults(f"cut:1.0:{SOLO_PREFIX}")
    received = []
    with pytest.raises(openai.APIError) as e:
        for chunk in client.chat.completions.create(
            model=SOLO_MODEL, messages=user(prompt), stream=True
        ):
            received.extend(choice.delta.content or "" for choice in chunk.choices)
    assert not isinstance(e.value, openai.APIStatusError), "the stream had started"
    text = "".join(received)
    assert text and whole_text.startswith(text) and text != whole_text


@pytest.mark.parametrize("kind", ["cut", "malformed"])
def test_broken_plain_response_is_502(client: openai.OpenAI, sim, kind):
    sim.set_faults(f"{kind}:1.0:{SOLO_PREFIX}")
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(model=SOLO_MODEL, messages=user(f"{kind} plain"))
    assert_error(e.value, status=502, type="upstream_error", code="upstream_bad_response",
                 mentions=(SOLO_MODEL,))
    retry_after_of(e.value.response)
    assert sim.faults(kind) == 2, "the only deployment was tried twice"


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_hanging_upstream_times_out_with_504(client: openai.OpenAI, sim, stream):
    sim.set_faults(f"hang:1.0:{SOLO_PREFIX}")
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(model=SOLO_MODEL, messages=user("hello?"), stream=stream)
    assert_error(e.value, status=504, type="upstream_error", code="upstream_timeout",
                 mentions=(SOLO_MODEL,))
    retry_after_of(e.value.response)
    assert sim.faults("hang") == 2


def test_cut_stream_is_recorded_as_failed_in_the_ledger(client: openai.OpenAI, sim, admin):
    session = f"s-cut-{uuid.uuid4().hex[:8]}"
    sim.set_faults(f"cut:1.0:{SOLO_PREFIX}")
    with pytest.raises(openai.APIError):
        for _ in client.chat.completions.create(
            model=SOLO_MODEL, messages=user("cut and log"), stream=True,
            extra_headers={"x-keel-session": session},
        ):
            pass
    rows = wait_until(lambda: admin.get("/usage", params={"session": session}).json()["data"],
                      message="the cut stream's ledger row")
    assert len(rows) == 1
    row = rows[0]
    assert row["stream"] is True
    assert row["error_code"] == "upstream_bad_response"
    assert row["deployment"] == SOLO
    assert row["model"] == SOLO_MODEL
    assert row["completion_tokens"] > 0, "the words before the cut are counted"
