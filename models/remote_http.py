"""Endpoints, retries and the API key: the fault handling of remote generation, apart from the protocol.

Transient faults (connection refused, timeout, 5xx, 429, a connection cut mid-body, malformed JSON) are retried
with exponential backoff and jitter, honouring `Retry-After`, on the least-loaded endpoint still in the
rotation; after `attempts` tries the item fails with the last reason. A 4xx other than 408/429 is the
server refusing this request (e.g. a prompt over its context): retrying would not help, the item fails at once.
An endpoint that fails `bench_after` times in a row leaves the rotation for `bench_s` seconds (doubling while it
keeps failing) and is then tried again.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import ssl
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpcore

from gristmill.models.base import EngineError
from gristmill.models.remote_protocol import ServedModel, error_message

log = logging.getLogger("gristmill.remote")


class Secret:
    """The API key: its repr never shows it, so a traceback with locals or a log line cannot leak it."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


class Fault(Exception):
    """A transient failure: retry, maybe elsewhere. `retry_after` is the server's Retry-After in seconds."""

    def __init__(self, reason: str, retry_after: float | None = None, unavailable: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        # no server there to answer (connection refused, 503 while a model loads): a server down or restarting
        self.unavailable = unavailable


class Rejected(Exception):
    """The server refused this request (4xx): retrying the same request cannot succeed."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6  # tries per request, across endpoints
    base_s: float = 0.5  # first backoff; doubles per try
    max_s: float = 30.0
    max_retry_after_s: float = 120.0  # a server asking for longer is asked again after this
    bench_after: int = 3  # consecutive failures that take an endpoint out of the rotation
    bench_s: float = 30.0  # first time out of the rotation; doubles while it keeps failing
    max_bench_s: float = 600.0
    connect_timeout_s: float = 10.0
    timeout_s: float = 600.0  # a whole completion: long generations on a busy server take minutes
    # every server out of the rotation: requests wait (spending no try) this long for one to come back, as a
    # server restarting with a 20 GB model takes minutes; then they fail
    outage_s: float = 600.0
    down_probe_s: float = 10.0  # how often a server that is not there (refused, 503) is looked for again

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """Exponential with equal jitter (half fixed, half random), never shorter than Retry-After."""
        delay = min(self.max_s, self.base_s * (2**attempt))
        delay = delay / 2 + random.uniform(0, delay / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_retry_after_s))
        return delay


ENDPOINT_PATHS = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/completions", "/completion")


def normalize_url(url: str) -> str:
    """`http://host:8080`, `http://host:8080/` and `http://host:8080/v1` all name the same server."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--server {url!r}: expected http://HOST:PORT or https://HOST:PORT")
    if parts.username or parts.password:
        raise ValueError(
            "--server: credentials in the URL are not accepted (they would be stored with the "
            "run); put the key in the environment variable named by --api-key-env"
        )
    try:
        parts.port  # noqa: B018 - parsing the port is the check: urlsplit itself accepts any digits
    except ValueError:
        raise ValueError(f"--server {url!r}: the port must be a number from 0 to 65535") from None
    path = parts.path.rstrip("/")
    for endpoint in ENDPOINT_PATHS:  # a pasted endpoint: /v1/completions would be asked for /v1/completions/v1/models
        if path.endswith(endpoint):
            raise ValueError(
                f"--server {url!r}: give the server's base URL ({parts.scheme}://{parts.netloc}"
                f"{path[: -len(endpoint)]}), not its {endpoint} endpoint"
            )
    if path.endswith("/v1"):
        path = path[:-3]
    return f"{parts.scheme}://{parts.netloc}{path}"


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass
class Endpoint:
    url: str
    concurrency: int
    served: ServedModel | None = None
    in_flight: int = 0  # samples
    consecutive_failures: int = 0
    benched_until: float = 0.0
    bench_s: float = 0.0
    requests: int = 0
    failures: int = 0
    last_error: str | None = None
    probing: bool = False  # back from the bench: one request at a time tries it until it answers
    unavailable: bool = False  # its last failure said no server is there (down, restarting, loading)

    def describe(self) -> dict:
        return {
            "url": self.url,
            "kind": self.served.kind if self.served else None,
            "model": self.served.model_id if self.served else None,
            "n_ctx": self.served.n_ctx if self.served else None,
            "concurrency": self.concurrency,
            "requests": self.requests,
            "failures": self.failures,
            "in_rotation": self.benched_until <= time.monotonic(),
        }


