"""Loopback servers shaped like llama-server and vLLM, with scripted faults: for tests and the remote benchmark.

A stub answers `GET /v1/models` and `POST /v1/completions` with the fields the real server sends, echoing the
prompt ids it was given (`usage.prompt_tokens`, vLLM's `prompt_token_ids`) and answering `reply_ids`. Each
completion request first takes the next entry of `faults` (until the list is empty):

    "500" / "503"  an error status with a JSON error body
    "429"          Too Many Requests with `Retry-After: <retry_after>`
    "timeout"      sleep `hang_s` before answering (longer than the client's timeout)
    "cut"          promise a long body, send part of it, close the connection
    "close"        close the connection without answering
    "badjson"      200 with a body that is not JSON
    "miscount"     a correct answer whose usage.prompt_tokens is one more than the ids sent
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # the listen backlog: 64 clients connecting at once must not wait on SYN retries


class StubServer:
    def __init__(self, kind: str = "vllm", *, reply_ids=(), reply_text: str = "", model: str = "stub-model",
                 n_ctx: int = 2048, delay_s: float = 0.0, faults=(), retry_after: str = "0.05",
                 hang_s: float = 3.0, api_key: str | None = None, eos_id: int | None = None):
        self.kind, self.model, self.n_ctx, self.delay_s = kind, model, n_ctx, delay_s
        self.reply_ids, self.reply_text, self.eos_id = list(reply_ids), reply_text, eos_id
        self.faults = list(faults)
        self.retry_after, self.hang_s, self.api_key = retry_after, hang_s, api_key
        self.requests: list[dict] = []  # completion bodies, in arrival order
        # POST /detokenize: None answers 404 (a server without it); a function of the ids gives the text
        self.detokenize = None
        self.detokenize_requests: list[dict] = []
        self.headers: list[dict] = []
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def setup(self):
                super().setup()
                # headers and body are two writes: without this, Nagle + delayed ACK add ~40 ms a response
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_GET(self):
                if self.path != "/v1/models":
                    return self._json(404, {"error": {"message": "not found"}})
                if not stub._authorized(self):
                    return self._json(401, {"error": {"message": "Invalid API Key"}})
                card = {"id": stub.model, "object": "model", "owned_by": "llamacpp" if stub.kind == "llama-server"
                        else "vllm"}
                if stub.kind == "llama-server":
                    card["meta"] = {"n_ctx": stub.n_ctx, "n_ctx_train": 32768, "n_vocab": 262144}
                else:
                    card["max_model_len"] = stub.n_ctx
                self._json(200, {"object": "list", "data": [card]})

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length))
                if self.path == "/detokenize":
                    stub.detokenize_requests.append(body)
                    if stub.detokenize is None:
                        return self._json(404, {"error": {"message": "File Not Found"}})
                    if stub.detokenize == "500":  # llama-server on an id outside its vocabulary
                        return self._json(500, {"error": {"code": 500, "message": "vector::_M_range_check"}})
                    key = "content" if stub.kind == "llama-server" else "prompt"
                    return self._json(200, {key: stub.detokenize(body["tokens"])})
                with stub.lock:
                    stub.requests.append(body)
                    stub.headers.append(dict(self.headers))
                    fault = stub.faults.pop(0) if stub.faults else None
                if not stub._authorized(self):
                    return self._json(401, {"error": {"message": "Invalid API Key"}})
                if stub.delay_s:
                    time.sleep(stub.delay_s)
                if fault in ("500", "503"):
                    return self._json(int(fault), {"error": {"code": int(fault), "message": "server busy"}})
                if fault == "context":  # llama-server's own words for a prompt over a slot's context
                    return self._json(400, {"error": {"code": 400, "type": "exceed_context_size_error", "message":
                                      "request (709 tokens) exceeds the available context size (512 tokens), "
                                      "try increasing it"}})
                if fault == "429":
                    return self._json(429, {"error": {"message": "slow down"}}, {"Retry-After": stub.retry_after})
                if fault == "timeout":
                    time.sleep(stub.hang_s)
                if fault == "close":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                answer = json.dumps(stub.answer(body, miscount=fault == "miscount")).encode()
                if fault == "cut":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(answer) + 500))
                    self.end_headers()
                    self.wfile.write(answer[: len(answer) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if fault == "badjson":
                    answer = b'{"choices": [ {"text": "unterminated'
                self._raw(200, answer)

            def _json(self, status, body, headers=None):
                self._raw(status, json.dumps(body).encode(), headers)

            def _raw(self, status, data, headers=None):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def _authorized(self, handler) -> bool:
        return self.api_key is None or handler.headers.get("Authorization") == f"Bearer {self.api_key}"

    def answer(self, body: dict, miscount: bool = False) -> dict:
        prompt = body["prompt"]
        n = body.get("n", 1)
        ids = list(self.reply_ids)
        finish = "length" if len(ids) >= body["max_tokens"] else "stop"
        ids = ids[: body["max_tokens"]]
        usage = {"prompt_tokens": len(prompt) + (1 if miscount else 0), "completion_tokens": len(ids) * n,
                 "total_tokens": len(prompt) + len(ids) * n}
        if self.kind == "llama-server":
            stop_type = "limit" if finish == "length" else "eos"
            return {"choices": [{"text": self.reply_text, "index": 0, "logprobs": None, "finish_reason": finish}],
                    "usage": {**usage, "prompt_tokens_details": {"cached_tokens": 0}},
                    "object": "text_completion", "model": self.model,
                    "timings": {"prompt_ms": 1.0, "predicted_ms": 2.0},
                    "__verbose": {"tokens": ids, "stop_type": stop_type, "tokens_evaluated": len(prompt)}}
        choices = [{"index": k, "text": self.reply_text, "logprobs": None, "finish_reason": finish,
                    "stop_reason": None, "token_ids": ids, "prompt_token_ids": list(prompt)} for k in range(n)]
        return {"id": "cmpl-1", "object": "text_completion", "model": self.model, "choices": choices,
                "usage": usage}

    def __enter__(self) -> StubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def free_port() -> int:
    """A loopback port with nothing listening on it (for 'connection refused')."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    """`python remote_stub.py KIND DELAY_S REPLY_IDS` serves until killed, printing its URL: a stub in its own
    process, so its threads do not share the benchmark client's interpreter lock."""
    import sys

    kind, delay, reply = sys.argv[1], float(sys.argv[2]), [int(i) for i in sys.argv[3].split(",") if i]
    with StubServer(kind, reply_ids=reply, delay_s=delay) as stub:
        print(stub.url, flush=True)
        stub.thread.join()


if __name__ == "__main__":
    main()
