"""Refused requests: each gets the right openai exception class and an
OpenAI-style body (`error.type`, `error.code`, `error.param`, a message that
names the problem), and none of them disturbs the gateway.

keel answers some refusals before reading the request body (a bad key, a
bad attribution header) and then drops the keep-alive connection without
saying so (see test_connection_after_an_early_refusal). Those requests use a
client of their own here, so one refusal cannot break the next test's
request; the connection behaviour itself is tested once, explicitly."""

from __future__ import annotations

import json
import socket
import time

import httpx
import openai
import pytest

from e2e_support import (
    CHAT_MODEL,
    DEMO_KEY,
    EMBED_MODEL,
    MAX_BODY_BYTES,
    assert_error,
    make_client,
    sim_tag,
    user,
)

AUTH = {"Authorization": f"Bearer {DEMO_KEY}"}


def post_chat(client: openai.OpenAI, body: dict):
    """Sends `body` as is (bypassing the typed `create`), via the openai
    client so its exception mapping applies."""
    return client.post("/chat/completions", body=body, cast_to=object)


# -- authentication -----------------------------------------------------------


def test_missing_key_is_401(keel):
    r = httpx.post(
        f"{keel.api_base}/chat/completions", json={"model": CHAT_MODEL, "messages": user("hi")}
    )
    assert_error(
        r, status=401, type="authentication_error", code="invalid_api_key", param=None,
        mentions=("API key",),
    )


def test_missing_key_through_the_client_is_authentication_error(keel):
    # Omit() makes the client send no Authorization header at all.
    with make_client(keel.api_base) as c, pytest.raises(openai.AuthenticationError) as e:
        c.chat.completions.create(
            model=CHAT_MODEL, messages=user("hi"), extra_headers={"Authorization": openai.Omit()}
        )
    assert_error(
        e.value, status=401, type="authentication_error", code="invalid_api_key", param=None,
        mentions=("API key",),
    )


@pytest.mark.parametrize("call", ["chat", "embeddings", "models"])
def test_wrong_key_is_authentication_error(keel, call):
    with make_client(keel.api_base, api_key="sk-keel-not-a-real-key") as c:
        with pytest.raises(openai.AuthenticationError) as e:
            if call == "chat":
                c.chat.completions.create(model=CHAT_MODEL, messages=user("hi"))
            elif call == "embeddings":
                c.embeddings.create(model=EMBED_MODEL, input="x")
            else:
                c.models.list()
    assert_error(
        e.value, status=401, type="authentication_error", code="invalid_api_key",
        param=None, mentions=("not valid",),
    )


# -- the model ----------------------------------------------------------------


def test_unknown_model_is_404_model_not_found(client: openai.OpenAI):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-9-imaginary", messages=user("hi"))
    assert_error(
        e.value, status=404, type="invalid_request_error", code="model_not_found",
        param="model", mentions=("gpt-9-imaginary",),
    )


def test_unknown_embedding_model_is_404(client: openai.OpenAI):
    with pytest.raises(openai.NotFoundError) as e:
        client.embeddings.create(model="embed-imaginary", input="x")
    assert_error(
        e.value, status=404, type="invalid_request_error", code="model_not_found",
        param="model", mentions=("embed-imaginary",),
    )


def test_model_of_the_wrong_kind_is_400(client: openai.OpenAI):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=EMBED_MODEL, messages=user("hi"))
    assert_error(
        e.value, status=400, type="invalid_request_error", code="invalid_request",
        param="model", mentions=(EMBED_MODEL, "embedding"),
    )
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model=CHAT_MODEL, input="x")
    assert_error(
        e.value, status=400, type="invalid_request_error", code="invalid_request",
        param="model", mentions=(CHAT_MODEL, "chat"),
    )


# -- the body -----------------------------------------------------------------


def test_missing_messages_is_400(client: openai.OpenAI):
    with pytest.raises(openai.BadRequestError) as e:
        post_chat(client, {"model": CHAT_MODEL})
    error = assert_error(
        e.value, status=400, type="invalid_request_error", code="invalid_request",
        mentions=("messages",),
    )
    assert error["param"] in (None, "messages"), error


def test_empty_messages_is_400_naming_messages(client: openai.OpenAI):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=CHAT_MODEL, messages=[])
    assert_error(
        e.value, status=400, type="invalid_request_error", code="invalid_request",
        param="messages", mentions=("messages",),
    )


