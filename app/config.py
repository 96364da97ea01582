"""gristmill.toml: project defaults, typed and validated. An unknown key is an error that names it."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import get_type_hints

from gristmill.app.tomlfile import read_toml
from gristmill.models.base import GenerationParams


class ConfigError(ValueError):
    """The config file is wrong; the message names the file and the key."""


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
    n_ctx: int | None = None  # default: the model's training context, capped at n_ctx_cap
    n_ctx_cap: int = 4096
    add_bos: bool | None = None  # default: the GGUF's tokenizer.ggml.add_bos_token
    pool: str = "builtin"  # few-shot pool: builtin, or accepted (adds accepted records of the same type)
    # remote generation (llama-server, vLLM): base URLs, the served model's tokenizer, requests in flight per URL
    server: list[str] = field(default_factory=list)
    tokenizer: str | None = None  # the served model's GGUF or tokenizer.json; default: --model
    concurrency: int = 4
    server_kind: str | None = None  # llama-server or vllm; default: detected from GET /v1/models
    api_key_env: str = "GRISTMILL_API_KEY"  # the NAME of the variable holding the key, never the key
    request_timeout: float = 600.0  # seconds for one whole completion
    retries: int = 6  # tries per request before the item fails


@dataclass(frozen=True)
class ReviewConfig:
    reviewer: str | None = None  # default: the login name


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
            raise ConfigError(f"{path}: key '{name}.{key}': expected {expected}, got {type(value).__name__}")
    return cls(**values)


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
    if not path.exists():
        return Config()
    data = read_toml(path, ConfigError)
    unknown = sorted(set(data) - {"generate", "review", "keymap"})
    if unknown:
        raise ConfigError(f"{path}: key '{unknown[0]}': unknown section (known: generate, review, keymap)")
    keymap = data.get("keymap", {})
    if not isinstance(keymap, dict) or not all(isinstance(v, str) for v in keymap.values()):
        raise ConfigError(f"{path}: key 'keymap': expected a table of binding id = \"keys\"")
    return Config(
        generate=_check_section(path, "generate", GenerateConfig, data.get("generate", {})),
        review=_check_section(path, "review", ReviewConfig, data.get("review", {})),
        keymap=dict(keymap),
    )
