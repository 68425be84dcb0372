"""Constants, the gateway config and small helpers shared by the e2e tests.

The fixtures live in conftest.py; this module holds what test modules
import by name (pytest puts this directory on sys.path).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import httpx
import openai
import pytest

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BIN = REPO / "target" / "debug" / "keel"

ADMIN_TOKEN = "e2e-admin-token-0123456789"
DEMO_KEY = "sk-keel-demo"
DEMO_TENANT = "demo"

# Model aliases clients use.
CHAT_MODEL = "gpt-4o-mini"
ANTHROPIC_MODEL = "claude-3-5-haiku"
EMBED_MODEL = "text-embedding-3-small"
SOLO_MODEL = "solo-chat"
ALL_ALIASES = [CHAT_MODEL, ANTHROPIC_MODEL, EMBED_MODEL, SOLO_MODEL]

# Deployment names (as in `x-keel-deployment` and the breaker API).
PRIMARY = "e2e-primary"
BACKUP = "e2e-backup"
CLAUDE = "e2e-claude"
EMBED = "e2e-embed"
SOLO = "e2e-solo"
ALL_DEPLOYMENTS = [PRIMARY, BACKUP, CLAUDE, EMBED, SOLO]

# Upstream model names the simulator sees. Each starts with its own prefix
# so that a fault rule `KIND:RATE:PREFIX` hits exactly one deployment.
PRIMARY_PREFIX = "primary-"
BACKUP_PREFIX = "backup-"
CLAUDE_PREFIX = "claude-e2e"
EMBED_PREFIX = "embed-e2e"
SOLO_PREFIX = "solo-e2e"
PRIMARY_UPSTREAM = PRIMARY_PREFIX + "gpt-4o-mini"
BACKUP_UPSTREAM = BACKUP_PREFIX + "gpt-4o-mini"
CLAUDE_UPSTREAM = CLAUDE_PREFIX + "-haiku"
EMBED_UPSTREAM = EMBED_PREFIX + "-small"
SOLO_UPSTREAM = SOLO_PREFIX + "-model"

# The chat model's retry budget and breaker: small so that the breaker opens
# after a few requests and half-opens again within about a second.
MAX_ATTEMPTS = 4
FAILURE_THRESHOLD = 3
OPEN_MS = 2000

# The single-deployment model gives up on a silent upstream after this long.
SOLO_FIRST_BYTE_MS = 1000

MAX_BODY_BYTES = 65536

# The simulator's answer length (`keel sim --completion-tokens`) and default
# embedding size.
COMPLETION_TOKENS = 16
EMBEDDING_DIM = 384

# Prices in dollars per million tokens, i.e. micro-dollars per token, so a
# ledger row's cost is exactly prompt * PRICE_IN + completion * PRICE_OUT.
PRICE_IN = 1.0
PRICE_OUT = 2.0

# The local embedding model scripts/model.sh fetched (scripts/test.sh runs
# it first), served in process under the name LOCAL_EMBEDDER.
MODEL_DIR = Path(
    os.environ.get(
        "KEEL_MODEL_DIR",
        str(Path(__file__).resolve().parents[2] / ".keel/models/all-MiniLM-L6-v2"),
    )
)
LOCAL_EMBEDDER = "minilm"
REMOTE_EMBEDDER = "sim-embedder"

KEEL_CONFIG = """\
# Written by tests/e2e/conftest.py for one test session.

[server]
listen = "127.0.0.1:{keel_port}"
max_body_bytes = {MAX_BODY_BYTES}
admin_token_env = "KEEL_ADMIN_TOKEN"
shutdown_grace_ms = 2000

[store]
data_dir = "{data_dir}"

[ledger]
capacity = 10000
max_batch = 100
flush_interval_ms = 50

[[providers]]
name = "sim"
kind = "openai"
base_url = "http://127.0.0.1:{sim_port}/v1"

[[providers]]
name = "sim-anthropic"
kind = "anthropic"
base_url = "http://127.0.0.1:{sim_port}/v1"

