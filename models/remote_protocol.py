"""The request and response fields of each server's raw `/v1/completions`, written out and checked.

Read in the servers' sources (llama.cpp `tools/server`: server-schema.cpp, server-task.cpp, server-context.cpp,
server-queue.cpp; vLLM `entrypoints/openai/protocol.py`), not guessed:

llama-server
- `prompt` as an id array is fed unchanged (no BOS added). A string would be tokenized with special-token parsing
  on, so we never send one.
- Every sampling parameter is sent, with `samplers` naming the chain: an omitted one falls back to the server's
  command-line default, which is not what the run recorded. Samplers we do not use (DRY, XTC, mirostat,
  top-n-sigma, dynamic temperature, typical) are sent switched off.
- `cache_prompt: false`: reusing another request's KV cache makes logits depend on what ran before (the server's
  README calls it nondeterministic), so the same seed would not give the same output.
- `return_tokens: true` with `verbose: true` and `response_fields`: the OpenAI-shaped answer carries neither the
  generated ids nor whether generation ended on EOS or on a stop string (`finish_reason` is "stop" for both); the
  `__verbose` object carries `tokens`, `stop_type` (eos/word/limit) and `tokens_evaluated`, trimmed to those by
  `response_fields`.
- `n` is never above 1: with `n > 1` the server merges the children's choices into the first result and drops
  their `__verbose`, so a child's ids and stop type could not be checked. Samples go as separate requests.
- Errors come back as `{"error": {"code", "message", "type"}}`; a prompt over the slot's context is a 400.

vLLM
- `prompt` as `list[int]` skips tokenization. `skip_special_tokens` defaults to true, which silently removes a
  special token the model generates from the text: sent false. `return_token_ids: true` (vLLM >= 0.10.2) adds
  `prompt_token_ids` and `token_ids` to each choice. Omitted sampling parameters are filled from the model's
  `generation_config.json` (unless served with `--generation-config vllm`): every one is sent.
- `n` with a `seed`: child k samples with `seed + k`, so samples whose seeds are consecutive go as one request.
- `finish_reason` "stop" with `stop_reason` a string means a stop string, an int a stop token id, null EOS.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from gristmill.models.base import GenerationParams

LLAMA_SERVER = "llama-server"
VLLM = "vllm"
SERVER_KINDS = (LLAMA_SERVER, VLLM)
COMPLETIONS_PATH = "/v1/completions"
MODELS_PATH = "/v1/models"
DETOKENIZE_PATH = "/detokenize"  # both servers: ids in, text out (llama-server: "content", vLLM: "prompt")

# llama-cpp-python's own sampler order (penalties, top-k, typical, top-p, min-p, temperature, then the draw),
# named in llama-server's vocabulary, so a remote run samples as the in-process engine does
LLAMA_SAMPLERS = ["penalties", "top_k", "typ_p", "top_p", "min_p", "temperature"]
REPEAT_LAST_N = 64  # llama-cpp-python's default penalty window (last_n_tokens_size)


class ProtocolFault(ValueError):
    """The server answered 2xx but not with what the protocol promises (malformed JSON, missing fields)."""


class KindMismatch(ProtocolFault):
    """`--server-kind` names one kind and the server says it is the other: the user's command to fix."""


@dataclass(frozen=True)
class ServedModel:
    """What `GET /v1/models` said: the model id to send, the server kind and the per-sequence context."""

    model_id: str
    kind: str
    n_ctx: int | None
    raw: dict
    n_vocab: int | None = None  # llama-server says it (meta.n_vocab); vLLM does not


@dataclass(frozen=True)
class Choice:
    """One sample as the server answered it, before our checks."""

    text: str
    finish_reason: str  # the server's: stop | length (| eos where it says so)
    stop_detail: (
        str | None
    )  # why it ended, where the server says: "eos", "word" (a stop string), "limit"; None: unknown
    token_ids: tuple[int, ...] | None
    completion_tokens: int | None


