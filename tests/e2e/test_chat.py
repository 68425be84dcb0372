"""The happy path through the official openai client: chat (plain and
streamed, both dialects), embeddings and the model list."""

from __future__ import annotations

import math
import re

import httpx
import openai

from e2e_support import (
    ALL_ALIASES,
    ANTHROPIC_MODEL,
    CHAT_MODEL,
    CLAUDE,
    COMPLETION_TOKENS,
    DEMO_KEY,
    EMBED,
    EMBED_MODEL,
    EMBEDDING_DIM,
    PRIMARY,
    PRIMARY_UPSTREAM,
    sim_tag,
    sse_events,
    user,
)

TAG = re.compile(r"^sim:[0-9a-f]{8}$")


def answer_of(completion) -> str:
    assert completion.object == "chat.completion"
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str)
    return choice.message.content


def streamed_text(chunks) -> str:
    return "".join(
        choice.delta.content or "" for chunk in chunks for choice in chunk.choices
    )


# -- plain chat ---------------------------------------------------------------


def test_chat_answer_is_tagged_with_the_prompt_hash(client: openai.OpenAI):
    prompt = "What does a keel do?"
    completion = client.chat.completions.create(model=CHAT_MODEL, messages=user(prompt))
    text = answer_of(completion)
    words = text.split(" ")
    assert TAG.match(words[0]), text
    assert words[0] == sim_tag(prompt), text
    assert len(words) == COMPLETION_TOKENS, text
    assert completion.choices[0].finish_reason == "stop"
    assert completion.id


def test_chat_is_deterministic_per_prompt(client: openai.OpenAI):
    first = answer_of(client.chat.completions.create(model=CHAT_MODEL, messages=user("alpha")))
    again = answer_of(client.chat.completions.create(model=CHAT_MODEL, messages=user("alpha")))
    other = answer_of(client.chat.completions.create(model=CHAT_MODEL, messages=user("beta")))
    assert first == again
    assert first.split()[0] == sim_tag("alpha")
    assert other.split()[0] == sim_tag("beta")
    assert other.split()[0] != first.split()[0]


def test_chat_reports_usage(client: openai.OpenAI):
    completion = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Count the boats."},
        ],
    )
    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens > 0
    assert usage.completion_tokens == COMPLETION_TOKENS
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    # The answer is to the last user message.
    assert answer_of(completion).startswith(sim_tag("Count the boats.") + " ")


def test_max_tokens_caps_the_answer(client: openai.OpenAI):
    completion = client.chat.completions.create(
        model=CHAT_MODEL, messages=user("short please"), max_tokens=4
    )
    assert answer_of(completion).split() == answer_of(
        client.chat.completions.create(model=CHAT_MODEL, messages=user("short please"))
    ).split()[:4]
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 4


def test_chat_response_headers_name_the_deployment(client: openai.OpenAI, sim):
    raw = client.chat.completions.with_raw_response.create(
        model=CHAT_MODEL, messages=user("which deployment?")
    )
    assert raw.status_code == 200
    assert raw.headers["x-keel-deployment"] == PRIMARY
    assert raw.headers["x-keel-model"] == CHAT_MODEL
    assert raw.headers["x-keel-attempts"] == "1"
    assert raw.headers["x-request-id"]
    assert float(raw.headers["x-keel-overhead-ms"]) >= 0
    completion = raw.parse()
    assert answer_of(completion).startswith(sim_tag("which deployment?"))
    assert sim.requests_for(PRIMARY_UPSTREAM) == 1


def test_unknown_fields_are_passed_through(client: openai.OpenAI):
    completion = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=user("pass-through"),
        temperature=0.2,
        top_p=0.9,
        seed=7,
        user="end-user-1",
        extra_body={"some_future_field": {"x": 1}},
    )
    assert answer_of(completion).startswith(sim_tag("pass-through"))


# -- streaming ----------------------------------------------------------------


def test_stream_concatenates_to_the_plain_answer(client: openai.OpenAI):
    prompt = "stream me a river"
    plain = answer_of(client.chat.completions.create(model=CHAT_MODEL, messages=user(prompt)))
    chunks = list(
        client.chat.completions.create(model=CHAT_MODEL, messages=user(prompt), stream=True)
    )
    assert len(chunks) > 2
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1, "every chunk carries the same id"
    assert streamed_text(chunks) == plain
    # No usage chunk was asked for, so none arrives.
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)
    finish = [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason]
    assert finish == ["stop"]


def test_stream_with_include_usage_ends_with_a_usage_chunk(client: openai.OpenAI):
    prompt = "stream with usage"
    chunks = list(
        client.chat.completions.create(
            model=CHAT_MODEL,
            messages=user(prompt),
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.prompt_tokens > 0
    assert last.usage.completion_tokens == COMPLETION_TOKENS
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])
    assert streamed_text(chunks).startswith(sim_tag(prompt) + " ")