# A chat model with a primary and a backup deployment.
[[models]]
name = "{CHAT_MODEL}"
timeouts = {{ first_byte_ms = 5000, total_ms = 10000, stream_idle_ms = 5000 }}
retry = {{ max_attempts = {MAX_ATTEMPTS}, initial_backoff_ms = 20, max_backoff_ms = 100, max_retry_after_ms = 5000 }}
breaker = {{ failure_threshold = {FAILURE_THRESHOLD}, open_ms = {OPEN_MS}, half_open_probes = 1, success_threshold = 1 }}

[[models.deployments]]
name = "{PRIMARY}"
provider = "sim"
model = "{PRIMARY_UPSTREAM}"
priority = 0
input_per_mtok = {PRICE_IN}
output_per_mtok = {PRICE_OUT}

[[models.deployments]]
name = "{BACKUP}"
provider = "sim"
model = "{BACKUP_UPSTREAM}"
priority = 1
input_per_mtok = {PRICE_IN}
output_per_mtok = {PRICE_OUT}

# Served through the Anthropic dialect.
[[models]]
name = "{ANTHROPIC_MODEL}"
timeouts = {{ first_byte_ms = 5000, total_ms = 10000, stream_idle_ms = 5000 }}
retry = {{ max_attempts = 2, initial_backoff_ms = 20, max_backoff_ms = 100, max_retry_after_ms = 5000 }}
breaker = {{ failure_threshold = {FAILURE_THRESHOLD}, open_ms = {OPEN_MS}, half_open_probes = 1, success_threshold = 1 }}

[[models.deployments]]
name = "{CLAUDE}"
provider = "sim-anthropic"
model = "{CLAUDE_UPSTREAM}"
input_per_mtok = {PRICE_IN}
output_per_mtok = {PRICE_OUT}

[[models]]
name = "{EMBED_MODEL}"
kind = "embedding"
retry = {{ max_attempts = 2, initial_backoff_ms = 20, max_backoff_ms = 100, max_retry_after_ms = 5000 }}
breaker = {{ failure_threshold = {FAILURE_THRESHOLD}, open_ms = {OPEN_MS}, half_open_probes = 1, success_threshold = 1 }}

[[models.deployments]]
name = "{EMBED}"
provider = "sim"
model = "{EMBED_UPSTREAM}"
input_per_mtok = {PRICE_IN}

# A chat model with a single deployment: nothing to fail over to. A short
# first-byte timeout so that a hanging upstream fails fast.
[[models]]
name = "{SOLO_MODEL}"
timeouts = {{ first_byte_ms = {SOLO_FIRST_BYTE_MS}, total_ms = 10000, stream_idle_ms = 5000 }}
retry = {{ max_attempts = 2, initial_backoff_ms = 20, max_backoff_ms = 100, max_retry_after_ms = 5000 }}
breaker = {{ failure_threshold = {FAILURE_THRESHOLD}, open_ms = {OPEN_MS}, half_open_probes = 1, success_threshold = 1 }}

[[models.deployments]]
name = "{SOLO}"
provider = "sim"
model = "{SOLO_UPSTREAM}"
input_per_mtok = {PRICE_IN}
output_per_mtok = {PRICE_OUT}

[[embedders]]
name = "{LOCAL_EMBEDDER}"
kind = "local"
model_dir = "{MODEL_DIR}"

# Text embedded by the simulator's embedding model, through the gateway.
[[embedders]]
name = "{REMOTE_EMBEDDER}"
kind = "remote"
model = "{EMBED_MODEL}"
dimension = {EMBEDDING_DIM}

[vectors]
fsync = false

# The response cache: questions embedded by the local model; the solo
# model may answer from stale entries when its one deployment fails.
[cache]
embedder = "{LOCAL_EMBEDDER}"
stale_models = ["{SOLO_MODEL}"]

[[tenants]]
id = "{DEMO_TENANT}"
name = "Demo tenant"

