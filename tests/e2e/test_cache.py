"""The response cache as a client sees it through the official openai
client: repeats and paraphrases answered from the cache (questions embedded
by the local all-MiniLM-L6-v2), near misses sent upstream, a cached answer
replayed to a streaming client, and `Cache-Control` honoured.

The simulator starts every answer with a tag of the prompt it was asked
(`sim_tag`), so a hit shows which stored question it answered."""

from __future__ import annotations

import httpx
import openai

from e2e_support import (
    CHAT_MODEL,
    sim_tag,
    user,
    wait_until,
)


def ask(client: openai.OpenAI, prompt: str, **kwargs):
    """The raw response to `prompt` (headers and the parsed completion)."""
    return client.chat.completions.with_raw_response.create(
        model=CHAT_MODEL, messages=user(prompt), temperature=0, **kwargs
    )


def cached(client: openai.OpenAI, prompt: str):
    """The first answer to `prompt` served from the cache. Fills are stored
    off the request path, so a paraphrase may arrive before its entry; it
    asks with `no-store`, so that such a miss stores no answer of its own."""

    def hit():
        raw = ask(client, prompt, extra_headers={"Cache-Control": "no-store"})
        return raw if raw.headers["x-keel-cache"] != "miss" else None

    return wait_until(hit, message=f"a cache hit for {prompt!r}")


def text(raw) -> str:
    return raw.parse().choices[0].message.content


def test_repeats_and_paraphrases_hit_and_near_misses_do_not(client):
    question = "How do I reset my password?"
    first = ask(client, question)
    assert first.headers["x-keel-cache"] == "miss"
    assert text(first).startswith(sim_tag(question))

    repeat = cached(client, question)
    assert repeat.headers["x-keel-cache"] == "exact"
    assert text(repeat) == text(first)

    paraphrase = cached(client, "How can I reset my password?")
    assert paraphrase.headers["x-keel-cache"] == "semantic"
    assert float(paraphrase.headers["x-keel-cache-similarity"]) >= 0.80
    assert text(paraphrase) == text(first)

    # Questions the embedder calls close but whose answers differ.
    for near_miss in [
        "How do I reset my password on Android?",
        "How do I not reset my password?",
        "Comment réinitialiser mon mot de passe ?",
    ]:
        raw = ask(client, near_miss)
        assert raw.headers["x-keel-cache"] == "miss", near_miss
        assert text(raw).startswith(sim_tag(near_miss)), near_miss


def test_a_cached_answer_replays_as_a_stream(client, sim):
    question = "What does a keel do?"
    first = text(ask(client, question))
    cached(client, question)

    with client.chat.completions.with_streaming_response.create(
        model=CHAT_MODEL,
        messages=user(question),
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    ) as response:
        assert response.headers["x-keel-cache"] == "exact"
        assert response.headers["content-type"].startswith("text/event-stream")
        chunks = list(response.parse())
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == first
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert sim.stats()["requests_total"] == 1


def test_cache_control_is_honoured(client, sim):
    question = "Which ports does SMTP use?"
    ask(client, question, extra_headers={"Cache-Control": "no-store"})
    assert ask(client, question).headers["x-keel-cache"] == "miss"
    assert cached(client, question).headers["x-keel-cache"] == "exact"
    fresh = ask(client, question, extra_headers={"Cache-Control": "no-cache"})
    assert fresh.headers["x-keel-cache"] == "miss"
    assert sim.stats()["requests_total"] == 3


def test_invalidation_needs_the_admin_token(keel):
    r = httpx.post(f"{keel.url}/admin/v1/cache/invalidate", json={"all": True})
    assert r.status_code == 401, r.text
