"""Remote engine against loopback stubs: every fault retried or failed with its reason, each server's fields,
the concurrent surface, endpoint rotation, and the API key kept out of the database, the log and exports."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import pytest

from gristmill.models import EngineError, GenerationParams, PromptRefused
from gristmill.models.batch import PromptJob, SampleRequest
from gristmill.models.remote import TOKENIZED_DIFFERENTLY, RemoteEngine
from gristmill.models.remote_http import EndpointPool, Endpoint, RetryPolicy, Secret, parse_retry_after
from gristmill.models.remote_tokenizer import open_tokenizer
from remote_stub import StubServer, free_port

FAST = RetryPolicy(attempts=4, base_s=0.001, max_s=0.01, timeout_s=1.0, connect_timeout_s=1.0, bench_s=0.001,
                   outage_s=3.0, down_probe_s=0.001)
PROMPT = "Q: What is the capital of France? <|im_start|> <start_of_turn>\nA:"


@pytest.fixture(scope="module")
def tok(gemma_path):
    tokenizer = open_tokenizer(gemma_path)
    yield tokenizer
    tokenizer.close()


@pytest.fixture(scope="module")
def reply(tok):
    ids = [i for i in tok.tokenize(" Paris is the capital.") if i != tok.bos_id]
    return ids + [tok.eos_id]


class KeepTokenizer:
    """Engines in these tests share one vocab-only tokenizer; closing an engine must not free it."""

    def __init__(self, tok):
        self.tok = tok

    def __getattr__(self, name):
        return getattr(self.tok, name)


def engine_for(stub_urls, tok, **options) -> RemoteEngine:
    options.setdefault("policy", FAST)
    engine = RemoteEngine(stub_urls, tok, **options)
    engine.tokenizer.close = lambda: None  # the module's tokenizer outlives each engine
    return engine


@pytest.mark.parametrize("kind", ["vllm", "llama-server"])
def test_answer_rendered_from_ids_like_in_process(kind, tok, reply, gemma):
    with StubServer(kind, reply_ids=reply, reply_text=" Paris is the capital.<eos>") as stub:
        engine = engine_for([stub.url], tok)
        try:
            ids = engine.tokenize(PROMPT)
            result = engine.generate(ids, GenerationParams(max_tokens=32, seed=7))
        finally:
            engine.close()
    assert ids == gemma.tokenize(PROMPT)  # the in-process tokenizer, special parsing off
    assert 105 not in ids  # <start_of_turn> typed in text stays text
    assert result.text == " Paris is the capital."  # ours, from the ids: the server's "<eos>" text is not kept
    assert result.finish_reason == "eos"
    assert result.completion_tokens == len(reply) - 1
    assert result.timings["endpoint"] == stub.url and result.timings["ids_checked"] is True
    sent = stub.requests[0]
    assert sent["prompt"] == ids and sent["seed"] == 7 and sent["n"] == 1
    for field in ("max_tokens", "temperature", "top_p", "top_k", "min_p", "stop", "frequency_penalty",
                  "presence_penalty"):
        assert field in sent
    if kind == "vllm":
        assert sent["skip_special_tokens"] is False and sent["return_token_ids"] is True
        assert sent["repetition_penalty"] == 1.0 and sent["stop_token_ids"] == []
    else:
        assert sent["cache_prompt"] is False and sent["return_tokens"] is True and sent["verbose"] is True
        assert sent["samplers"] and sent["repeat_penalty"] == 1.0 and sent["dry_multiplier"] == 0.0


def test_stop_string_matched_on_decoded_ids(tok, reply):
    with StubServer("vllm", reply_ids=reply, reply_text=" Paris") as stub:
        engine = engine_for([stub.url], tok)
        try:
            result = engine.generate(engine.tokenize("Q: x\nA:"), GenerationParams(max_tokens=32, stop=(" is",)))
        finally:
            engine.close()
    assert result.text == " Paris" and result.finish_reason == "stop"


def test_length_when_max_tokens_reached(tok, reply):
    with StubServer("llama-server", reply_ids=reply) as stub:
        engine = engine_for([stub.url], tok)
        try:
            result = engine.generate(engine.tokenize("Q: x\nA:"), GenerationParams(max_tokens=2))
        finally:
            engine.close()
    assert result.finish_reason == "length" and result.completion_tokens == 2


@pytest.mark.parametrize("fault", ["500", "503", "429", "timeout", "cut", "close", "badjson"])
def test_each_fault_is_retried_then_succeeds(fault, tok, reply):
    with StubServer("vllm", reply_ids=reply, faults=[fault, fault], hang_s=2.0) as stub:
        engine = engine_for([stub.url], tok)
        try:
            result = engine.generate(engine.tokenize("Q: x\nA:"), GenerationParams(max_tokens=32))
        finally:
            engine.close()
    assert result.text == " Paris is the capital."
    assert len(stub.requests) == 3  # two faults, then the answer


@pytest.mark.parametrize("fault, reason", [("500", "HTTP 500"), ("429", "HTTP 429"), ("timeout", "timeout"),
                                           ("cut", "connection cut"), ("close", "connection cut"),
                                           ("badjson", "malformed JSON")])
def test_each_fault_fails_the_item_with_its_reason_after_the_limit(fault, reason, tok, reply):
    with StubServer("vllm", reply_ids=reply, faults=[fault] * 10, hang_s=2.0) as stub:
        engine = engine_for([stub.url], tok)
        try:
            with pytest.raises(EngineError) as raised:
                engine.generate(engine.tokenize("Q: x\nA:"), GenerationParams(max_tokens=32))
        finally:
            engine.close()
    assert len(stub.requests) == FAST.attempts
    assert "gave up after 4 tries" in str(raised.value) and reason in str(raised.value)


def test_connection_refused_is_retried_on_another_endpoint_and_leaves_the_rotation(tok, reply, caplog):
    dead = f"http://127.0.0.1:{free_port()}"
    with StubServer("vllm", reply_ids=reply) as stub:
        engine = engine_for([stub.url], tok)
        try:
            # the dead endpoint joins after discovery, as a box that goes down mid-run would
            engine.pool.endpoints.insert(0, Endpoint(dead, 4, served=engine.pool.endpoints[0].served))
            engine.pool.endpoints[1].requests = 1000  # so the dead one is picked first while both serve
            slow = RetryPolicy(attempts=4, base_s=0.001, max_s=0.01, timeout_s=1.0, bench_after=1, bench_s=600)
            engine.policy = engine.pool.policy = slow
            with caplog.at_level(logging.WARNING, logger="gristmill.remote"):
                result = engine.generate(engine.tokenize("Q: x\nA:"), GenerationParams(max_tokens=32))
                out = engine.describe()["out_of_rotation"]
        finally:
            engine.close()
    assert result.timings["endpoint"] == stub.url
    assert out == [dead]
    assert "left the rotation" in caplog.text and "cannot connect" in caplog.text


def test_server_down_at_start_is_a_clear_error(tok):
    with pytest.raises(EngineError, match="did not answer GET /v1/models"):
        RemoteEngine([f"http://127.0.0.1:{free_port()}"], tok, policy=FAST)


def test_a_pasted_endpoint_an_html_page_and_https_to_a_plain_port_are_said_in_words(tok):
    """`--server http://h:8080/v1/completions` had been asked for /v1/completions/v1/models ("did not answer:
    HTTP 404"); a web server's error page was pasted into the one line whole."""
    import http.server
    import threading

    from gristmill.models.remote_http import normalize_url, unreachable
    from gristmill.models.remote_protocol import error_message

    for pasted in ("http://h:8080/v1/completions", "http://h:8080/v1/chat/completions/", "http://h:8080/completion"):
        with pytest.raises(ValueError, match=r"give the server's base URL \(http://h:8080\), not its"):
            normalize_url(pasted)
    assert normalize_url("http://h:8080/proxy/v1/") == "http://h:8080/proxy"
    page = b'<!DOCTYPE HTML>\n<html lang="en"><head><title>Error response</title></head><body>404</body></html>'
    assert error_message(page) == "an HTML page ('Error response')"
    assert error_message(b'{"error": {"message": "bad"}}') == "bad"
    assert "is the server plain http?" in str(unreachable("https://h:1", "timeout (ConnectTimeout)"))

    # a plain web server on loopback: one line naming what answered, not its page
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(EngineError, match=r"HTTP 404: an HTML page") as caught:
            RemoteEngine([f"http://127.0.0.1:{server.server_address[1]}"], tok, policy=FAST)
        assert "<" not in str(caught.value)
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("kind", ["vllm", "llama-server"])
def test_the_served_models_reading_of_our_ids_is_checked_where_the_server_can_detokenize(kind, tok):
    """A tokenizer of another model whose size cannot tell (vLLM says none; a tokenizer.json may be smaller than
    the padded embedding): the server's reading of a probe's ids must be ours."""
    from gristmill.models import EngineSetupError

    with StubServer(kind) as stub:
        stub.detokenize = tok.detokenize  # the served model's own vocabulary: the same reading
        engine_for([stub.url], tok).close()
        asked = stub.detokenize_requests[-1]
        assert asked["tokens"] and ("model" in asked) == (kind == "vllm")
        stub.detokenize = lambda ids: "".join(chr(0x4E00 + i % 500) for i in ids)  # another model's reading
        with pytest.raises(EngineSetupError, match="is not the served model's"):
            engine_for([stub.url], tok)
        stub.detokenize = "500"  # ids it cannot read at all: a vocabulary smaller than the tokenizer's
        with pytest.raises(EngineSetupError, match="could not read the tokenizer's ids for a probe sentence back"):
            engine_for([stub.url], tok)
        stub.detokenize = None  # a server without /detokenize: not asked again, and no error
        engine_for([stub.url], tok).close()


def test_a_prompt_the_server_finds_over_its_context_is_refused_not_failed(tmp_path, gemma_path, reply):
    """A server restarted with a smaller context answers 400 for a prompt that no longer fits: the item had been
    failed, out of `--retry-refused`'s reach, and five of them stopped the run."""
    import sqlite3

    from typer.testing import CliRunner

    from gristmill.app.cli import app

    source = tmp_path / "items.jsonl"
    source.write_text("".join(json.dumps({"instruction": f"Item {n}."}) + "\n" for n in range(6)))
    db = tmp_path / "remote.db"
    runner = CliRunner()
    assert runner.invoke(app, ["--db", str(db), "add", str(source)]).exit_code == 0
    with StubServer("llama-server", reply_ids=reply, faults=["context"] * 6) as stub:
        result = runner.invoke(app, ["--db", str(db), "generate", "--server", stub.url, "--tokenizer",
                                     str(gemma_path), "--concurrency", "1", "--quiet", "--max-tokens", "8"])
    assert result.exit_code == 0, result.output  # refusals are the prompts' own matter, not a broken run
    assert "6 refused" in result.output and "stopped" not in result.output
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT status, refusal, error FROM generations").fetchall()
    conn.close()
    assert {(status, refusal) for status, refusal, _ in rows} == {("refused", "length")}
    assert all("exceeds the available context size" in error for *_, error in rows)


def test_a_stopped_new_run_says_what_was_saved_and_how_to_resume_it(tmp_path, gemma_path, reply):
    """"generate stopped" had said only why; for a --new-run, "the same command" would start yet another run."""
    from typer.testing import CliRunner

    from gristmill.app.cli import app

    source = tmp_path / "items.jsonl"
    source.write_text("".join(json.dumps({"instruction": f"Item {n}."}) + "\n" for n in range(8)))
    config = tmp_path / "gristmill.toml"
    config.write_text("[generate]\nretries = 1\n")
    db = tmp_path / "remote.db"
    runner = CliRunner()
    assert runner.invoke(app, ["--db", str(db), "add", str(source)]).exit_code == 0
    with StubServer("llama-server", reply_ids=reply, faults=["500"] * 100) as stub:
        result = runner.invoke(app, ["--db", str(db), "--config", str(config), "generate", "--server", stub.url,
                                     "--tokenizer", str(gemma_path), "--concurrency", "1", "--new-run", "--quiet",
                                     "--max-tokens", "8"])
    assert result.exit_code == 1, result.output
    said = " ".join(result.output.split())
    assert "generate stopped: 5 items failed in a row" in said
    assert "every finished item is saved; --run 1 resumes it (the same command would start another run)" in said
    assert "--retry-failed" in said and "pending" in said  # the run's summary came first


def test_continuing_a_remote_run_without_a_server_says_how_it_was_made(tmp_path, gemma_path, reply):
    """It had said "load that model to continue it", naming the served model's file: loading it was refused again."""
    from typer.testing import CliRunner

    from gristmill.app.cli import app

    source = tmp_path / "items.jsonl"
    source.write_text(json.dumps({"instruction": "Name a colour."}) + "\n")
    db = tmp_path / "remote.db"
    runner = CliRunner()
    assert runner.invoke(app, ["--db", str(db), "add", str(source)]).exit_code == 0
    with StubServer("llama-server", reply_ids=reply) as stub:
        made = runner.invoke(app, ["--db", str(db), "generate", "--server", stub.url, "--tokenizer", str(gemma_path),
                                   "--quiet", "--max-tokens", "8"])
        assert made.exit_code == 0, made.output
        for extra in ([], ["--model", str(gemma_path)]):
            result = runner.invoke(app, ["--db", str(db), "generate", "--run", "1", *extra])
            said = " ".join(result.output.split())
            assert result.exit_code == 2 and f"run 1 was generated on a server ({stub.url}" in said, said
            assert "continue it with --server URL and --tokenizer PATH" in said


def test_a_server_restarting_is_waited_for_without_spending_tries_up_to_the_outage_limit(tok, reply):
    """One server, restarting (503 while it loads, as llama-server answers): each try had been spent in seconds,
    so a restart slower than ~15 s failed the items in flight and stopped the run. While every server is out of
    the rotation for want of one to answer, a single request probes it when due and the others wait."""
    patient = RetryPolicy(attempts=2, base_s=0.001, max_s=0.01, bench_after=1, bench_s=0.02, max_bench_s=0.05,
                          timeout_s=5.0, outage_s=30.0, down_probe_s=0.02)
    with StubServer("vllm", reply_ids=reply, faults=["503"] * 8) as stub:
        engine = engine_for([stub.url], tok, policy=patient)
        try:
            result = engine.generate(engine.tokenize("Q: x\nA:"), GenerationParams(max_tokens=8))
        finally:
            engine.close()
    assert result.text.strip() == "Paris is the capital." and len(stub.requests) == 9  # 8 refusals, then it
    # not even the first "no server" spends a try: with one try a request, a server gone for a moment had failed it
    with StubServer("vllm", reply_ids=reply, faults=["503"] * 3) as stub:
        engine = engine_for([stub.url], tok, policy=replace(patient, attempts=1))
        try:
            assert engine.generate(engine.tokenize("Q: x\nA:"), GenerationParams(max_tokens=8)).text.strip()
        finally:
            engine.close()

    brief = RetryPolicy(attempts=2, base_s=0.001, max_s=0.01, bench_after=1, bench_s=0.02, max_bench_s=0.05,
                        timeout_s=5.0, outage_s=1.0, down_probe_s=0.02)
    with StubServer("vllm", reply_ids=reply, faults=["503"] * 10_000) as stub:
        engine = engine_for([stub.url], tok, policy=brief)
        try:
            with pytest.raises(EngineError, match=r"no server answered for 1 s; last error: HTTP 503"):
                engine.generate(engine.tokenize("Q: x\nA:"), GenerationParams(max_tokens=8))
        finally:
            engine.close()

    with StubServer("vllm", reply_ids=reply, faults=["500"] * 8) as stub:  # a server answering with errors: tries
        engine = engine_for([stub.url], tok, policy=patient)
        try:
            with pytest.raises(EngineError, match="gave up after 2 tries"):
                engine.generate(engine.tokenize("Q: x\nA:"), GenerationParams(max_tokens=8))
        finally:
            engine.close()


def test_a_server_kind_given_against_what_the_server_says_is_refused(tok):
    """`--server-kind vllm` against llama-server had been taken: every request then skipped llama-server's checks
    (its ids unchecked, cache_prompt not sent, no context check)."""
    from gristmill.models import EngineSetupError

    with StubServer("llama-server") as stub:
        with pytest.raises(EngineSetupError, match="--server-kind vllm, but the server says it is llama-server"):
            RemoteEngine([stub.url], tok, policy=FAST, server_kind="vllm")
        engine_for([stub.url], tok, server_kind="llama-server").close()  # the same kind: fine


def test_how_long_a_run_waits_for_a_server_that_is_gone_is_a_setting(tmp_path, gemma_path, reply):
    from typer.testing import CliRunner

    from gristmill.app.cli import app

    source = tmp_path / "items.jsonl"
    source.write_text(json.dumps({"instruction": "Name a colour."}) + "\n")
    config = tmp_path / "gristmill.toml"
    config.write_text("[generate]\nserver_wait = 1\n")
    db = tmp_path / "remote.db"
    runner = CliRunner()
    assert runner.invoke(app, ["--db", str(db), "add", str(source)]).exit_code == 0
    with StubServer("llama-server", reply_ids=reply, faults=["503"] * 10_000) as stub:  # loading, for ever
        result = runner.invoke(app, ["--db", str(db), "--config", str(config), "generate", "--server", stub.url,
                                     "--tokenizer", str(gemma_path), "--quiet", "--max-tokens", "8"])
    said = " ".join(result.output.split())
    assert result.exit_code == 1 and "1 item(s) of run 1 failed" in said, said
    import sqlite3

    conn = sqlite3.connect(db)
    assert "no server answered for 1 s" in conn.execute("SELECT error FROM generations").fetchone()[0]
    conn.close()


def test_client_error_fails_at_once_without_retry(tok, reply):
    with StubServer("vllm", reply_ids=reply, api_key="right") as stub:
        stub.api_key = None  # discovery passes; completions are refused
        engine = engine_for([stub.url], tok, api_key="wrong")
        stub.api_key = "right"
        try:
            with pytest.raises(EngineError, match=r"HTTP 401.*\(is the API key in the environment variable"):
                engine.generate(engine.tokenize("Q: x\nA:"), GenerationParams(max_tokens=8))
        finally:
            engine.close()
    assert len(stub.requests) == 1
    with StubServer("vllm", reply_ids=reply) as stub:  # no key set at all: said so, not "is the key right?"
        engine = engine_for([stub.url], tok)
        stub.api_key = "right"
        try:
            with pytest.raises(EngineError, match=r"HTTP 401.*\(no API key was sent: put it in the environment"):
                engine.generate(engine.tokenize("Q: x\nA:"), GenerationParams(max_tokens=8))
        finally:
            engine.close()


@pytest.mark.parametrize("kind", ["vllm", "llama-server"])
def test_server_that_counts_other_prompt_tokens_fails_the_item(kind, tok, reply):
    with StubServer(kind, reply_ids=reply, faults=["miscount"]) as stub:
        engine = engine_for([stub.url], tok)
        try:
            with pytest.raises(EngineError, match=TOKENIZED_DIFFERENTLY):
                engine.generate(engine.tokenize("Q: x\nA:"), GenerationParams(max_tokens=8))
        finally:
            engine.close()
    assert len(stub.requests) == 1  # never retried: it would tokenize differently again


def test_control_tokens_in_prompt_and_context_are_refused(tok, reply):
    with StubServer("llama-server", reply_ids=reply, n_ctx=64) as stub:
        engine = engine_for([stub.url], tok)
        try:
            with pytest.raises(PromptRefused, match="control token 105"):
                engine.check_prompt([2, 105, 10], 8)
            with pytest.raises(PromptRefused, match="context of 64"):
                engine.check_prompt(engine.tokenize("word " * 40), 32)
        finally:
            engine.close()
    assert engine.info().n_ctx == 64


def test_concurrent_surface_many_jobs_polled_until_done(tok, reply):
    with StubServer("vllm", reply_ids=reply, faults=["500", "cut", "429"]) as a, \
            StubServer("vllm", reply_ids=reply) as b:
        engine = engine_for([a.url, b.url], tok, concurrency=3)
        assert engine.capacity == 6
        ids = tuple(engine.tokenize("Q: x\nA:"))
        params = GenerationParams(max_tokens=16)
        # job j: three samples with consecutive seeds (one request with n=3), then one with an unrelated seed
        jobs = [PromptJob(ids, params, (*(SampleRequest(10 * j + k, 1000 * j + k) for k in range(3)),
                                         SampleRequest(10 * j + 5, 7))) for j in range(6)]
        finished, pending = {}, list(jobs)
        try:
            while pending or engine.in_flight():
                while pending and engine.free_slots() >= len(pending[0].samples):
                    engine.submit(pending.pop(0))
                for event in engine.poll(timeout=5):
                    if event.final:
                        finished[event.key] = event.event
        finally:
            engine.close()
    assert sorted(finished) == sorted(s.key for job in jobs for s in job.samples)
    assert all(r.text == " Paris is the capital." for r in finished.values())
    bodies = a.requests + b.requests
    assert {body["n"] for body in bodies} == {1, 3}
    assert 6 <= sum(body["n"] == 3 for body in bodies) <= 6 + 3  # one per job, plus at most the 3 faults' retries
    assert a.requests and b.requests  # spread over both endpoints


def test_cancel_returns_the_keys_in_flight(tok, reply):
    with StubServer("vllm", reply_ids=reply, delay_s=0.5) as stub:
        engine = engine_for([stub.url], tok, concurrency=2)
        try:
            ids = tuple(engine.tokenize("Q: x\nA:"))
            engine.submit(PromptJob(ids, GenerationParams(max_tokens=4), (SampleRequest(1, 5), SampleRequest(2, 9))))
            assert engine.in_flight() == 2
            assert engine.cancel() == [1, 2]
            assert engine.in_flight() == 0 and engine.poll(timeout=0) == []
        finally:
            engine.close()


def test_pool_benches_a_failing_endpoint_and_takes_it_back():
    policy = RetryPolicy(bench_after=2, bench_s=600)
    a, b = Endpoint("http://a", 4), Endpoint("http://b", 4)
    pool = EndpointPool([a, b], policy)
    pool.failed(a, "HTTP 500")
    assert pool.out_of_rotation() == []
    pool.failed(a, "HTTP 500")
    assert pool.out_of_rotation() == ["http://a"]
    assert {pool.pick().url for _ in range(3)} == {"http://b"}
    a.benched_until = 0.0  # its time out of the rotation is over: it is tried again
    b.in_flight = 4
    assert pool.pick() is a
    pool.succeeded(a)
    assert pool.out_of_rotation() == [] and a.consecutive_failures == 0


def test_a_server_not_there_is_never_picked_while_out_and_the_outage_clock_is_the_pools():
    """With A out for answering errors and B out for refusing connections, the pool handed back B (due back
    first): one request made ~280,000 connection attempts in 2 s, and the outage clock never started."""
    policy = RetryPolicy(bench_after=1, bench_s=600, down_probe_s=600)
    a, b = Endpoint("http://a", 4), Endpoint("http://b", 4)
    pool = EndpointPool([a, b], policy)
    pool.failed(a, "connection cut mid-response")  # out, answering badly: tried at once when all are out
    pool.failed(b, "cannot connect", unavailable=True)  # out, no server there
    b.benched_until = a.benched_until - 1  # B is due back first
    assert [pool.pick() for _ in range(3)] == [a, a, a] and pool.down_for() == 0
    pool.failed(a, "cannot connect", unavailable=True)  # now neither has a server: wait, and the clock runs
    assert pool.pick() is None and pool.pick() is None and pool.down_for() >= 0 and pool.down_since is not None
    b.benched_until = 0.0  # B's time out is over: one request probes it, the others keep waiting
    assert pool.pick() is b and b.probing and pool.pick() is None and pool.probe_in_flight()
    pool.succeeded(b)
    b.probing = False
    assert pool.pick() is b and pool.down_for() == 0


def test_backoff_grows_and_honours_retry_after():
    policy = RetryPolicy(base_s=1.0, max_s=8.0)
    assert 0.5 <= policy.backoff(0) <= 1.0
    assert 4.0 <= policy.backoff(3) <= 8.0 and policy.backoff(10) <= 8.0
    assert policy.backoff(0, retry_after=5.0) >= 5.0
    assert parse_retry_after("3") == 3.0 and parse_retry_after("garbage") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


def test_key_never_printed_and_urls_with_credentials_refused(tok):
    assert "hunter2" not in repr(Secret("hunter2")) and "hunter2" not in str(Secret("hunter2"))
    with pytest.raises(EngineError, match="credentials in the URL"):
        RemoteEngine(["http://user:hunter2@127.0.0.1:1"], tok)


def test_generate_cli_against_stub_keeps_the_key_out_of_db_log_and_export(tmp_path, monkeypatch, gemma_path,
                                                                           tok, reply):
    from typer.testing import CliRunner

    from gristmill.app.cli import app
    from gristmill.locations import log_file

    key = "sk-test-9f8e7d6c5b4a39281706"
    source = tmp_path / "items.jsonl"
    source.write_text("".join(json.dumps({"instruction": text}) + "\n" for text in
                              ["Name a colour.", "What is <|im_start|>assistant?", "Say <start_of_turn>hi"]))
    db = tmp_path / "remote.db"
    runner = CliRunner()
    assert runner.invoke(app, ["--db", str(db), "add", str(source)]).exit_code == 0
    monkeypatch.setenv("MY_KEY", key)
    with StubServer("vllm", reply_ids=reply, api_key=key, faults=["500"]) as stub:
        result = runner.invoke(app, ["--db", str(db), "generate", "--server", stub.url, "--tokenizer",
                                     str(gemma_path), "--api-key-env", "MY_KEY", "--quiet", "--max-tokens", "16"])
        assert result.exit_code == 0, result.output
        assert all(h.get("Authorization") == f"Bearer {key}" for h in stub.headers)
    assert key not in result.output
    out = tmp_path / "export.jsonl"
    import sqlite3

    conn = sqlite3.connect(db)
    gen_ids = [r[0] for r in conn.execute("SELECT id FROM generations WHERE status = 'done'")]
    assert len(gen_ids) == 3
    rows = conn.execute("SELECT prompt, prompt_tokens, prompt_token_ids_sha256, completion, finish_reason, timings "
                        "FROM generations ORDER BY id").fetchall()
    settings = json.loads(conn.execute("SELECT settings FROM runs").fetchone()[0])
    conn.close()
    from gristmill.models.base import token_ids_sha256

    for prompt, count, digest, completion, finish, timings in rows:
        ids = tok.tokenize(prompt)
        assert count == len(ids) and digest == token_ids_sha256(ids) and 105 not in ids
        assert completion == "Paris is the capital." or completion == " Paris is the capital."
        assert finish == "eos" and json.loads(timings)["endpoint"] == stub.url
    assert settings["servers"][0]["url"] == stub.url and settings["servers"][0]["models"]["data"][0]["id"]
    # what this run was made with: the client's concurrency, not in-process settings that played no part
    assert settings["engine"]["concurrency"] == 4 and "gpu_layers" not in settings["engine"]
    from gristmill.app.review import decide
    from gristmill.db import open_store

    with open_store(db) as store:
        for gid in gen_ids:
            decide(store, gid, "accept", reviewer="t")
    export = runner.invoke(app, ["--db", str(db), "export", str(out)])
    assert export.exit_code == 0, export.output
    for path in (db, db.with_name(db.name + "-wal"), log_file(), out, out.with_name(out.name + ".manifest.json")):
        if path.exists():
            assert key.encode() not in path.read_bytes(), path


TEXTS = ["Q: What is the capital of France?\nA:", "What does <|im_start|>assistant mean? <|endoftext|> <|im_end|>",
         "Numbers 12345 and 3.14, émigré café — naïve 日本語!", "  two  spaces\n\n\ttab", "def f(x):\n    return x**2"]


@pytest.fixture(scope="module")
def smollm_tokenizers(smollm_path, tmp_path_factory):
    from gguf_vocab import write_tokenizer_json

    folder = tmp_path_factory.mktemp("hf-tokenizer")
    hf = open_tokenizer(write_tokenizer_json(smollm_path, folder / "tokenizer.json"))
    gguf = open_tokenizer(smollm_path)
    yield hf, gguf
    hf.close()
    gguf.close()


def test_tokenizer_json_and_gguf_give_identical_ids(smollm_tokenizers):
    hf, gguf = smollm_tokenizers
    for text in TEXTS:
        ids = hf.tokenize(text)
        assert ids == gguf.tokenize(text), text
        assert not any(hf.is_control(i) or gguf.is_control(i) for i in ids)  # <|im_start|> typed stays text
        assert hf.detokenize(ids) == gguf.detokenize(ids) == text
    assert hf.add_bos is gguf.add_bos is False and hf.eos_id == gguf.eos_id


def test_remote_engine_with_a_tokenizer_json(smollm_tokenizers):
    hf, _ = smollm_tokenizers
    reply = hf.tokenize(" Paris, of course.") + [hf.eos_id]
    with StubServer("vllm", reply_ids=reply, reply_text=" Paris, of course.<|im_end|>") as stub:
        engine = RemoteEngine([stub.url], hf, policy=FAST)
        engine.tokenizer.close = lambda: None
        try:
            ids = engine.tokenize(TEXTS[1])
            result = engine.generate(ids, GenerationParams(max_tokens=16))
            with pytest.raises(PromptRefused, match="control token"):
                engine.check_prompt([1, *ids], 16)
        finally:
            engine.close()
    assert stub.requests[0]["prompt"] == ids
    assert (result.text, result.finish_reason, result.completion_tokens) == (" Paris, of course.", "eos", len(reply) - 1)


def test_generate_server_without_tokenizer_or_with_unknown_kind_is_bad_input(tmp_path):
    from typer.testing import CliRunner

    from gristmill.app.cli import app

    from gristmill.db import open_store

    open_store(tmp_path / "x.db").close()  # generate works on an existing database
    runner = CliRunner()
    result = runner.invoke(app, ["--db", str(tmp_path / "x.db"), "generate", "--server", "http://127.0.0.1:9"])
    assert result.exit_code == 2 and "--server needs --tokenizer" in result.output
    result = runner.invoke(app, ["--db", str(tmp_path / "x.db"), "generate", "--server", "http://127.0.0.1:9",
                                 "--tokenizer", "missing.gguf"])
    assert result.exit_code == 2 and "tokenizer file not found" in result.output


def test_answer_optional_objects_absent_null_or_wrong_read_as_empty():
    """llama-server's `__verbose`, `timings` and `usage.prompt_tokens_details` are optional: absent, null or not
    an object, the answer parses with no ids and no extra timings (the ids then go unchecked, as said on the row)."""
    from gristmill.models.remote_protocol import LLAMA_SERVER, parse_answer

    choice = {"index": 0, "text": " Paris.", "finish_reason": "stop"}
    for extra in ({}, {"__verbose": None, "timings": None}, {"__verbose": [1, 2], "timings": "fast"}):
        for details in ({}, {"prompt_tokens_details": None}, {"prompt_tokens_details": 3}):
            body = {"choices": [choice], "usage": {"prompt_tokens": 4, **details}, **extra}
            answer = parse_answer(LLAMA_SERVER, json.dumps(body).encode(), 1)
            assert answer.prompt_tokens == 4 and answer.timings == {}
            [parsed] = answer.choices
            assert parsed.token_ids is None and parsed.stop_detail is None and parsed.text == " Paris."
    body = {
        "choices": [choice],
        "usage": {"prompt_tokens": 4, "prompt_tokens_details": {"cached_tokens": 2}},
        "timings": {"prompt_ms": 1.5},
        "__verbose": {"tokens": [7, 8], "stop_type": "word"},
    }
    answer = parse_answer(LLAMA_SERVER, json.dumps(body).encode(), 1)
    assert answer.timings == {"server_prompt_ms": 1.5, "cached_tokens": 2}
    assert answer.choices[0].token_ids == (7, 8) and answer.choices[0].stop_detail == "word"


def test_a_server_serving_another_vocabulary_is_refused_before_any_request(smollm_tokenizers, monkeypatch):
    """llama-server says its vocabulary size; a GGUF tokenizer of another model has another: refused up front.
    (Rendering the other model's ids had aborted the process inside llama.cpp.)"""
    _, gguf = smollm_tokenizers
    monkeypatch.setattr(gguf, "close", lambda: None)  # the failed engine closes its tokenizer; the module's stays
    with StubServer("llama-server") as stub:  # says n_vocab 262,144 (Gemma's); SmolLM2's GGUF has 49,152
        with pytest.raises(EngineError, match="vocabulary of 262,144 tokens, and the tokenizer .* has 49,152"):
            RemoteEngine([stub.url], gguf, policy=FAST)
    assert stub.requests == []


def test_an_id_outside_the_tokenizers_vocabulary_fails_the_item_never_the_process(tok):
    with StubServer("vllm", reply_ids=[300_000, 17]) as stub:  # vLLM does not say its vocabulary size
        engine = engine_for([stub.url], tok)
        try:
            with pytest.raises(EngineError, match="token id 300000, outside the tokenizer's vocabulary of 262,144"):
                engine.generate(engine.tokenize("Q: x\nA:"), GenerationParams(max_tokens=8))
        finally:
            engine.close()


def test_a_logged_run_says_when_the_server_has_answered_nothing_for_a_while(tmp_path, monkeypatch, gemma_path,
                                                                            reply):
    """A server holding its connections without answering left `generate > log` silent for minutes."""
    from typer.testing import CliRunner

    import gristmill.app.cli_progress as cli_progress
    import gristmill.app.scheduler as scheduler
    from gristmill.app.cli import app

    monkeypatch.setattr(scheduler, "HEARTBEAT_S", 0.2)
    monkeypatch.setattr(cli_progress, "STALLED_S", 0.5)
    monkeypatch.setattr(cli_progress, "LOG_EVERY_S", 0.2)
    (tmp_path / "items.jsonl").write_text(json.dumps({"instruction": "Name a colour."}) + "\n")
    runner = CliRunner()
    assert runner.invoke(app, ["add", str(tmp_path / "items.jsonl")]).exit_code == 0
    with StubServer("vllm", reply_ids=reply, faults=["timeout"], hang_s=1.5) as stub:  # answers after 1.5 s
        result = runner.invoke(app, ["generate", "--server", stub.url, "--tokenizer", str(gemma_path),
                                     "--max-tokens", "16"])
    assert result.exit_code == 0, result.output
    assert "0/1 (0 done, 0 refused, 0 failed)" in result.output
    assert ", 1 in flight, none finished for " in result.output


def test_a_run_left_with_failed_items_exits_1_saying_how_to_retry_them(tmp_path, monkeypatch, gemma_path, tok, reply):
    """Every item had failed and generate exited 0: a script went on to export a run not whole."""
    from typer.testing import CliRunner

    from gristmill.app.cli import app

    runner = CliRunner()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "items.jsonl").write_text('{"instruction": "Name a colour."}\n{"instruction": "Name a tree."}\n')
    assert runner.invoke(app, ["add", str(tmp_path / "items.jsonl")]).exit_code == 0
    (tmp_path / "gristmill.toml").write_text("[generate]\nretries = 1\n")
    with StubServer("vllm", reply_ids=reply, faults=["500"] * 10) as stub:
        result = runner.invoke(app, ["generate", "--server", stub.url, "--tokenizer", str(gemma_path), "--quiet",
                                     "--max-tokens", "4"])
    text = " ".join(result.output.split())
    assert result.exit_code == 1, result.output
    assert "0 done, 0 refused, 2 failed" in text and "2 item(s) of run 1 failed" in text and "--retry-failed" in text


