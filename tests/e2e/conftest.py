"""Fixtures for keel's end-to-end tests.

One `keel sim` (the upstream simulator) and one `keel serve` (the gateway,
pointed at the simulator) run per test session, each on a free port. The
gateway gets a dedicated config (`e2e_support.KEEL_CONFIG`) written to a
temporary directory, keeps its SQLite store there, and has the admin API on
through the KEEL_ADMIN_TOKEN environment variable.

Tests drive keel with the official `openai` client (`client`) and with raw
httpx (`http`, `admin`) where the wire format matters. Faults are switched
at runtime through the simulator's `PUT /sim/config`; the autouse
`clean_state` fixture clears them, closes every breaker, empties the
response cache and zeroes the simulator's counters around each test, so
tests do not depend on order.

The binary is $KEEL_BIN, or `<repo>/target/debug/keel` (`cargo build -p
keel`). Logs of both processes are kept in the session's temporary
directory and shown when a process fails to start.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from e2e_support import (
    ADMIN_TOKEN,
    COMPLETION_TOKENS,
    DEFAULT_BIN,
    EMBEDDING_DIM,
    clear_cache,
    make_client,
    render_config,
    reset_breakers,
)


def free_port() -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Proc:
    """A started child process, its output going to files."""

    name: str
    popen: subprocess.Popen
    stderr_path: Path

    def stderr_tail(self, limit: int = 8000) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-limit:]
        except OSError:
            return "<no stderr>"

    def stop(self) -> None:
        """SIGTERM (keel shuts down gracefully), SIGKILL if it lingers."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)


def start_process(name: str, args: list[str], logdir: Path, env: dict[str, str]) -> Proc:
    stderr_path = logdir / f"{name}.stderr.log"
    with open(logdir / f"{name}.stdout.log", "wb") as out, open(stderr_path, "wb") as err:
        popen = subprocess.Popen(
            args, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, cwd=logdir
        )
    return Proc(name, popen, stderr_path)


