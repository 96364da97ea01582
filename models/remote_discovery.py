"""Before the first request: what each server serves (GET /v1/models: kind, model id, context, vocabulary) and
whether it reads our tokenizer's ids as we mean them (POST /detokenize). Either failing ends the setup: a run
against the wrong model would store text the model never meant."""

from __future__ import annotations

import asyncio
import json

from gristmill.models.base import EngineError, EngineSetupError
from gristmill.models.remote_http import (
    ClientPool,
    Endpoint,
    EndpointPool,
    Fault,
    Rejected,
    RetryPolicy,
    fetch,
    unreachable,
)
from gristmill.models.remote_protocol import (
    DETOKENIZE_PATH,
    MODELS_PATH,
    KindMismatch,
    ServedModel,
    detect_models,
    detokenize_payload,
    detokenized_text,
)
from gristmill.models.remote_tokenizer import RemoteTokenizer

QUESTION_TIMEOUT_S = 15.0  # for GET /v1/models and /detokenize, which a working server answers at once
# words, digits, punctuation, accents, CJK, an emoji and code: two models' vocabularies part on some of it
TOKENIZER_PROBE = "The quick brown fox, 1234.56 — café naïve 東京 🙂\n\tdef f(x): return x**2 # ok"


async def discover(
    clients: ClientPool, pool: EndpointPool, tokenizer: RemoteTokenizer, policy: RetryPolicy, forced_kind: str | None
) -> None:
    """GET /v1/models on every endpoint (a few tries each): the kind, the model id, the context."""
    for endpoint in pool.endpoints:
        reason = None
        for attempt in range(min(3, policy.attempts)):
            try:
                raw = await fetch(clients, "GET", endpoint.url + MODELS_PATH, read_timeout_s=QUESTION_TIMEOUT_S)
                endpoint.served = detect_models(json.loads(raw), forced_kind)
                break
            except KindMismatch as error:
                raise EngineSetupError(f"server {endpoint.url}: {error}") from None
            except ValueError as error:  # ProtocolFault or bad JSON: this is not a server we can use
                raise EngineError(f"server {endpoint.url}: {error}") from None
            except Rejected as error:
                raise unreachable(endpoint.url, str(error)) from None
            except Fault as fault:
                reason = fault.reason
                await asyncio.sleep(policy.backoff(attempt, fault.retry_after))
        if endpoint.served is None:
            raise unreachable(endpoint.url, reason or "no answer")
    served = [(e.url, served_model(e)) for e in pool.endpoints]
    for url, model in served:
        if tokenizer.exact_vocab and model.n_vocab is not None and model.n_vocab != tokenizer.n_vocab:
            raise EngineSetupError(
                f"server {url} serves {model.model_id!r} with a vocabulary of {model.n_vocab:,} tokens, and the "
                f"tokenizer {tokenizer.path} has {tokenizer.n_vocab:,}: they are different models; "
                "give --tokenizer the served model's GGUF or tokenizer.json"
            )
    await check_tokenizer(clients, pool, tokenizer)
    if len({s.model_id for _, s in served}) > 1 or len({s.kind for _, s in served}) > 1:
        listing = ", ".join(f"{url}: {s.kind} {s.model_id!r}" for url, s in served)
        raise EngineError(
            f"the servers do not serve the same model ({listing}); give them one name "
            f"(llama-server --alias, vllm --served-model-name)"
        )


async def check_tokenizer(clients: ClientPool, pool: EndpointPool, tokenizer: RemoteTokenizer) -> None:
    """Ask each server to turn our ids for a probe text back into text: a tokenizer of another model gives
    other text. The vocabulary's size alone misses that where a tokenizer.json is smaller than the served
    model's padded embedding, or a server does not say it (vLLM). A server without /detokenize is not asked."""
    tok = tokenizer
    ids = tok.tokenize(TOKENIZER_PROBE)
    if ids and tok.add_bos and ids[0] == tok.bos_id:
        ids = ids[1:]
    ours = " ".join(tok.detokenize(ids).split())
    for endpoint in pool.endpoints:
        served = served_model(endpoint)
        try:
            raw = await fetch(
                clients,
                "POST",
                endpoint.url + DETOKENIZE_PATH,
                detokenize_payload(served, ids),
                read_timeout_s=QUESTION_TIMEOUT_S,
            )
            theirs = detokenized_text(json.loads(raw))
        except Fault as fault:
            if fault.reason.startswith("HTTP 5"):  # llama-server fails on ids outside the served vocabulary
                raise EngineSetupError(
                    f"server {endpoint.url} could not read the tokenizer's ids for a probe sentence back "
                    f"({fault.reason}): is the tokenizer {tok.path} the served model's ({served.model_id!r})? "
                    "give --tokenizer the served model's GGUF or tokenizer.json"
                ) from None
            continue  # not answered in time: the per-item checks remain
        except (Rejected, ValueError):  # no such endpoint (an older server, a proxy): the per-item checks remain
            continue
        if theirs is not None and " ".join(theirs.split()) != ours:
            raise EngineSetupError(
                f"server {endpoint.url} reads the tokenizer's ids for {TOKENIZER_PROBE[:24]!r}... as "
                f"{theirs[:40]!r}: the tokenizer {tok.path} is not the served model's "
                f"({served.model_id!r}); they are different models; give --tokenizer the served model's GGUF "
                "or tokenizer.json"
            )


def served_model(endpoint: Endpoint) -> ServedModel:
    """What the endpoint serves. `discover` fills it for every endpoint or raises, so a None here
    is a bug, not a server's answer."""
    if endpoint.served is None:
        raise EngineError(f"server {endpoint.url} was never asked what it serves")
    return endpoint.served