def test_tokens_export_of_a_remote_run_uses_the_ids_the_server_sampled(tmp_path, monkeypatch, gemma_path, tok, reply):
    """A remote run's fingerprint names the server, so no tokenizer ever matched it: every completion was
    tokenized again, even with the very GGUF the server serves. The run records its tokenizer's fingerprint."""
    from typer.testing import CliRunner

    from gristmill.app.cli import app

    runner = CliRunner()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "items.jsonl").write_text('{"instruction": "Name a colour."}\n')
    assert runner.invoke(app, ["add", str(tmp_path / "items.jsonl")]).exit_code == 0
    with StubServer("vllm", reply_ids=reply) as stub:
        result = runner.invoke(app, ["generate", "--server", stub.url, "--tokenizer", str(gemma_path), "--quiet",
                                     "--max-tokens", "16"])
    assert result.exit_code == 0, result.output
    import sqlite3

    with sqlite3.connect(tmp_path / "test.db") as conn:
        conn.execute("INSERT INTO reviews (generation_id, decision, reviewer, created_at) VALUES (1, 'accept', 'a', 't')")
    conn.close()
    exported = runner.invoke(app, ["export", str(tmp_path / "t.jsonl"), "--format", "tokens", "--tokenizer",
                                   str(gemma_path)])
    assert exported.exit_code == 0, exported.output
    manifest = json.loads((tmp_path / "t.jsonl.manifest.json").read_text())
    sources = manifest["training"]["completion_ids"] if "training" in manifest else manifest["completion_ids"]
    assert sources == {"generated": 1}, sources
