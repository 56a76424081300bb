"""A small OpenAI-compatible stub server for unit tests of the server engine (never for real runs).

It speaks vLLM's dialect of `/v1/completions` (token-id prompts, `return_token_ids`, `stop_reason`,
`usage.prompt_tokens_details.cached_tokens`, `token_id:N` logprobs) plus `/v1/models`, `/tokenize`,
`/detokenize`. The tokenizer is a fake one: one token per UTF-8 byte (id = byte + 16), and the
special tokens below, so tests can compute everything by hand.

Generation is scripted: every request produces `reply` (default: a short answer ending in \\boxed{4}),
token by token, then end-of-sequence; `max_tokens` and stop strings apply as on a real server.
Faults are injected per server: the first `fail_first` completion requests fail with `fail_mode`:
"500", "429" (with Retry-After), "400" (an error body), "drop" (the connection is cut after two
streamed tokens), "sleep" (no answer for `sleep_s`). `kill()` cuts every open stream and stops
the server, as a crashed server would.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SPECIALS = {"<|im_start|>": 1, "<|im_end|>": 2, "<s>": 3}
EOS = 2
OFFSET = 16
DEFAULT_REPLY = "Let me think. 2 + 2 = 4. The answer is \\boxed{4}."


def tokenize(text: str, special: bool = True) -> list[int]:
    ids: list[int] = []
    i = 0
    while i < len(text):
        if special:
            hit = next((s for s in SPECIALS if text.startswith(s, i)), None)
            if hit:
                ids.append(SPECIALS[hit])
                i += len(hit)
                continue
        ids.extend(b + OFFSET for b in text[i].encode("utf-8"))
        i += 1
    return ids


def detokenize(ids, skip_special: bool = False) -> str:
    names = {v: k for k, v in SPECIALS.items()}
    out = bytearray()
    for t in ids:
        if t in names:
            if not skip_special:
                out += names[t].encode()
        elif t >= OFFSET:
            out.append(t - OFFSET)
    return out.decode("utf-8", errors="replace")


def render_chat(messages, add_generation_prompt: bool = True) -> str:
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


class StubServer:
    """One fake server on 127.0.0.1 (a free port); `url` is its /v1 base."""

    def __init__(self, *, reply: str | None = None, model: str = "stub-model", owned_by: str = "vllm",
                 max_model_len: int = 2048, token_delay_s: float = 0.0, fail_first: int = 0,
                 fail_mode: str = "500", sleep_s: float = 5.0, return_ids: bool = True,
                 report_cached: bool = True, stream_ok: bool = True):
        self.reply = reply if reply is not None else DEFAULT_REPLY
        self.model, self.owned_by, self.max_model_len = model, owned_by, max_model_len
        self.token_delay_s, self.fail_first, self.fail_mode, self.sleep_s = token_delay_s, fail_first, fail_mode, sleep_s
        self.return_ids, self.report_cached, self.stream_ok = return_ids, report_cached, stream_ok
        self.lock = threading.Lock()
        self.completions: list[dict] = []  # bodies of completion requests that got an answer started
        self.calls = 0  # completion requests received, failed ones included
        self.aborted = 0  # streams whose client went away before the end
        self.seen: list[list[int]] = []  # prompts served: the "prefix cache"
        self.killed = threading.Event()
        self._conns: set[socket.socket] = set()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def setup(self):
                super().setup()
                with stub.lock:
                    stub._conns.add(self.connection)

            def finish(self):
                with stub.lock:
                    stub._conns.discard(self.connection)
                try:
                    super().finish()
                except OSError:
                    pass

            def do_GET(self):
                if self.path == "/v1/models":
                    return self._json(200, {"object": "list", "data": [
                        {"id": stub.model, "object": "model", "owned_by": stub.owned_by,
                         "max_model_len": stub.max_model_len}]})
                return self._json(404, {"error": {"message": f"no route {self.path}", "code": 404}})

            def do_POST(self):
                n = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(n) or b"{}")
                if self.path == "/tokenize":
                    text = render_chat(body["messages"], body.get("add_generation_prompt", True)) \
                        if "messages" in body else body["prompt"]
                    ids = tokenize(text)
                    return self._json(200, {"tokens": ids, "count": len(ids), "max_model_len": stub.max_model_len})
                if self.path == "/detokenize":
                    return self._json(200, {"prompt": detokenize(body["tokens"])})
                if self.path == "/v1/completions":
                    return self._complete(body)
                return self._json(404, {"error": {"message": f"no route {self.path}", "code": 404}})

            # -------------------------------------------------------------- helpers
            def _json(self, status: int, obj, headers: dict | None = None):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _event(self, obj) -> None:
                data = b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

            def _complete(self, body: dict):
                with stub.lock:
                    stub.calls += 1
                    failing = stub.calls <= stub.fail_first
                mode = stub.fail_mode if failing else None
                if mode == "500":
                    return self._json(500, {"error": {"message": "internal error (injected)", "code": 500}})
                if mode == "429":
                    return self._json(429, {"error": {"message": "too many requests", "code": 429}},
                                      headers={"retry-after": "0"})
                if mode == "400":
                    return self._json(400, {"error": {"message": "max_tokens is too large (injected)",
                                                      "type": "BadRequestError", "code": 400}})
                if mode == "sleep":
                    time.sleep(stub.sleep_s)
                    return self._json(500, {"error": {"message": "too late", "code": 500}})
                prompt = body["prompt"]
                if not isinstance(prompt, list):
                    prompt = tokenize(prompt)
                if len(prompt) + 1 > stub.max_model_len:
                    return self._json(400, {"error": {"message": "prompt too long", "code": 400}})
                with stub.lock:
                    cached = max((_common(prompt, p) for p in stub.seen), default=0)
                    cached = min(cached, len(prompt) - 1)
                    stub.seen.append(list(prompt))
                    stub.completions.append(body)
                tokens, finish, stop_reason = _script(stub.reply, body)
                ids_out = body.get("return_token_ids") and stub.return_ids
                k = body.get("logprobs") or 0
                as_ids = body.get("return_tokens_as_token_ids")
                usage = {"prompt_tokens": len(prompt), "completion_tokens": len(tokens),
                         "total_tokens": len(prompt) + len(tokens)}
                if stub.report_cached:
                    usage["prompt_tokens_details"] = {"cached_tokens": cached}
                texts = _texts(tokens, finish, stop_reason)
                if not body.get("stream"):
                    choice = {"index": 0, "text": "".join(texts), "finish_reason": finish, "stop_reason": stop_reason,
                              "logprobs": _logprobs(tokens, k, as_ids) if k else None}
                    if ids_out:
                        choice["token_ids"] = tokens
                    return self._json(200, {"id": "cmpl-stub", "object": "text_completion", "model": stub.model,
                                            "choices": [choice], "usage": usage})
                if not stub.stream_ok:
                    return self._json(400, {"error": {"message": "streaming is not supported", "code": 400}})
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                try:
                    for j, tok in enumerate(tokens):
                        if stub.killed.is_set() or (mode == "drop" and j == 2):
                            self.connection.shutdown(socket.SHUT_RDWR)
                            return
                        if stub.token_delay_s:
                            time.sleep(stub.token_delay_s)
                        last = j == len(tokens) - 1
                        choice = {"index": 0, "text": texts[j], "finish_reason": finish if last else None}
                        if last:
                            choice["stop_reason"] = stop_reason
                        if ids_out:
                            choice["token_ids"] = [tok]
                        if k:
                            choice["logprobs"] = _logprobs([tok], k, as_ids)
                        self._event({"id": "cmpl-stub", "object": "text_completion", "model": stub.model,
                                     "choices": [choice]})
                    if not tokens:
                        self._event({"id": "cmpl-stub", "choices": [{"index": 0, "text": "",
                                                                     "finish_reason": finish, "stop_reason": None}]})
                    opts = body.get("stream_options") or {}
                    if opts.get("include_usage"):
                        self._event({"id": "cmpl-stub", "choices": [], "usage": usage})
                    self._event(b"[DONE]")
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except OSError:
                    with stub.lock:
                        stub.aborted += 1
                    self.close_connection = True

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.root = f"http://127.0.0.1:{self.port}"
        self.url = self.root + "/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def kill(self) -> None:
        """Stop like a crash: cut every open connection, refuse new ones."""
        self.killed.set()
        self._server.shutdown()
        self._server.server_close()
        with self.lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    stop = kill

    def __enter__(self) -> "StubServer":
        return self

    def __exit__(self, *exc) -> None:
        if not self.killed.is_set():
            self.kill()


def _common(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _script(reply: str, body: dict) -> tuple[list[int], str, str | None]:
    """The generated ids (EOS included at a natural end, as vLLM returns it), finish_reason, stop_reason."""
    ids = tokenize(reply, special=False)
    max_tokens = body.get("max_tokens") or 16
    stops = body.get("stop") or []
    stops = [stops] if isinstance(stops, str) else stops
    text = b""
    for j, t in enumerate(ids[:max_tokens]):
        text += bytes([t - OFFSET])
        decoded = text.decode("utf-8", errors="ignore")
        hit = [s for s in stops if s in decoded]
        if hit:
            return ids[: j + 1], "stop", min(hit, key=decoded.find)
    if len(ids) >= max_tokens:
        return ids[:max_tokens], "length", None
    if body.get("ignore_eos"):
        ids = (ids * (max_tokens // max(len(ids), 1) + 1))[:max_tokens]
        return ids, "length", None
    return ids + [EOS], "stop", None


def _texts(tokens: list[int], finish: str, stop_reason: str | None) -> list[str]:
    """The text each streamed chunk carries (the stop string and EOS not shown, like vLLM)."""
    full = detokenize(tokens, skip_special=True)
    if stop_reason:
        full = full[: full.find(stop_reason)]
    out, sent = [], 0
    for j in range(len(tokens)):
        upto = detokenize(tokens[: j + 1], skip_special=True)[: len(full)]
        out.append(upto[sent:])
        sent = max(sent, len(upto))
    return out


def _logprobs(tokens: list[int], k: int, as_ids: bool) -> dict:
    """Fake top-k: the sampled token at -0.25, then neighbours at -1.5, -2.5, ..."""
    name = (lambda t: f"token_id:{t}") if as_ids else (lambda t: detokenize([t]))
    tops = []
    for t in tokens:
        top = {name(t): -0.25}
        for r in range(1, k):
            top[name(t + r)] = -0.5 - r
        tops.append(top)
    return {"tokens": [name(t) for t in tokens], "token_logprobs": [-0.25] * len(tokens), "top_logprobs": tops,
            "text_offset": [0] * len(tokens)}