@dataclass(frozen=True)
class Answer:
    prompt_tokens: int
    prompt_token_ids: tuple[int, ...] | None
    choices: tuple[Choice, ...]
    timings: dict


def detect_models(body: object, forced_kind: str | None = None) -> ServedModel:
    """Read `GET /v1/models`: llama-server says `owned_by: llamacpp` and gives `meta.n_ctx` per slot."""
    if not isinstance(body, dict) or not isinstance(body.get("data"), list) or not body["data"]:
        raise ProtocolFault("GET /v1/models did not list a model")
    card = body["data"][0]
    if not isinstance(card, dict) or not isinstance(card.get("id"), str):
        raise ProtocolFault("GET /v1/models: the first model has no id")
    owner = str(card.get("owned_by", "")).lower()
    said = LLAMA_SERVER if owner.startswith("llama") else VLLM if owner == "vllm" else None
    if forced_kind and said and forced_kind != said:  # each kind's requests and checks are the other's wrong ones
        raise KindMismatch(
            f"--server-kind {forced_kind}, but the server says it is {said} (owned_by={owner!r}); leave "
            "--server-kind out to use what the server says"
        )
    kind = forced_kind or said
    if kind is None:
        raise ProtocolFault(
            f"cannot tell the server kind from owned_by={owner!r}; give --server-kind ({' or '.join(SERVER_KINDS)})"
        )
    n_ctx = None
    meta = card.get("meta")
    if kind == LLAMA_SERVER and isinstance(meta, dict) and isinstance(meta.get("n_ctx"), int):
        n_ctx = meta["n_ctx"]
    elif isinstance(card.get("max_model_len"), int):
        n_ctx = card["max_model_len"]
    n_vocab = meta["n_vocab"] if isinstance(meta, dict) and isinstance(meta.get("n_vocab"), int) else None
    return ServedModel(model_id=card["id"], kind=kind, n_ctx=n_ctx, raw=body, n_vocab=n_vocab)


def build_request(kind: str, model_id: str, ids: list[int], params: GenerationParams, seed: int, n: int) -> dict:
    """Every field explicit: nothing is left to a server default the run did not record."""
    common = {
        "model": model_id,
        "prompt": list(ids),
        "n": n,
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k,
        "min_p": params.min_p,
        "frequency_penalty": 0.0,
        "presence_penalty": 0.0,
        "seed": seed,
        "stop": list(params.stop),
        "stream": False,
        "echo": False,
    }
    if kind == LLAMA_SERVER:
        if n != 1:
            raise ValueError("llama-server requests carry one sample (see the module docstring)")
        return {
            **common,
            "repeat_penalty": params.repeat_penalty,
            "repeat_last_n": REPEAT_LAST_N,
            "typical_p": 1.0,
            "top_n_sigma": -1.0,
            "xtc_probability": 0.0,
            "dynatemp_range": 0.0,
            "mirostat": 0,
            "dry_multiplier": 0.0,
            "ignore_eos": False,
            "n_probs": 0,
            "samplers": LLAMA_SAMPLERS,
            "cache_prompt": False,
            "return_tokens": True,
            "verbose": True,
            "response_fields": ["tokens", "stop_type", "tokens_evaluated"],
        }
    return {
        **common,
        "repetition_penalty": params.repeat_penalty,
        "stop_token_ids": [],
        "include_stop_str_in_output": False,
        "ignore_eos": False,
        "min_tokens": 0,
        "skip_special_tokens": False,
        "spaces_between_special_tokens": False,
        "return_token_ids": True,
        "truncate_prompt_tokens": None,
        "use_beam_search": False,
    }