def test_messages_of_the_wrong_type_is_400_naming_messages(client: openai.OpenAI):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=CHAT_MODEL, messages="hello")  # type: ignore[arg-type]
    error = assert_error(
        e.value, status=400, type="invalid_request_error", param="messages",
        code=e.value.body["code"], mentions=("messages",),
    )
    assert error["code"] in ("invalid_request", "invalid_json"), error


def test_temperature_of_the_wrong_type_is_400_naming_temperature(client: openai.OpenAI):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=CHAT_MODEL, messages=user("hi"), temperature="hot"  # type: ignore[arg-type]
        )
    error = assert_error(
        e.value, status=400, type="invalid_request_error", param="temperature",
        code=e.value.body["code"], mentions=("temperature",),
    )
    assert error["code"] in ("invalid_request", "invalid_json"), error


def test_bad_message_role_is_400_naming_the_path(client: openai.OpenAI):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=CHAT_MODEL, messages=[{"role": "wizard", "content": "hi"}]  # type: ignore[list-item]
        )
    assert_error(
        e.value, status=400, type="invalid_request_error", code="invalid_request",
        param="messages[0].role", mentions=("wizard",),
    )


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("temperature", 5, ("temperature", "0 to 2")),
        ("top_p", 1.5, ("top_p", "0 to 1")),
        ("max_tokens", 0, ("max_tokens", "at least 1")),
    ],
)
def test_out_of_range_values_are_400_naming_the_field(client: openai.OpenAI, field, value, words):
    with pytest.raises(openai.BadRequestError) as e:
        post_chat(client, {"model": CHAT_MODEL, "messages": user("hi"), field: value})
    assert_error(
        e.value, status=400, type="invalid_request_error", code="invalid_request",
        param=field, mentions=words,
    )


def test_malformed_json_is_400_invalid_json(http: httpx.Client):
    r = http.post(
        "/v1/chat/completions",
        headers={**AUTH, "Content-Type": "application/json"},
        content=b'{"model": "gpt-4o-mini", "messages": [',
    )
    assert_error(r, status=400, type="invalid_request_error", code="invalid_json", mentions=("JSON",))


def test_empty_body_is_400_invalid_json(http: httpx.Client):
    r = http.post(
        "/v1/chat/completions", headers={**AUTH, "Content-Type": "application/json"}, content=b""
    )
    assert_error(r, status=400, type="invalid_request_error", code="invalid_json", mentions=("empty",))


def test_non_object_json_is_400(http: httpx.Client):
    r = http.post("/v1/chat/completions", headers=AUTH, json=["not", "an", "object"])
    error = assert_error(r, status=400, type="invalid_request_error", code=r.json()["error"]["code"])
    assert error["code"] in ("invalid_request", "invalid_json"), error


def test_body_over_the_limit_is_413(keel):
    prompt = "x" * (MAX_BODY_BYTES + 10_000)
    with make_client(keel.api_base) as c, pytest.raises(openai.APIStatusError) as e:
        c.chat.completions.create(model=CHAT_MODEL, messages=user(prompt))
    assert_error(
        e.value, status=413, type="invalid_request_error", code="payload_too_large",
        param=None, mentions=(str(MAX_BODY_BYTES),),
    )


def test_body_over_the_limit_is_413_on_embeddings(keel):
    with make_client(keel.api_base) as c, pytest.raises(openai.APIStatusError) as e:
        c.embeddings.create(model=EMBED_MODEL, input="y" * (MAX_BODY_BYTES + 1))
    assert_error(e.value, status=413, type="invalid_request_error", code="payload_too_large")


@pytest.mark.parametrize("empty", ["", [], ["ok", ""]], ids=["string", "list", "item"])
def test_empty_embedding_input_is_400_naming_input(client: openai.OpenAI, empty):
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model=EMBED_MODEL, input=empty)
    assert_error(
        e.value, status=400, type="invalid_request_error", code="invalid_request",
        param="input", mentions=("input",),
    )


@pytest.mark.parametrize(
    ("field", "value"), [("encoding_format", "hex"), ("dimensions", 0)]
)
def test_bad_embedding_options_are_400_naming_the_field(client: openai.OpenAI, field, value):
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model=EMBED_MODEL, input="x", **{field: value})
    assert_error(
        e.value, status=400, type="invalid_request_error", code="invalid_request",
        param=field, mentions=(field,),
    )