def test_stream_headers_and_done_marker(client: openai.OpenAI, http: httpx.Client):
    with client.chat.completions.with_streaming_response.create(
        model=CHAT_MODEL, messages=user("headers on a stream"), stream=True
    ) as response:
        assert response.headers["x-keel-deployment"] == PRIMARY
        assert response.headers["x-keel-attempts"] == "1"
        assert response.headers["content-type"].startswith("text/event-stream")
        text = streamed_text(response.parse())
    assert text.startswith(sim_tag("headers on a stream"))

    # On the wire, a clean stream ends with `data: [DONE]`.
    r = http.post(
        "/v1/chat/completions",
        headers={"Authorization": f"Bearer {DEMO_KEY}"},
        json={"model": CHAT_MODEL, "messages": user("raw stream"), "stream": True},
    )
    assert r.status_code == 200
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    assert events.count("[DONE]") == 1
    assert not any('"error"' in e for e in events)


# -- the Anthropic dialect ----------------------------------------------------


def test_anthropic_model_answers_in_openai_shape(client: openai.OpenAI):
    prompt = "hello from the other dialect"
    raw = client.chat.completions.with_raw_response.create(
        model=ANTHROPIC_MODEL,
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": prompt},
        ],
    )
    assert raw.headers["x-keel-deployment"] == CLAUDE
    completion = raw.parse()
    text = answer_of(completion)
    assert text.split(" ")[0] == sim_tag(prompt)
    assert len(text.split(" ")) == COMPLETION_TOKENS
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens > 0
    assert completion.usage.completion_tokens == COMPLETION_TOKENS
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    # Same prompt, same answer as the OpenAI dialect gives.
    openai_text = answer_of(client.chat.completions.create(model=CHAT_MODEL, messages=user(prompt)))
    assert text == openai_text


def test_anthropic_model_streams_in_openai_shape(client: openai.OpenAI):
    prompt = "stream through the anthropic dialect"
    plain = answer_of(client.chat.completions.create(model=ANTHROPIC_MODEL, messages=user(prompt)))
    chunks = list(
        client.chat.completions.create(
            model=ANTHROPIC_MODEL,
            messages=user(prompt),
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert streamed_text(chunks) == plain
    finish = [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason]
    assert finish == ["stop"]
    usage = chunks[-1].usage
    assert chunks[-1].choices == []
    assert usage is not None and usage.prompt_tokens > 0
    assert usage.completion_tokens == COMPLETION_TOKENS


def test_anthropic_stream_without_usage_has_no_usage_chunk(client: openai.OpenAI):
    chunks = list(
        client.chat.completions.create(
            model=ANTHROPIC_MODEL, messages=user("no usage please"), stream=True
        )
    )
    assert all(c.usage is None for c in chunks)
    assert streamed_text(chunks).startswith(sim_tag("no usage please"))


# -- embeddings ---------------------------------------------------------------


def norm(vector: list[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


def test_embedding_of_one_string(client: openai.OpenAI):
    raw = client.embeddings.with_raw_response.create(model=EMBED_MODEL, input="a quiet valley")
    assert raw.headers["x-keel-deployment"] == EMBED
    response = raw.parse()
    assert response.object == "list"
    assert len(response.data) == 1
    item = response.data[0]
    assert item.index == 0
    assert len(item.embedding) == EMBEDDING_DIM
    assert abs(norm(item.embedding) - 1.0) < 1e-3
    assert response.usage.prompt_tokens > 0
    assert response.usage.total_tokens == response.usage.prompt_tokens


def test_embeddings_of_a_list_are_deterministic(client: openai.OpenAI):
    texts = ["first text", "second text", "first text"]
    response = client.embeddings.create(model=EMBED_MODEL, input=texts, encoding_format="float")
    assert [d.index for d in response.data] == [0, 1, 2]
    vectors = [d.embedding for d in response.data]
    assert all(len(v) == EMBEDDING_DIM for v in vectors)
    assert vectors[0] == vectors[2], "same text, same vector"
    assert vectors[0] != vectors[1]
    # The same text alone embeds the same way (base64 on the wire: the
    # client's default), up to float32 precision.
    single = client.embeddings.create(model=EMBED_MODEL, input="second text").data[0].embedding
    assert len(single) == EMBEDDING_DIM
    assert all(abs(a - b) < 1e-6 for a, b in zip(single, vectors[1]))


def test_embedding_dimensions(client: openai.OpenAI):
    response = client.embeddings.create(model=EMBED_MODEL, input=["x", "y"], dimensions=64)
    assert [len(d.embedding) for d in response.data] == [64, 64]
    assert all(abs(norm(d.embedding) - 1.0) < 1e-3 for d in response.data)


# -- models -------------------------------------------------------------------


def test_models_list_shows_the_configured_aliases(client: openai.OpenAI):
    models = list(client.models.list())
    assert [m.id for m in models] == ALL_ALIASES
    assert all(m.object == "model" for m in models)
    assert all(m.owned_by for m in models)