def _int_list(value: object, what: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
        raise ProtocolFault(f"{what} is not a list of token ids")
    return tuple(value)


def _object(value: object) -> dict:
    """An optional JSON object of the answer: absent, null or not an object reads as empty."""
    return value if isinstance(value, dict) else {}


def parse_answer(kind: str, raw: bytes, n: int) -> Answer:
    """Parse and shape-check a 2xx body; anything unexpected is a ProtocolFault (the request is retried)."""
    try:
        body = json.loads(raw)
    except ValueError as error:
        raise ProtocolFault(f"malformed JSON in the response ({error})") from None
    if not isinstance(body, dict):
        raise ProtocolFault("the response is not a JSON object")
    choices = body.get("choices")
    usage = body.get("usage")
    if not isinstance(choices, list) or len(choices) != n:
        raise ProtocolFault(f"expected {n} choice(s), got {len(choices) if isinstance(choices, list) else 'none'}")
    if not isinstance(usage, dict) or not isinstance(usage.get("prompt_tokens"), int):
        raise ProtocolFault("the response has no usage.prompt_tokens")
    ordered = sorted(choices, key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0)
    verbose = _object(body.get("__verbose"))  # llama-server's extra detail (the sampled ids, why it stopped)
    parsed, prompt_ids = [], None
    for choice in ordered:
        if not isinstance(choice, dict) or not isinstance(choice.get("text"), str):
            raise ProtocolFault("a choice has no text")
        finish = choice.get("finish_reason")
        if finish not in ("stop", "length", "eos"):
            raise ProtocolFault(f"unexpected finish_reason {finish!r}")
        if kind == LLAMA_SERVER:
            ids = _int_list(verbose["tokens"], "__verbose.tokens") if "tokens" in verbose else None
            stop_type = verbose.get("stop_type")
            detail = stop_type if isinstance(stop_type, str) and stop_type in ("eos", "word", "limit") else None
            count = usage.get("completion_tokens") if isinstance(usage.get("completion_tokens"), int) else None
        else:
            ids = _int_list(choice["token_ids"], "choice.token_ids") if choice.get("token_ids") is not None else None
            if choice.get("prompt_token_ids") is not None:
                prompt_ids = _int_list(choice["prompt_token_ids"], "choice.prompt_token_ids")
            reason = choice.get("stop_reason")  # a stop string, a stop token id, or null for EOS / length
            detail = "limit" if finish == "length" else "word" if isinstance(reason, str) else "eos"
            count = len(ids) if ids is not None else (usage.get("completion_tokens") if n == 1 else None)
        parsed.append(
            Choice(
                text=choice["text"], finish_reason=finish, stop_detail=detail, token_ids=ids, completion_tokens=count
            )
        )
    timings = _object(body.get("timings"))
    cached = _object(usage.get("prompt_tokens_details")).get("cached_tokens")
    extra = {
        "server_prompt_ms": timings.get("prompt_ms"),
        "server_predicted_ms": timings.get("predicted_ms"),
        "cached_tokens": cached,
    }
    return Answer(
        prompt_tokens=usage["prompt_tokens"],
        prompt_token_ids=prompt_ids,
        choices=tuple(parsed),
        timings={k: v for k, v in extra.items() if v is not None},
    )


def error_message(raw: bytes) -> str:
    """The server's own words from an error body (`{"error": {"message"}}` on both), shortened."""
    try:
        body = json.loads(raw)
        message = body["error"]["message"] if isinstance(body.get("error"), dict) else body.get("message")
        if isinstance(message, str):
            return message[:300]
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    text = raw[:4096].decode("utf-8", errors="replace")
    if re.match(r"\s*<(!doctype|html)", text, re.IGNORECASE):  # a web page: not a completions server's error
        title = re.search(r"<title>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
        return f"an HTML page ({' '.join(title.group(1).split())[:100]!r})" if title else "an HTML page"
    return text[:200]


def detokenize_payload(served: ServedModel, ids: list[int]) -> dict:
    payload: dict = {"tokens": ids}
    if served.kind == VLLM:
        payload["model"] = served.model_id
    return payload


def detokenized_text(body: object) -> str | None:
    """The text of a /detokenize answer (llama-server `content`, vLLM `prompt`); None for another shape."""
    if isinstance(body, dict):
        for key in ("content", "prompt"):
            if isinstance(body.get(key), str):
                return body[key]
    return None