def wait_ready(proc: Proc, url: str, *, timeout: float = 30.0) -> None:
    """Polls `url` until it answers 200. Fails with the process's stderr if
    the process exits or the deadline passes."""
    deadline = time.monotonic() + timeout
    last = "no attempt yet"
    while time.monotonic() < deadline:
        code = proc.popen.poll()
        if code is not None:
            pytest.fail(
                f"{proc.name} exited with status {code} before it was ready.\n"
                f"--- {proc.name} stderr ---\n{proc.stderr_tail()}",
                pytrace=False,
            )
        try:
            r = httpx.get(url, timeout=2.0)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}: {r.text[:200]}"
        except httpx.HTTPError as e:
            last = repr(e)
        time.sleep(0.05)
    proc.stop()
    pytest.fail(
        f"{proc.name} was not ready at {url} within {timeout}s (last: {last}).\n"
        f"--- {proc.name} stderr ---\n{proc.stderr_tail()}",
        pytrace=False,
    )


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """Our environment without KEEL__* overrides (they would change the test
    config) or a stray admin token, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL__")}
    env.pop("KEEL_ADMIN_TOKEN", None)
    env.setdefault("KEEL_LOG", "info")
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def keel_bin() -> Path:
    path = Path(os.environ.get("KEEL_BIN") or DEFAULT_BIN)
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.exit(
            f"keel binary not found at {path}: build it with `cargo build -p keel` "
            "or set KEEL_BIN to a keel executable",
            returncode=2,
        )
    return path


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keel-e2e")


@dataclass
class Sim:
    """The running simulator and its control API."""

    proc: Proc
    url: str
    port: int
    http: httpx.Client = field(repr=False)

    def set_faults(self, *rules: str) -> dict:
        """Replaces every fault rule; each is `KIND:RATE[:MODEL_PREFIX]`."""
        r = self.http.put("/sim/config", json={"faults": list(rules)})
        assert r.status_code == 200, f"PUT /sim/config failed: {r.status_code} {r.text}"
        config = r.json()
        assert len(config["faults"]) == len(rules), config
        return config

    def clear_faults(self) -> None:
        self.set_faults()

    def heal(self) -> None:
        """No faults, no added latency, no streaming pace."""
        r = self.http.put("/sim/config", json={"faults": [], "ttft_ms": 0, "tokens_per_sec": 0})
        assert r.status_code == 200, f"PUT /sim/config failed: {r.status_code} {r.text}"

    def set_ttft_ms(self, ms: int) -> None:
        r = self.http.put("/sim/config", json={"ttft_ms": ms})
        assert r.status_code == 200, f"PUT /sim/config failed: {r.status_code} {r.text}"

    def stats(self) -> dict:
        r = self.http.get("/sim/stats")
        assert r.status_code == 200, r.text
        return r.json()

    def requests_for(self, upstream_model: str) -> int:
        """Well-formed requests the simulator got for `upstream_model` since
        the last reset."""
        return self.stats()["requests_by_model"].get(upstream_model, 0)

    def faults(self, kind: str) -> int:
        return self.stats()["faults_by_kind"][kind]

    def reset_stats(self) -> None:
        r = self.http.post("/sim/reset")
        assert r.status_code < 300, r.text


@dataclass
class Keel:
    """The running gateway."""

    proc: Proc
    url: str
    config_path: Path

    @property
    def api_base(self) -> str:
        return f"{self.url}/v1"


@pytest.fixture(scope="session")
def sim(keel_bin: Path, workdir: Path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_process(
        "sim",
        [
            str(keel_bin), "sim",
            "--listen", f"127.0.0.1:{port}",
            "--completion-tokens", str(COMPLETION_TOKENS),
            "--embedding-dim", str(EMBEDDING_DIM),
        ],
        workdir,
        child_env({}),
    )
    try:
        wait_ready(proc, f"{url}/v1/models")
        with httpx.Client(base_url=url, timeout=10.0) as http:
            yield Sim(proc, url, port, http)
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def keel(keel_bin: Path, workdir: Path, sim: Sim):
    port = free_port()
    config_path = workdir / "keel-e2e.toml"
    config_path.write_text(
        render_config(keel_port=port, sim_port=sim.port, data_dir=workdir / "store")
    )
    url = f"http://127.0.0.1:{port}"
    proc = start_process(
        "keel",
        [str(keel_bin), "serve", "--config", str(config_path), "--listen", f"127.0.0.1:{port}"],
        workdir,
        child_env({"KEEL_ADMIN_TOKEN": ADMIN_TOKEN}),
    )
    try:
        wait_ready(proc, f"{url}/healthz")
        yield Keel(proc, url, config_path)
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def http(keel: Keel):
    """A raw client for keel, sending no credentials by itself."""
    with httpx.Client(base_url=keel.url, timeout=30.0) as client:
        yield client


@pytest.fixture(scope="session")
def admin(keel: Keel):
    """A raw client for keel's admin API (`/admin/v1`), with the token."""
    with httpx.Client(
        base_url=f"{keel.url}/admin/v1",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=30.0,
    ) as client:
        yield client


@pytest.fixture(scope="session")
def client(keel: Keel):
    """The official openai client, with the demo key and no retries."""
    c = make_client(keel.api_base)
    yield c
    c.close()


@pytest.fixture(autouse=True)
def clean_state(sim: Sim, keel: Keel, admin: httpx.Client):
    """Every test starts healthy (no faults, breakers closed, simulator
    counters at zero, nothing cached) and leaves no fault behind, even when
    it fails."""
    sim.heal()
    reset_breakers(admin)
    clear_cache(admin)
    sim.reset_stats()
    yield
    sim.heal()
    if keel.proc.popen.poll() is not None:
        pytest.fail(
            f"keel exited during the test.\n--- keel stderr ---\n{keel.proc.stderr_tail()}",
            pytrace=False,
        )
    reset_breakers(admin)
