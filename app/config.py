"""gristmill.toml: project defaults, typed and validated. An unknown key is an error that names it."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import get_type_hints

from gristmill.app.tomlfile import read_toml
from gristmill.models.base import GenerationParams


DEFAULT_BATCH = 8  # measured: README "Batched generation" says why


class ConfigError(ValueError):
    """The config file is wrong; the message names the file and the key."""


INT64_MAX = 2**63 - 1  # what SQLite stores; a larger seed or count would overflow on the way in
# (low, high) for every bounded setting, shared by the config file and the command line's options
BOUNDS: dict[str, tuple[float | None, float | None]] = {
    "samples": (1, 10_000),
    "max_tokens": (1, 2**31 - 1),
    "temperature": (0.0, None),
    "top_p": (0.0, 1.0),
    "top_k": (0, 2**31 - 1),
    "min_p": (0.0, 1.0),
    "repeat_penalty": (0.0, None),
    "seed": (0, INT64_MAX),
    "threads": (1, 1024),
    "batch": (1, 256),
    "concurrency": (1, 1024),
    "gpu_layers": (-1, 100_000),
    "n_ctx": (16, 2**31 - 1),
    "n_ctx_cap": (16, 2**31 - 1),
    "request_timeout": (1.0, None),  # seconds; below 1 every request times out, and the server gets the blame
    "retries": (1, 1000),  # tries per request, the first included
    "server_wait": (0.0, None),  # seconds; 0: no waiting for a server that is gone
}
POOLS = ("builtin", "accepted")


def check_generate(config: GenerateConfig, label: Callable[[str], str]) -> None:
    """Every value within its bounds, else a ConfigError naming the setting (`label(key)`, e.g. the file and
    key, or the option): a run never starts on a value the command line itself would refuse."""
    for key, (low, high) in BOUNDS.items():
        value = getattr(config, key)
        if value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{label(key)}: must be a finite number, got {value!r}")
        if (low is not None and value < low) or (high is not None and value > high):
            span = (
                f"between {low} and {high}"
                if low is not None and high is not None
                else f"at least {low}"
                if low is not None
                else f"at most {high}"
            )
            raise ConfigError(f"{label(key)}: must be {span}, got {value!r}")
    if config.top_p == 0:
        raise ConfigError(f"{label('top_p')}: must be above 0 and at most 1, got 0")
    if config.pool not in POOLS:
        raise ConfigError(f"{label('pool')}: must be one of {', '.join(POOLS)}, got {config.pool!r}")
    if any(not s for s in config.stop):
        raise ConfigError(f"{label('stop')}: stop strings must not be empty")


@dataclass(frozen=True)
class GenerateConfig:
    model: str | None = None  # GGUF path; default: the embedded small base model
    style: str = "completion"  # completion, few-shot, urial, or a style TOML path
    samples: int = 1  # completions per instruction
    # sampling defaults come from the engine's own parameter type: one source of truth
    max_tokens: int = GenerationParams.max_tokens
    temperature: float = GenerationParams.temperature
    top_p: float = GenerationParams.top_p
    top_k: int = GenerationParams.top_k
    min_p: float = GenerationParams.min_p
    repeat_penalty: float = GenerationParams.repeat_penalty
    seed: int = GenerationParams.seed  # the run seed; each item's seed derives from it
    stop: list[str] = field(default_factory=list)  # extra stop strings beside the style's
    threads: int | None = None
    gpu_layers: int = 0  # -1 offloads every layer
    flash_attn: bool = True  # llama.cpp's flash attention: faster batched decoding; README "Batched generation"
    n_ctx: int | None = None  # default: the model's training context, capped at n_ctx_cap
    n_ctx_cap: int = 4096
    add_bos: bool | None = None  # default: the GGUF's tokenizer.ggml.add_bos_token
    pool: str = "builtin"  # few-shot pool: builtin, or accepted (adds accepted records of the same type)
    batch: int = DEFAULT_BATCH  # sequences in flight in-process (1: one at a time); README "Batched generation"
    # remote generation (llama-server, vLLM): base URLs, the served model's tokenizer, requests in flight per URL
    server: list[str] = field(default_factory=list)
    tokenizer: str | None = None  # the served model's GGUF or tokenizer.json; default: --model
    concurrency: int = 4
    server_kind: str | None = None  # llama-server or vllm; default: detected from GET /v1/models
    api_key_env: str = "GRISTMILL_API_KEY"  # the NAME of the variable holding the key, never the key
    request_timeout: float = 600.0  # seconds for one whole completion
    retries: int = 6  # tries per request before the item fails
    server_wait: float = 600.0  # seconds requests wait for a server to come back when none is there


DEFAULT_REJECT_REASONS = ("wrong", "incomplete", "unsafe", "off-format", "leaked-example")
REASON_KEY = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class ReviewConfig:
    reviewer: str | None = None  # default: the login name
    # reasons a reject may carry (R in the review app; one key each, 1-9 in this order); stored on the review row
    reject_reasons: list[str] = field(default_factory=lambda: list(DEFAULT_REJECT_REASONS))


@dataclass(frozen=True)
class Config:
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    review: ReviewConfig = field(default_factory=ReviewConfig)
    keymap: dict[str, str] = field(default_factory=dict)  # binding id -> keys, e.g. accept = "y"


def _check_section(path: Path, name: str, cls: type, values: object):
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: key '{name}': expected a table")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{path}: key '{name}.{key}': unknown (known: {', '.join(sorted(known))})")
        expected = hints[key]
        if not _matches(value, expected):
            raise ConfigError(f"{path}: key '{name}.{key}': expected {_in_words(expected)}, got {value!r}")
    return cls(**{key: _canonical(value, hints[key]) for key, value in values.items()})


def _in_words(expected) -> str:
    """A field's type as a config file's writer reads it: `a whole number`, not `<class 'int'>`."""
    text = str(expected)
    if "list" in text:
        return 'a list of strings, e.g. ["a", "b"]'
    for name, words in (("bool", "true or false"), ("int", "a whole number"), ("float", "a number"), ("str", "text")):
        if name in text:
            return words
    return text


def _canonical(value: object, expected) -> object:
    """`temperature = 1` in TOML is the float 1.0, as `--temperature 1` is: one value, one run identity."""
    text = str(expected)
    if type(value) is int and "float" in text and "int" not in text:
        return float(value)
    return value


def _matches(value: object, expected) -> bool:
    text = str(expected)
    if value is None:
        return "None" in text
    if isinstance(value, bool):
        return "bool" in text
    if isinstance(value, int):
        return "int" in text or "float" in text
    if isinstance(value, float):
        return "float" in text
    if isinstance(value, str):
        return "str" in text and "list" not in text.split("|")[0]
    if isinstance(value, list):
        return "list" in text and all(isinstance(v, str) for v in value)
    return False


def load_config(path: Path) -> Config:
    """The config at `path`; a missing file is the defaults (the caller decides whether that is an error)."""
    if not path.exists():
        return Config()
    data = read_toml(path, ConfigError)
    unknown = sorted(set(data) - {"generate", "review", "keymap"})
    if unknown:
        raise ConfigError(f"{path}: key '{unknown[0]}': unknown section (known: generate, review, keymap)")
    keymap = data.get("keymap", {})
    if not isinstance(keymap, dict):
        raise ConfigError(f"{path}: key 'keymap': expected a table of binding id = \"keys\"")
    if wrong := [binding for binding, keys in keymap.items() if not isinstance(keys, str)]:
        raise ConfigError(f"{path}: key 'keymap.{wrong[0]}': expected keys as text, e.g. {wrong[0]} = \"y\"")
    generate = _check_section(path, "generate", GenerateConfig, data.get("generate", {}))
    check_generate(generate, lambda key: f"{path}: key 'generate.{key}'")
    config = Config(
        generate=generate,
        review=_check_section(path, "review", ReviewConfig, data.get("review", {})),
        keymap=dict(keymap),
    )
    _check_reasons(path, config.review.reject_reasons)
    return config


def _check_reasons(path: Path, reasons: list[str]) -> None:
    """At most nine (one digit key each), distinct, short lowercase keys: they are stored and counted as given."""
    where = f"{path}: key 'review.reject_reasons'"
    if not 1 <= len(reasons) <= 9:
        raise ConfigError(f"{where}: expected 1 to 9 reasons, got {len(reasons)}")
    for reason in reasons:
        if not REASON_KEY.match(reason):
            raise ConfigError(f"{where}: {reason!r} is not a reason key (lowercase letters, digits, - or _)")
    if len(set(reasons)) != len(reasons):
        raise ConfigError(f"{where}: a reason is listed twice")