@dataclass
class EndpointPool:
    """Spreads requests by load over the endpoints in the rotation. Used from the event loop thread only."""

    endpoints: list[Endpoint]
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    down_since: float | None = None  # when the last endpoint left the rotation (None: one is in it)

    def pick(self, avoid: Endpoint | None = None) -> Endpoint | None:
        """The least loaded endpoint in the rotation. One back from the bench takes a single request (a probe)
        until it answers. While every endpoint is out and none of them answers with errors (no server there:
        down or restarting), None: the caller waits, spending no try. A server that answers with errors is
        tried at once, as tries count."""
        now = time.monotonic()
        usable = [e for e in self.endpoints if e.benched_until <= now and not (e.bench_s and e.probing)]
        if not usable:
            erroring = [e for e in self.endpoints if not e.unavailable]
            if erroring:
                self.down_since = None
                return min(erroring, key=lambda e: e.benched_until)
            if self.down_since is None:
                self.down_since = now
            return None
        if avoid is not None and len(usable) > 1:
            usable = [e for e in usable if e is not avoid] or usable
        chosen = min(usable, key=lambda e: (e.in_flight / e.concurrency, e.requests))
        if chosen.bench_s:
            chosen.probing = True  # the outage clock runs on until it answers
        else:
            self.down_since = None
        return chosen

    def down_for(self) -> float:
        """Seconds since every endpoint was out of the rotation (0 while one is in it). Read from other threads:
        the attribute is read once, as the loop thread may clear it meanwhile."""
        since = self.down_since
        return 0.0 if since is None else time.monotonic() - since

    def probe_in_flight(self) -> bool:
        """Whether a server back from the bench is being tried now (its answer may take a whole completion)."""
        return any(e.probing for e in self.endpoints)

    def last_error(self) -> str | None:
        return next((e.last_error for e in self.endpoints if e.last_error), None)

    def succeeded(self, endpoint: Endpoint) -> None:
        if endpoint.bench_s:
            log.warning("endpoint %s is back in the rotation", endpoint.url)
        endpoint.consecutive_failures = 0
        endpoint.bench_s = 0.0
        endpoint.benched_until = 0.0
        endpoint.unavailable = False
        self.down_since = None

    def failed(self, endpoint: Endpoint, reason: str, unavailable: bool = False) -> None:
        endpoint.unavailable = unavailable
        endpoint.failures += 1
        endpoint.consecutive_failures += 1
        endpoint.last_error = reason
        if endpoint.benched_until > time.monotonic():
            return  # already out: this request was sent before it left
        if unavailable:  # no server there: out at once, looked for again every few seconds (a restart ends any time)
            bench = self.policy.down_probe_s
        elif endpoint.consecutive_failures >= self.policy.bench_after:
            bench = min(self.policy.max_bench_s, endpoint.bench_s * 2 or self.policy.bench_s)
        else:
            return
        if bench != endpoint.bench_s:  # said when it leaves or its time out changes, not at every probe
            log.warning(
                "endpoint %s left the rotation after %d failure(s) in a row (%s); tried again in %.0f s",
                endpoint.url,
                endpoint.consecutive_failures,
                reason,
                bench,
            )
        endpoint.bench_s = bench
        endpoint.benched_until = time.monotonic() + bench
        if self.down_since is None and all(e.unavailable and e.bench_s for e in self.endpoints):
            self.down_since = time.monotonic()  # the outage starts with the last server found gone

    def out_of_rotation(self) -> list[str]:
        now = time.monotonic()
        return [e.url for e in self.endpoints if e.benched_until > now]


