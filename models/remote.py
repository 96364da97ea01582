"""Remote generation: llama-server or vLLM through raw `/v1/completions`, fed token ids we tokenized.

`RemoteEngine` is both surfaces at once:
- a `ConcurrentEngine` (capacity = concurrency × endpoints): `submit` hands a prompt job to an asyncio loop
  running in a background thread, which sends its requests (httpcore) and queues each finished sample; `poll`
  returns what finished. The scheduler drives it like in-process batching.
- a plain `Engine`: `stream` is one request, so the serial pipeline works against a server too.

Every answer is checked before it becomes a result: the server's prompt token count (and, from vLLM, the
prompt ids themselves) must equal ours, else the sample fails "server tokenized differently"; the returned
ids are rendered by our tokenizer exactly as the in-process engine renders sampled ids (control tokens as
nothing, stop strings matched on the decoded text), so a remote run stores what a local run would.
"""

from __future__ import annotations

import asyncio
import hashlib
import queue
import re
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from gristmill.models.base import (
    ContextRefused,
    Engine,
    EngineError,
    EngineSetupError,
    GenerationParams,
    GenerationResult,
    ModelInfo,
    TextPiece,
)
from gristmill.models.batch import ConcurrentEngine, PromptJob, SampleRequest, SequenceEvent
from gristmill.models.remote_discovery import discover, served_model
from gristmill.models.remote_http import (
    ClientPool,
    Endpoint,
    EndpointPool,
    Fault,
    Rejected,
    RetryPolicy,
    Secret,
    fetch,
    log,
    normalize_url,
)
from gristmill.models.remote_protocol import (
    COMPLETIONS_PATH,
    LLAMA_SERVER,
    SERVER_KINDS,
    VLLM,
    Answer,
    Choice,
    ProtocolFault,
    build_request,
    parse_answer,
)
from gristmill.models.remote_tokenizer import RemoteTokenizer, open_tokenizer
from gristmill.models.stops import StopMatcher, Utf8Stream

TOKENIZED_DIFFERENTLY = "server tokenized differently"
# a 400 that says the prompt is over the context: llama-server "exceeds the available context size", vLLM
# "maximum context length is N tokens"
OVER_CONTEXT = re.compile(r"exceeds the available context size|maximum context length", re.IGNORECASE)
OUTAGE_POLL_S = 0.25  # how often a request waiting out an outage looks for a server back in the rotation


class Mismatch(Exception):
    """The server's view of the prompt differs from ours: the sample fails, never retried."""


@dataclass(frozen=True)
class _Group:
    """Samples sent as one request: one sample, or (vLLM) consecutive seeds as one request with `n`."""

    samples: tuple[SampleRequest, ...]