[[keys]]
tenant = "{DEMO_TENANT}"
name = "e2e dev key"
secret = "{DEMO_KEY}"
"""


def render_config(*, keel_port: int, sim_port: int, data_dir: Path) -> str:
    """The gateway config for one session."""
    return KEEL_CONFIG.format(
        keel_port=keel_port,
        sim_port=sim_port,
        data_dir=data_dir.as_posix(),
        **{k: v for k, v in globals().items() if k.isupper()},
    )


def sim_tag(prompt: str) -> str:
    """The first word of the simulator's answer to `prompt`: `sim:` and the
    first 8 hex digits of its SHA-256."""
    return "sim:" + hashlib.sha256(prompt.encode()).hexdigest()[:8]


def user(prompt: str) -> list[dict[str, str]]:
    """A one-message conversation."""
    return [{"role": "user", "content": prompt}]


def wait_until(
    predicate: Callable[[], Any],
    *,
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str = "condition",
) -> Any:
    """Polls `predicate` until it returns something truthy and returns that,
    or fails after `timeout` seconds naming `message` and the last value or
    exception seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = predicate()
            if last:
                return last
        except Exception as e:  # noqa: BLE001 - reported below
            last = e
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message}; last: {last!r}")
        time.sleep(interval)


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The `error` object of an OpenAI-style error body, checking its shape:
    `{"error": {"message", "type", "code", "param"}}`."""
    try:
        body = response.json()
    except json.JSONDecodeError:
        pytest.fail(f"error body is not JSON: {response.status_code} {response.text!r}")
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert set(error) >= {"message", "type", "code", "param"}, error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str) and error["type"], error
    assert isinstance(error["code"], str) and error["code"], error
    assert error["param"] is None or isinstance(error["param"], str), error
    return error


def assert_error(
    exc: openai.APIStatusError | httpx.Response,
    *,
    status: int,
    type: str,
    code: str,
    param: Any = ...,
    mentions: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Checks an error response (from an openai exception or a raw httpx
    response): status, OpenAI-style body, and that the message names each of
    `mentions`. `param=...` leaves the param unchecked."""
    response = exc.response if isinstance(exc, openai.APIStatusError) else exc
    if isinstance(exc, openai.APIStatusError):
        assert exc.status_code == status, (exc.status_code, response.text)
    assert response.status_code == status, (response.status_code, response.text)
    error = error_of(response)
    assert error["type"] == type, error
    assert error["code"] == code, error
    if param is not ...:
        assert error["param"] == param, error
    for word in mentions:
        assert word.lower() in error["message"].lower(), (word, error)
    return error


def make_client(base_url: str, api_key: str = DEMO_KEY, **kwargs: Any) -> openai.OpenAI:
    """An openai client for keel. No client-side retries unless asked, so a
    test sees what keel itself did."""
    kwargs.setdefault("max_retries", 0)
    kwargs.setdefault("timeout", 30.0)
    return openai.OpenAI(base_url=base_url, api_key=api_key, **kwargs)


def breakers(admin: httpx.Client) -> dict[str, dict[str, Any]]:
    """Every breaker by deployment name, from the admin API."""
    r = admin.get("/breakers")
    assert r.status_code == 200, r.text
    return {b["deployment"]: b for b in r.json()["data"]}


def reset_breakers(admin: httpx.Client) -> None:
    """Closes every breaker through the admin API."""
    for name in ALL_DEPLOYMENTS:
        r = admin.post(f"/breakers/{name}/reset")
        assert r.status_code == 200, f"reset {name}: {r.status_code} {r.text}"
        assert r.json() == {"deployment": name, "state": "closed"}, r.text


def clear_cache(admin: httpx.Client) -> None:
    """Drops every tenant's cached answers."""
    r = admin.post("/cache/invalidate", json={"all": True})
    r.raise_for_status()


def sse_events(body: str) -> list[str]:
    """The `data:` payloads of a server-sent event body, in order."""
    events = []
    for block in body.replace("\r\n", "\n").split("\n\n"):
        data = [line[5:].lstrip() for line in block.split("\n") if line.startswith("data:")]
        if data:
            events.append("\n".join(data))
    return events