class ClientPool:
    """One httpcore connection pool of one connection per request in flight, handed out per request.

    httpcore is httpx's own transport; talking to it directly skips httpx's client layers (URL merging,
    cookies, auth and redirect handling), about 40% of the Python a request costs, which is what bounds the
    client at many requests in flight (profiled against a stub). One pool of many connections costs more:
    measured here, 64 concurrent requests through one shared pool took 1.9-3.7 s against a stub answering in
    0.25 s (the pool does work per waiting request on every change), and 0.5 s through 64 single-connection
    pools. Idle pools are kept, so connections are reused.
    """

    def __init__(self, api_key: Secret | None, policy: RetryPolicy):
        self._headers: list[tuple[bytes, bytes]] = [(b"Accept", b"application/json")]
        self.sends_key = bool(api_key)
        if api_key:
            self._headers.append((b"Authorization", f"Bearer {api_key.reveal()}".encode()))
        self.timeouts = {
            "connect": policy.connect_timeout_s,
            "read": policy.timeout_s,
            "write": policy.timeout_s,
            "pool": policy.timeout_s,
        }
        # one TLS context for all: building one reads the CA bundle (~90 ms each, measured here)
        self._tls = ssl.create_default_context()
        self._idle: list[httpcore.AsyncConnectionPool] = []
        self._all: list[httpcore.AsyncConnectionPool] = []

    def acquire(self) -> httpcore.AsyncConnectionPool:
        if self._idle:
            return self._idle.pop()
        pool = httpcore.AsyncConnectionPool(ssl_context=self._tls, max_connections=1, max_keepalive_connections=1)
        self._all.append(pool)
        return pool

    def release(self, pool: httpcore.AsyncConnectionPool) -> None:
        self._idle.append(pool)

    def request_parts(self, payload: dict | None) -> tuple[list[tuple[bytes, bytes]], bytes]:
        if payload is None:
            return self._headers, b""
        body = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
        return [*self._headers, (b"Content-Type", b"application/json")], body

    async def aclose(self) -> None:
        for pool in self._all:
            await pool.aclose()
        self._all.clear()
        self._idle.clear()


async def fetch(
    clients: ClientPool, method: str, url: str, payload: dict | None = None, read_timeout_s: float | None = None
) -> bytes:
    """One exchange on a pooled connection; `read_timeout_s` shortens the wait for a quick question (the
    completions' read timeout is minutes long)."""
    pool = clients.acquire()
    try:
        return await request_json(clients, pool, method, url, payload, read_timeout_s)
    finally:
        clients.release(pool)


async def request_json(
    clients: ClientPool,
    pool: httpcore.AsyncConnectionPool,
    method: str,
    url: str,
    payload: dict | None = None,
    read_timeout_s: float | None = None,
) -> bytes:
    """One HTTP exchange; every failure becomes a Fault (retry) or Rejected (do not). Returns the 2xx body."""
    headers, body = clients.request_parts(payload)
    timeouts = clients.timeouts
    if read_timeout_s is not None:
        timeouts = {**timeouts, "read": min(timeouts["read"], read_timeout_s)}
    try:
        response = await pool.request(method, url, headers=headers, content=body, extensions={"timeout": timeouts})
    except httpcore.ConnectTimeout as error:
        raise Fault(f"timeout ({type(error).__name__})", unavailable=True) from None
    except httpcore.TimeoutException as error:
        raise Fault(f"timeout ({type(error).__name__})") from None
    except httpcore.ConnectError as error:
        raise Fault(f"cannot connect ({_short(error)})", unavailable=True) from None
    except (httpcore.RemoteProtocolError, httpcore.ReadError) as error:
        raise Fault(f"connection cut mid-response ({_short(error)})") from None
    except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol) as error:
        raise Fault(f"{type(error).__name__} ({_short(error)})") from None
    status = response.status
    if status == 429 or status == 408 or status >= 500:
        raise Fault(
            f"HTTP {status}: {error_message(response.content)}",
            parse_retry_after(_header(response, b"retry-after")),
            unavailable=status == 503,
        )
    if status == 401 or status == 403:
        hint = (
            "is the API key in the environment variable named by --api-key-env?"
            if clients.sends_key
            else "no API key was sent: put it in the environment variable named by --api-key-env, "
            "GRISTMILL_API_KEY unless it names another"
        )
        raise Rejected(f"HTTP {status}: {error_message(response.content)} ({hint})")
    if status >= 400:
        raise Rejected(f"HTTP {status}: {error_message(response.content)}")
    return response.content


def _header(response: httpcore.Response, name: bytes) -> str | None:
    for key, value in response.headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _short(error: Exception) -> str:
    return (str(error) or type(error).__name__)[:200]


def unreachable(url: str, reason: str) -> EngineError:
    hint = ""
    if url.startswith("https://") and ("timeout" in reason or "SSL" in reason):  # TLS to a plain-http port
        hint = " (the URL says https: is the server plain http?)"
    return EngineError(f"server {url} did not answer GET /v1/models: {reason}{hint}")