class RemoteEngine(Engine, ConcurrentEngine):
    name = "remote"

    def __init__(
        self,
        servers: Sequence[str],
        tokenizer: str | Path | RemoteTokenizer,
        *,
        concurrency: int = 4,
        api_key: Secret | str | None = None,
        server_kind: str | None = None,
        add_bos: bool | None = None,
        policy: RetryPolicy | None = None,
        **_ignored,
    ):
        if not servers:
            raise EngineSetupError("no --server given")
        if concurrency < 1:
            raise EngineSetupError("--concurrency must be at least 1")
        if server_kind is not None and server_kind not in SERVER_KINDS:
            raise EngineSetupError(f"--server-kind must be one of {', '.join(SERVER_KINDS)}, not {server_kind!r}")
        try:
            urls = list(dict.fromkeys(normalize_url(url) for url in servers))
        except ValueError as error:
            raise EngineSetupError(str(error)) from None
        self.policy = policy or RetryPolicy()
        self.concurrency = concurrency
        self._key = api_key if isinstance(api_key, Secret) or api_key is None else Secret(api_key)
        self.pool = EndpointPool([Endpoint(url, concurrency) for url in urls], self.policy)
        self.tokenizer = tokenizer if isinstance(tokenizer, RemoteTokenizer) else open_tokenizer(tokenizer, add_bos)
        self._events: queue.Queue[SequenceEvent] = queue.Queue()
        self._live: set[int] = set()
        self._futures: dict[int, Future] = {}
        self._job_ids = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="gristmill-remote", daemon=True)
        self._thread.start()
        self._clients = ClientPool(self._key, self.policy)
        try:
            self._call(discover(self._clients, self.pool, self.tokenizer, self.policy, server_kind))
        except BaseException:
            self.close()
            raise
        self._info: ModelInfo | None = None

    # --- the loop thread ---------------------------------------------------------------------
    def _call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    # --- what is served ----------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return served_model(self.pool.endpoints[0]).kind

    @property
    def model_id(self) -> str:
        return served_model(self.pool.endpoints[0]).model_id

    @property
    def n_ctx(self) -> int | None:
        contexts = [n for n in (served_model(e).n_ctx for e in self.pool.endpoints) if n]
        return min(contexts) if contexts else (self.tokenizer.context_length or None)

    def info(self) -> ModelInfo:
        if self._info is None:
            tok = self.tokenizer
            identity = f"{self.kind}|{self.model_id}|{tok.fingerprint()}"
            self._info = ModelInfo(
                engine=self.name,
                path=" ".join(e.url for e in self.pool.endpoints),
                name=self.model_id,
                fingerprint="remote:sha256:" + hashlib.sha256(identity.encode()).hexdigest(),
                size_bytes=0,
                architecture=tok.architecture,
                context_length=tok.context_length,
                n_ctx=self.n_ctx or 0,
                bos_id=tok.bos_id,
                eos_id=tok.eos_id,
                add_bos=tok.add_bos,
                add_bos_source=tok.add_bos_source,
                has_chat_template=tok.has_chat_template,
                metadata={
                    "tokenizer": str(tok.path),
                    "tokenizer_fingerprint": tok.fingerprint(),
                    "server_kind": self.kind,
                    "servers": self.servers(),
                },
            )
        return self._info

    def servers(self) -> list[dict]:
        """Each endpoint and what its `GET /v1/models` answered: recorded on the run."""
        return [{**e.describe(), "models": e.served.raw if e.served else None} for e in self.pool.endpoints]

    def describe(self) -> dict:
        return {
            "capacity": self.capacity,
            "mode": "remote",
            "server_kind": self.kind,
            "concurrency": self.concurrency,
            "endpoints": [e.describe() for e in self.pool.endpoints],
            "out_of_rotation": self.pool.out_of_rotation(),
        }

    # --- Engine ------------------------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer.tokenize(text)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.detokenize(ids)

    def check_prompt(self, ids: Sequence[int], max_tokens: int) -> None:
        self.tokenizer.check_prompt(ids, max_tokens, self.n_ctx)

    def stream(self, ids: Sequence[int], params: GenerationParams) -> Iterator[TextPiece | GenerationResult]:
        self.check_prompt(ids, params.max_tokens)
        sample = SampleRequest(key=-1, seed=params.seed)
        [outcome] = self._call(self._run_group(tuple(ids), params, _Group((sample,))))
        if isinstance(outcome, EngineError):
            raise outcome
        if outcome.text:
            yield TextPiece(outcome.text)
        yield outcome

    # --- ConcurrentEngine --------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return self.concurrency * len(self.pool.endpoints)

    def in_flight(self) -> int:
        return len(self._live)

    def submit(self, job: PromptJob) -> None:
        for group in self._groups(job):
            keys = [s.key for s in group.samples]
            self._live.update(keys)
            future = asyncio.run_coroutine_threadsafe(self._send(job, group), self._loop)
            for key in keys:
                self._futures[key] = future

    def poll(self, timeout: float | None = None) -> list[SequenceEvent]:
        if not self._live and self._events.empty():
            return []
        events = []
        try:
            events.append(self._events.get(timeout=timeout) if timeout != 0 else self._events.get_nowait())
            while True:
                events.append(self._events.get_nowait())
        except queue.Empty:
            pass
        kept = [e for e in events if e.key in self._live]
        for event in kept:
            if event.final:
                self._live.discard(event.key)
                self._futures.pop(event.key, None)
        return kept

    def cancel(self) -> list[int]:
        keys = sorted(self._live)
        for future in {id(f): f for f in self._futures.values()}.values():
            future.cancel()
        self._live.clear()
        self._futures.clear()
        return keys

    def close(self) -> None:
        if getattr(self, "_loop", None) is None or self._loop.is_closed():
            return
        self.cancel()
        clients = getattr(self, "_clients", None)
        if clients is not None:
            asyncio.run_coroutine_threadsafe(clients.aclose(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
        self.tokenizer.close()

    # --- requests ----------------------------------------------------------------------------
    def _groups(self, job: PromptJob) -> list[_Group]:
        """vLLM gives child k the seed `seed + k`: consecutive seeds go as one request with `n`."""
        if self.kind != VLLM:
            return [_Group((s,)) for s in job.samples]
        groups: list[list[SampleRequest]] = []
        for sample in job.samples:
            last = groups[-1] if groups else None
            if last and sample.seed == last[0].seed + len(last) and len(last) < self.concurrency:
                last.append(sample)
            else:
                groups.append([sample])
        return [_Group(tuple(g)) for g in groups]

    async def _send(self, job: PromptJob, group: _Group) -> None:
        try:
            outcomes = await self._run_group(job.ids, job.params, group)
        except Exception as error:  # a bug must end the samples, not leave the scheduler waiting for them
            log.exception("remote request failed unexpectedly")
            outcomes = [EngineError(f"{type(error).__name__}: {error}")] * len(group.samples)
        for sample, outcome in zip(group.samples, outcomes, strict=False):
            self._events.put(SequenceEvent(sample.key, outcome))

    async def _run_group(
        self, ids: tuple[int, ...], params: GenerationParams, group: _Group
    ) -> list[GenerationResult | EngineError]:
        n = len(group.samples)
        reason, endpoint, attempt = "no attempt", None, 0
        while attempt < self.policy.attempts:
            endpoint = await self._endpoint_to_try(avoid=endpoint)
            if endpoint is None:
                last = reason if attempt or reason != "no attempt" else self.pool.last_error()
                return [EngineError(f"no server answered for {self.policy.outage_s:.0f} s; last error: {last}")] * n
            probe = endpoint.probing  # a server back from the bench, tried by this request alone
            served = served_model(endpoint)
            payload = build_request(served.kind, served.model_id, list(ids), params, group.samples[0].seed, n)
            endpoint.in_flight += n
            endpoint.requests += 1
            try:
                raw = await fetch(self._clients, "POST", endpoint.url + COMPLETIONS_PATH, payload)
                answer = parse_answer(served.kind, raw, n)
                self.pool.succeeded(endpoint)
                return [self._result(answer, choice, ids, params, endpoint) for choice in answer.choices]
            except ProtocolFault as fault:
                reason = str(fault)
                self.pool.failed(endpoint, reason)
                retry_after = None
            except Fault as fault:
                reason = fault.reason
                self.pool.failed(endpoint, reason, fault.unavailable)
                retry_after = fault.retry_after
                if fault.unavailable:  # no server there: spends no try; it left the rotation, the outage limit counts
                    log.info("request to %s found no server (%s)%s", endpoint.url, reason, " (probe)" if probe else "")
                    await asyncio.sleep(OUTAGE_POLL_S)  # never a busy loop, whatever the rotation says next
                    continue
            except Rejected as rejected:
                self.pool.succeeded(endpoint)  # it answered: the endpoint is fine, the request is not
                if OVER_CONTEXT.search(str(rejected)):
                    return [ContextRefused(f"{endpoint.url} refused the prompt as too long: {rejected}")] * n
                return [EngineError(f"{endpoint.url} refused the request: {rejected}")] * n
            except Mismatch as mismatch:
                return [EngineError(f"{TOKENIZED_DIFFERENTLY}: {mismatch} ({endpoint.url})")] * n
            finally:
                endpoint.in_flight -= n
                if probe:  # whatever ended the try (an answer, a mismatch, a cancel), the probe is over
                    endpoint.probing = False
            attempt += 1
            log.info("request to %s failed (%s); try %d of %d", endpoint.url, reason, attempt, self.policy.attempts)
            if attempt < self.policy.attempts:
                await asyncio.sleep(self.policy.backoff(attempt - 1, retry_after))
        return [EngineError(f"gave up after {self.policy.attempts} tries; last error: {reason}")] * n

    async def _endpoint_to_try(self, avoid: Endpoint | None) -> Endpoint | None:
        """An endpoint for the next try. While every one is out of the rotation (a server restarting), wait for
        one to come back without spending a try; None once that has lasted the policy's outage_s."""
        while True:
            # a probe in flight may be a server back and answering a long completion: wait for its answer
            if self.pool.down_for() >= self.policy.outage_s and not self.pool.probe_in_flight():
                return None
            if (endpoint := self.pool.pick(avoid)) is not None:
                return endpoint
            await asyncio.sleep(OUTAGE_POLL_S)

    def _result(
        self, answer: Answer, choice: Choice, ids: tuple[int, ...], params: GenerationParams, endpoint: Endpoint
    ) -> GenerationResult | EngineError:
        if answer.prompt_tokens != len(ids):
            raise Mismatch(f"it counted {answer.prompt_tokens} prompt tokens, we fed {len(ids)}")
        if answer.prompt_token_ids is not None and answer.prompt_token_ids != ids:
            raise Mismatch("its prompt ids differ from the ids we sent")
        timings = {**answer.timings, "endpoint": endpoint.url, "server_kind": served_model(endpoint).kind}
        if choice.token_ids is None:  # an older server: keep its text, say the ids were not checked
            finish = _server_finish(choice)
            return GenerationResult(
                text=choice.text,
                completion_tokens=choice.completion_tokens or 0,
                finish_reason=finish,
                timings={**timings, "ids_checked": False},
            )
        return self._render(choice, choice.token_ids, params, timings)

    def _render(
        self, choice: Choice, token_ids: tuple[int, ...], params: GenerationParams, timings: dict
    ) -> GenerationResult:
        """The sampled ids rendered as the in-process engine renders them; the server's text is only compared."""
        tok = self.tokenizer
        sampled = list(token_ids)
        foreign = [t for t in sampled if not 0 <= t < tok.n_vocab]
        if foreign:  # llama.cpp aborts the process on an id outside its vocabulary: never render one
            raise Mismatch(
                f"it sampled token id {foreign[0]}, outside the tokenizer's vocabulary of {tok.n_vocab:,} "
                "(does it serve another model than --tokenizer?)"
            )
        eos = bool(sampled) and tok.is_eog(sampled[-1])
        if eos:
            sampled.pop()
        decoder, matcher = Utf8Stream(), StopMatcher(params.stop)
        kept, control = [], 0
        for token in sampled:
            if tok.is_eog(token):  # anything after an end-of-generation token was not ours to keep
                eos = True
                break
            control += tok.is_control(token)
            kept.append(token)
            matcher.feed(decoder.feed(tok.piece(token)))
            if matcher.stopped:
                break
        if not matcher.stopped:
            matcher.feed(decoder.flush())
            if not matcher.stopped:
                matcher.flush()
        finish = "stop" if matcher.stopped else "eos" if eos else _server_finish(choice)
        extra: dict[str, bool | int] = {"ids_checked": True}
        if control:
            extra["control_tokens"] = control
        if matcher.text != choice.text:
            extra["server_text_differs"] = True
        return GenerationResult(
            text=matcher.text,
            completion_tokens=len(kept),
            finish_reason=finish,
            token_ids=tuple(kept),
            timings={**timings, **extra},
        )


def _server_finish(choice: Choice) -> str:
    """stop | length | eos from the server's own words (used where we have no ids to tell by)."""
    if choice.finish_reason == "length" or choice.stop_detail == "limit":
        return "length"
    if choice.finish_reason == "eos" or choice.stop_detail == "eos":
        return "eos"
    return "stop"


__all__ = ["RemoteEngine", "RetryPolicy", "Secret", "LLAMA_SERVER", "VLLM", "TOKENIZED_DIFFERENTLY"]