def test_bad_attribution_header_is_400(keel):
    with make_client(keel.api_base) as c, pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(
            model=CHAT_MODEL, messages=user("hi"), extra_headers={"x-keel-session": "s" * 200}
        )
    assert_error(
        e.value, status=400, type="invalid_request_error", code="invalid_request",
        param="x-keel-session", mentions=("x-keel-session",),
    )


def test_unknown_route_and_method_get_openai_style_errors(http: httpx.Client):
    r = http.get("/v1/nothing-here", headers=AUTH)
    assert_error(r, status=404, type="invalid_request_error", code="not_found", mentions=("/v1/nothing-here",))
    r = http.get("/v1/chat/completions", headers=AUTH)
    assert r.status_code in (400, 405), r.text
    assert_error(r, status=r.status_code, type="invalid_request_error", code=r.json()["error"]["code"], mentions=("GET",))


# -- nothing broke --------------------------------------------------------------


def test_gateway_still_serves_after_every_kind_of_refusal(client: openai.OpenAI, keel):
    chat_url, embed_url = f"{keel.api_base}/chat/completions", f"{keel.api_base}/embeddings"
    refusals = [
        lambda: httpx.post(chat_url, json={"model": CHAT_MODEL, "messages": user("x")}),
        lambda: httpx.post(chat_url, headers=AUTH, content=b"{nope"),
        lambda: httpx.post(chat_url, headers=AUTH, content=b"x" * (MAX_BODY_BYTES * 2)),
        lambda: httpx.post(chat_url, headers=AUTH, json={"model": "nope", "messages": user("x")}),
        lambda: httpx.post(chat_url, headers=AUTH, json={"model": CHAT_MODEL}),
        lambda: httpx.post(embed_url, headers=AUTH, json={"model": EMBED_MODEL, "input": ""}),
        lambda: httpx.post(
            chat_url, headers=AUTH,
            json={"model": CHAT_MODEL, "messages": user("x"), "stream": "yes"},
        ),
    ]
    for refuse in refusals:
        r = refuse()
        assert 400 <= r.status_code < 500, (r.status_code, r.text)
        assert r.json()["error"]["code"]
    assert keel.proc.popen.poll() is None, "keel exited"
    completion = client.chat.completions.create(model=CHAT_MODEL, messages=user("still alive?"))
    assert completion.choices[0].message.content.startswith(sim_tag("still alive?"))
    embedding = client.embeddings.create(model=EMBED_MODEL, input="still alive?")
    assert embedding.data[0].embedding


# -- keep-alive after a refusal ---------------------------------------------------


def exchange(sock: socket.socket, request: bytes) -> bytes:
    """Sends `request` and reads one response (headers and a Content-Length
    body); returns b"" if the server closed the connection instead."""
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = next(
        (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
         if line.lower().startswith(b"content-length:")),
        0,
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/v1/chat/completions", {}),
        ("/v1/chat/completions", {"Authorization": "Bearer sk-keel-wrong"}),
        ("/v1/chat/completions", {**AUTH, "x-keel-session": "s" * 200}),
        ("/admin/v1/tenants", {}),
        # Control: refused only after the body was read; this one passes.
        ("/v1/chat/completions", AUTH),
    ],
    ids=["no-key", "wrong-key", "bad-session-header", "admin-no-token", "read-body-control"],
)
def test_connection_after_an_early_refusal(keel, path, headers):
    """HTTP/1.1 connections persist unless a response says `Connection:
    close` (RFC 9112 section 9.3). After refusing a request, keel must either
    keep serving on the connection or announce that it closes it; a silent
    close breaks clients that reuse pooled connections (the next request
    fails with "Server disconnected")."""
    port = int(keel.url.rsplit(":", 1)[1])
    body = json.dumps({"model": "no-such-model-e2e", "messages": user("hi"), "id": "t"}).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        # Headers first, the body a moment later, as a client streaming its
        # upload would send them.
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: keel\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{head}\r\n".encode()
        )
        time.sleep(0.1)
        first = exchange(sock, body)
        status_line, *header_lines = first.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
        assert status_line.split()[1] in (b"400", b"401", b"404"), first
        if any(h.lower() == b"connection: close" for h in header_lines):
            return  # announced: a client will not reuse the connection
        try:
            second = exchange(sock, b"GET /healthz HTTP/1.1\r\nHost: keel\r\n\r\n")
        except OSError as e:  # reset or broken pipe
            second = repr(e).encode()
        assert second.startswith(b"HTTP/1.1 200"), (
            f"keel closed the connection after {status_line.decode()} without "
            f"`Connection: close`; the next request got {second[:80]!r}"
        )
