"""The Engine protocol over running OpenAI-compatible servers (vLLM, SGLang, llama.cpp's llama-server).

Prompts go out as token ids (`POST /v1/completions`, `prompt: [ids]`) so the server continues exactly
the sequence a method built, and its prefix cache serves what branches and rounds share. Each request
streams, which gives live progress and lets a cancelled call close its connections (servers abort
generation on disconnect). Several servers: a `session()` is pinned to one (all branches of a question
hit one prefix cache), sessions spread over servers by load, and a failing server is avoided for a
while and its requests restart on another.

What each server returns beyond the OpenAI fields, and what is used:
- llama.cpp (`/props` answers): `verbose: true` adds `__verbose` to every chunk, with the token id of
  each streamed token and, at the end, `stop_type` (eos/word/limit) and `stopping_word`;
  `usage.prompt_tokens_details.cached_tokens` (also `timings.cache_n`) is the reused prefix.
- vLLM (`owned_by: vllm`): `return_token_ids` gives the ids of each chunk, `stop_reason` the matched
  stop string (None at end-of-sequence); cached tokens only when the server runs with
  `--enable-prompt-tokens-details`.
- SGLang: `matched_stop`; others: text only, re-tokenized here.
Both llama.cpp and vLLM include the end-of-sequence token in the streamed ids; it is dropped, as the
embedded engine never returns it.
"""

from __future__ import annotations

import email.utils
import json
import os
import random
import threading
import time
from dataclasses import dataclass, fields
from typing import Any, Sequence

import httpx

from .base import Completion, EngineError, ProgressFn, Request, SamplingParams, check_requests
from .chat import CHATML_TEMPLATE, ChatTemplate

_DEFAULT_N_CTX = 4096  # when neither the config nor the server says
_PROMPT_FORMATS = ("auto", "ids", "text")


@dataclass(frozen=True)
class OpenAIConfig:
    """Settings of the server engine; the only place their defaults live."""

    base_urls: tuple[str, ...] = ()  # http://host:port or http://host:port/v1, one per server
    model: str | None = None  # served model name; None = the first the server lists
    api_key: str | None = None  # None = $OPENAI_API_KEY, else no key
    tokenizer: str | None = None  # GGUF path, packaged model name or HF tokenizer dir; None = the server's
    prompt_format: str = "auto"  # ids, text, or auto (ids; text if a generic server rejects ids)
    stream: bool = True  # stream responses (live progress, cancellation); off for servers that cannot
    max_in_flight: int = 64  # requests open at once per server
    timeout_s: float = 600.0  # one request, start to end
    connect_timeout_s: float = 10.0
    retries: int = 3  # extra attempts on one server before failing over
    backoff_s: float = 0.5  # first retry delay; doubles per retry, with jitter
    backoff_max_s: float = 8.0
    down_s: float = 60.0  # how long a server that failed its retries is avoided
    n_ctx: int | None = None  # override the server's context window per request

    def __post_init__(self) -> None:
        urls = self.base_urls
        if isinstance(urls, str):
            urls = (urls,)
        urls = tuple(_normalise_url(u) for u in urls)
        if not urls:
            raise ValueError("base_urls is empty: pass --base-url URL of a running server (e.g. http://127.0.0.1:8080/v1)")
        if len(set(urls)) != len(urls):
            raise ValueError(f"base_urls lists a server twice: {', '.join(urls)}")
        object.__setattr__(self, "base_urls", urls)
        if self.prompt_format not in _PROMPT_FORMATS:
            raise ValueError(f"prompt_format must be one of {', '.join(_PROMPT_FORMATS)}, got {self.prompt_format!r}")
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {self.max_in_flight}")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        for name in ("timeout_s", "connect_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {getattr(self, name)}")
        for name in ("backoff_s", "backoff_max_s", "down_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 seconds, got {getattr(self, name)}")
        if self.n_ctx is not None and self.n_ctx < 2:
            raise ValueError(f"n_ctx must be >= 2 (or None = the server's), got {self.n_ctx}")


def _normalise_url(url: str) -> str:
    """The server root: `http://h:p/v1/` and `http://h:p` name the same server."""
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValueError(f"base_urls: {url!r} is not an http(s) URL; use e.g. http://127.0.0.1:8080/v1")
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


# ------------------------------------------------------------------------------------ errors
class _Retryable(Exception):
    """A failure worth another attempt (connection, timeout, 5xx, 429, a stream cut short)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class _Rejected(EngineError):
    """The server refused the request itself (4xx): retrying it cannot help."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class _Cancelled(Exception):
    pass


def _error_text(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except Exception:
        return resp.text.strip()[:500] or resp.reason_phrase
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            return str(err.get("message") or err.get("detail") or body.get("detail") or err)[:500]
        return str(err)[:500]
    return str(body)[:500]


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except Exception:
            return None


def _check(resp: httpx.Response, url: str) -> None:
    """Raise for an error status: 5xx/429/408 are retryable, other 4xx are the request's fault."""
    if resp.status_code < 400:
        return
    if not resp.is_closed:
        resp.read()
    text = _error_text(resp)
    if resp.status_code >= 500 or resp.status_code in (408, 429):
        raise _Retryable(f"{url} answered {resp.status_code}: {text}", _retry_after(resp))
    raise _Rejected(f"server {url} rejected the request ({resp.status_code}): {text}", resp.status_code)


# ------------------------------------------------------------------------------------ endpoints
class _Endpoint:
    """One server: its HTTP client, its in-flight limit and the counters shown in `engine.endpoints`."""

    def __init__(self, url: str, config: OpenAIConfig, headers: dict[str, str]):
        self.url = url
        timeout = httpx.Timeout(config.timeout_s, connect=config.connect_timeout_s)
        limits = httpx.Limits(max_connections=config.max_in_flight + 8, max_keepalive_connections=config.max_in_flight)
        self.client = httpx.Client(base_url=url, timeout=timeout, limits=limits, headers=headers)
        self.slots = threading.BoundedSemaphore(config.max_in_flight)
        self.lock = threading.Lock()
        self.in_flight = 0
        self.sessions = 0
        self.requests = 0
        self.failures = 0
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.down_until = 0.0
        self.last_error: str | None = None

    @property
    def healthy(self) -> bool:
        return time.monotonic() >= self.down_until

    @property
    def load(self) -> int:
        return self.sessions + self.in_flight

    def mark_down(self, seconds: float, error: str) -> None:
        with self.lock:
            self.down_until = time.monotonic() + seconds
            self.last_error = error

    def info(self) -> dict:
        return {
            "url": self.url, "healthy": self.healthy, "in_flight": self.in_flight, "sessions": self.sessions,
            "requests": self.requests, "failures": self.failures, "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens, "last_error": self.last_error,
        }


# ------------------------------------------------------------------------------------ one request
@dataclass
class _Acc:
    """What the stream of one request has delivered so far."""

    text: str = ""
    ids: list[int] | None = None  # None until the server sends ids
    logprobs: list[list[tuple[int, float]]] | None = None
    chunks: int = 0
    finish: str | None = None  # the server's finish_reason
    stop_reason: Any = None  # vLLM stop_reason / SGLang matched_stop
    stop_type: str | None = None  # llama.cpp
    stopping_word: str | None = None
    usage: dict | None = None
    timings: dict | None = None

    @property
    def n_generated(self) -> int:
        return len(self.ids) if self.ids is not None else self.chunks


def _token_id(token: Any) -> int:
    """vLLM's `return_tokens_as_token_ids` writes tokens as 'token_id:123'; -1 where unknown."""
    if isinstance(token, int):
        return token
    if isinstance(token, str) and token.startswith("token_id:"):
        try:
            return int(token[9:])
        except ValueError:
            pass
    return -1


def _parse_logprobs(lp: Any, k: int) -> tuple[list[list[tuple[int, float]]], list[int]]:
    """Top-k (id, logprob) per token and the sampled ids, from either wire format:
    OpenAI completions (`tokens`, `top_logprobs` dicts) or llama.cpp (`content` entries with ids)."""
    tops: list[list[tuple[int, float]]] = []
    ids: list[int] = []
    if not isinstance(lp, dict):
        return tops, ids
    if isinstance(lp.get("content"), list):  # llama.cpp
        for entry in lp["content"]:
            ids.append(int(entry.get("id", -1)))
            top = [(int(t.get("id", -1)), float(t["logprob"])) for t in entry.get("top_logprobs") or []]
            tops.append(sorted(top, key=lambda x: -x[1])[:k])
        return tops, ids
    for tok, top in zip(lp.get("tokens") or [], lp.get("top_logprobs") or []):
        ids.append(_token_id(tok))
        pairs = [(_token_id(t), float(v)) for t, v in (top or {}).items()]
        tops.append(sorted(pairs, key=lambda x: -x[1])[:k])  # vLLM adds the sampled token as k+1th
    return tops, ids


class _Call:
    """The shared state of one `generate` call: per-request progress, cancellation, open streams."""

    def __init__(self, n: int):
        self.counts = [0] * n
        self.finished = 0
        self.cond = threading.Condition()
        self.changed = False
        self.cancelled = threading.Event()
        self.open: set[httpx.Response] = set()

    def update(self, i: int, n: int) -> None:
        with self.cond:
            if self.counts[i] != n:
                self.counts[i] = n
                self.changed = True
                self.cond.notify_all()

    def cancel(self) -> None:
        self.cancelled.set()
        with self.cond:
            streams = list(self.open)
            self.cond.notify_all()
        for resp in streams:  # unblocks readers now, and the server sees the disconnect
            try:
                resp.close()
            except Exception:
                pass


# ------------------------------------------------------------------------------------ the engine
class OpenAIEngine:
    """The Engine protocol over one or more OpenAI-compatible servers; safe to share between threads."""

    name = "openai"

    def __init__(self, model: str | None = None, config: OpenAIConfig | None = None, **options):
        known = {f.name for f in fields(OpenAIConfig)}
        unknown = set(options) - known
        if unknown:
            raise ValueError(f"unknown engine option(s): {', '.join(sorted(unknown))}")
        base = config.__dict__ if config is not None else {}
        merged = {**base, **{k: v for k, v in options.items()}, **({"model": model} if model else {})}
        self.config = cfg = OpenAIConfig(**merged)
        key = cfg.api_key if cfg.api_key is not None else os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._endpoints = [_Endpoint(u, cfg, headers) for u in cfg.base_urls]
        self._lock = threading.Lock()
        self._default_lock = threading.Lock()
        self._cache_lock = threading.Lock()
        self._detok_cache: dict[tuple[int, ...], str] = {}
        self._tokenizer = None
        self._chat_template: ChatTemplate | None = None
        self.reports_cached: bool | None = None  # unknown until a response says
        try:
            self._probe()
        except Exception:
            self.close()
            raise
        self._default: _Session | None = None

    # ------------------------------------------------------------------ discovery
    def _probe(self) -> None:
        """Ask the servers what they serve: model names, server kind, context window, tokenizer."""
        cfg = self.config
        served, errors = None, []
        for ep in self._endpoints:
            try:
                served = self._get(ep, "/v1/models")
                break
            except (_Retryable, EngineError) as e:
                ep.mark_down(cfg.down_s, str(e))
                errors.append(str(e))
        if served is None:
            raise EngineError(f"no server answered at {', '.join(cfg.base_urls)}: {errors[-1]}")
        data = served.get("data") or []
        names = [m.get("id") for m in data if isinstance(m, dict) and m.get("id")]
        if cfg.model is None:
            if not names:
                raise EngineError(f"{ep.url}/v1/models lists no model: pass --model NAME of the served model")
            self.model = names[0]
        else:
            aliases = {a for m in data for a in (m.get("aliases") or [])} if data else set()
            if names and cfg.model not in names and cfg.model not in aliases:
                raise EngineError(f"model '{cfg.model}' is not served by {ep.url}; it serves: {', '.join(names)}")
            self.model = cfg.model
        card = next((m for m in data if m.get("id") == self.model), data[0] if data else {})
        owner = str(card.get("owned_by", "")).lower()

        props = None
        try:
            props = self._get(ep, "/props")
        except (_Retryable, EngineError):
            pass
        if isinstance(props, dict) and "default_generation_settings" in props:
            self.kind = "llama.cpp"
        elif owner in ("vllm", "sglang"):
            self.kind = owner
        else:
            self.kind = "openai"

        n_ctx = None
        if self.kind == "llama.cpp":
            n_ctx = props["default_generation_settings"].get("n_ctx")
            template = props.get("chat_template")
            if template:
                self._chat_template = ChatTemplate(template, bos_token=props.get("bos_token") or "",
                                                   eos_token=props.get("eos_token") or "")
        n_ctx = n_ctx or card.get("max_model_len") or (card.get("meta") or {}).get("n_ctx")
        self.n_ctx = int(cfg.n_ctx or n_ctx or _DEFAULT_N_CTX)
        self.n_ctx_source = "config" if cfg.n_ctx else ("server" if n_ctx else "default")

        if cfg.tokenizer:
            from .tokenizers import load_tokenizer

            self._tokenizer = load_tokenizer(cfg.tokenizer)
            self.tokenizer_source = self._tokenizer.source
        elif self.kind in ("llama.cpp", "vllm", "sglang"):
            self.tokenizer_source = f"server:{self.kind} /tokenize"
            try:
                self.tokenize("hello")
            except _Rejected as e:
                raise EngineError(f"the server cannot tokenize ({e}): pass --tokenizer of the served model") from None
        else:
            raise EngineError(
                f"server at {ep.url} has no tokenize endpoint this engine knows: pass --tokenizer (a GGUF path, "
                "packaged model name or Hugging Face tokenizer directory of the served model)"
            )
        fmt = cfg.prompt_format
        self.prompt_format = "ids" if fmt == "auto" else fmt
        self._format_known = fmt != "auto" or self.kind != "openai"

    @property
    def model_info(self) -> dict:
        return {
            "name": self.model, "server": self.kind, "urls": list(self.config.base_urls),
            "tokenizer": self.tokenizer_source, "n_ctx": self.n_ctx, "n_ctx_source": self.n_ctx_source,
            "prompt_format": self.prompt_format, "reports_cached": self.reports_cached,
        }

    @property
    def endpoints(self) -> list[dict]:
        return [ep.info() for ep in self._endpoints]

    # ------------------------------------------------------------------ plain HTTP calls
    def _get(self, ep: _Endpoint, path: str) -> Any:
        try:
            resp = ep.client.get(path)
        except httpx.HTTPError as e:
            raise _Retryable(f"{ep.url}{path}: {type(e).__name__}: {e}") from None
        _check(resp, ep.url + path)
        try:
            return resp.json()
        except ValueError:
            raise _Rejected(f"server {ep.url}{path} did not answer JSON", resp.status_code) from None

    def _post_json(self, path: str, body: dict, prefer: _Endpoint | None = None) -> Any:
        """A small JSON call (tokenize, ...) on a healthy server, with the same retries as generation."""
        cfg = self.config
        order = [prefer] if prefer is not None and prefer.healthy else []
        order += [ep for ep in self._endpoints if ep.healthy and ep is not prefer]
        last = "no healthy server"
        for ep in order:
            for attempt in range(cfg.retries + 1):
                try:
                    resp = ep.client.post(path, json=body)
                    _check(resp, ep.url + path)
                    return resp.json()
                except httpx.HTTPError as e:
                    last = f"{ep.url}{path}: {type(e).__name__}: {e}"
                except _Retryable as e:
                    last = str(e)
                if attempt < cfg.retries:
                    time.sleep(self._backoff(attempt))
            ep.failures += 1
            ep.mark_down(cfg.down_s, last)
        raise EngineError(f"no server could answer {path} ({', '.join(cfg.base_urls)}): {last}")

    def _backoff(self, attempt: int, retry_after: float | None = None) -> float:
        cfg = self.config
        delay = min(cfg.backoff_max_s, cfg.backoff_s * (2**attempt)) * random.uniform(0.5, 1.0)
        if retry_after is not None:
            delay = max(delay, min(retry_after, cfg.timeout_s))
        return delay

    # ------------------------------------------------------------------ text <-> tokens
    def tokenize(self, text: str, special: bool = True, _prefer: _Endpoint | None = None) -> list[int]:
        if self._tokenizer is not None:
            return self._tokenizer.tokenize(text, special)
        if self.kind == "llama.cpp":
            out = self._post_json("/tokenize", {"content": text, "add_special": False, "parse_special": special}, _prefer)
        else:  # vLLM, SGLang: special tokens in the text are always parsed
            out = self._post_json("/tokenize", {"model": self.model, "prompt": text, "add_special_tokens": False}, _prefer)
        return [int(t["id"]) if isinstance(t, dict) else int(t) for t in out["tokens"]]

    def detokenize(self, ids: Sequence[int], _prefer: _Endpoint | None = None) -> str:
        ids = [int(t) for t in ids]
        if not ids:
            return ""
        if self._tokenizer is not None:
            return self._tokenizer.detokenize(ids)
        key = tuple(ids)
        with self._cache_lock:
            hit = self._detok_cache.get(key)
        if hit is not None:
            return hit
        if self.kind == "llama.cpp":
            text = self._post_json("/detokenize", {"tokens": ids}, _prefer)["content"]
        else:
            text = self._post_json("/detokenize", {"model": self.model, "tokens": ids}, _prefer)["prompt"]
        with self._cache_lock:
            if len(self._detok_cache) > 4096:
                self._detok_cache.clear()
            self._detok_cache[key] = text
        return text

    def render_chat(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        """The chat template applied to messages: with the local tokenizer's template, else the one
        llama.cpp publishes in /props (rendered here exactly as the embedded engine does), else the
        server renders (vLLM/SGLang `/tokenize` with messages, then detokenized)."""
        if self._tokenizer is not None:
            return self._tokenizer.render_chat(messages, add_generation_prompt)
        if self._chat_template is not None:
            return self._chat_template.render(messages, add_generation_prompt=add_generation_prompt)
        if self.kind in ("vllm", "sglang"):
            out = self._post_json("/tokenize", {"model": self.model, "messages": list(messages),
                                                "add_generation_prompt": add_generation_prompt,
                                                "add_special_tokens": False})
            return self.detokenize(out["tokens"])
        return ChatTemplate(CHATML_TEMPLATE).render(messages, add_generation_prompt=add_generation_prompt)

    def release(self, slot: str) -> None:
        """Nothing to do: the servers manage their caches themselves."""

    # ------------------------------------------------------------------ sessions
    def session(self) -> "_Session":
        """An Engine view pinned to the least-loaded healthy server (one question's prefix cache)."""
        return _Session(self)

    def _pick(self, exclude: set[int] = frozenset()) -> _Endpoint | None:
        with self._lock:
            live = [(ep.load, ep.requests, i) for i, ep in enumerate(self._endpoints)
                    if ep.healthy and i not in exclude]
            return self._endpoints[min(live)[2]] if live else None

    def generate(self, requests: Sequence[Request], progress: ProgressFn | None = None) -> list[Completion]:
        with self._default_lock:
            if self._default is None:
                self._default = _Session(self)
        return self._default.generate(requests, progress)

    # ------------------------------------------------------------------ generation
    def _generate(self, session: "_Session", requests: Sequence[Request], progress: ProgressFn | None) -> list[Completion]:
        if not requests:
            return []
        check_requests(requests, self.n_ctx, "use a server with a longer context")
        call = _Call(len(requests))
        results: list[Completion | None] = [None] * len(requests)
        errors: list[BaseException] = []

        def work(i: int) -> None:
            try:
                results[i] = self._run(session, requests[i], call, i)
                call.update(i, results[i].n_tokens)
            except _Cancelled:
                pass
            except BaseException as e:  # first failure cancels the rest of the call
                with call.cond:
                    errors.append(e)
                call.cancel()
            finally:
                with call.cond:
                    call.finished += 1
                    call.changed = True
                    call.cond.notify_all()

        threads = [threading.Thread(target=work, args=(i,), daemon=True, name=f"openai-req-{i}")
                   for i in range(len(requests))]
        for t in threads:
            t.start()
        reported = None
        try:
            while True:
                with call.cond:
                    call.cond.wait_for(lambda: call.changed, timeout=0.5)
                    call.changed = False
                    counts = list(call.counts)
                    done = call.finished == len(threads) or bool(errors)
                if progress is not None and not errors and counts != reported:
                    reported = counts
                    progress(counts)
                if done:
                    break
        except BaseException:
            call.cancel()
            for t in threads:
                t.join(timeout=5)
            raise
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return results  # type: ignore[return-value]

    def _run(self, session: "_Session", req: Request, call: _Call, i: int) -> Completion:
        """One request to completion: retries on the session's server, then fails over."""
        cfg = self.config
        tried: set[int] = set()
        last = "no healthy server"
        while True:
            ep = session.endpoint(tried)
            if ep is None:
                urls = ", ".join(cfg.base_urls)
                raise EngineError(f"every server failed ({urls}); last error: {last}")
            idx = self._endpoints.index(ep)
            for attempt in range(cfg.retries + 1):
                if call.cancelled.is_set():
                    raise _Cancelled()
                if attempt and not ep.healthy:
                    break  # another request of this session gave up on it already
                try:
                    return self._attempt(ep, req, call, i)
                except _Retryable as e:
                    if call.cancelled.is_set():
                        raise _Cancelled() from None
                    last = str(e)
                    with ep.lock:
                        ep.failures += 1
                        ep.last_error = last
                    call.update(i, 0)  # the request restarts from scratch
                    if attempt < cfg.retries and call.cancelled.wait(self._backoff(attempt, e.retry_after)):
                        raise _Cancelled() from None
            if ep.healthy:
                ep.mark_down(cfg.down_s, last)
            tried.add(idx)

    def _body(self, req: Request) -> dict:
        p: SamplingParams = req.params
        prompt: Any = req.prompt if self.prompt_format == "ids" else self.detokenize(req.prompt)
        body: dict[str, Any] = {
            "model": self.model, "prompt": prompt, "max_tokens": p.max_tokens, "temperature": p.temperature,
            "top_p": p.top_p, "stream": self.config.stream,
        }
        if self.config.stream:
            body["stream_options"] = {"include_usage": True}
        if p.seed is not None:
            body["seed"] = p.seed
        if p.stop:
            body["stop"] = list(p.stop)
        if p.logprobs:
            body["logprobs"] = p.logprobs
        if self.kind == "llama.cpp":
            body.update(top_k=p.top_k, min_p=0.0, ignore_eos=p.ignore_eos, cache_prompt=True, verbose=True)
        elif self.kind in ("vllm", "sglang"):
            body.update(top_k=p.top_k or -1, min_p=0.0, ignore_eos=p.ignore_eos, skip_special_tokens=True)
            if self.kind == "vllm":
                body.update(return_token_ids=True, include_stop_str_in_output=False)
                if p.logprobs:
                    body["return_tokens_as_token_ids"] = True
        else:
            if p.top_k:
                body["top_k"] = p.top_k
            if p.ignore_eos:
                body["ignore_eos"] = True
        return body

    def _attempt(self, ep: _Endpoint, req: Request, call: _Call, i: int) -> Completion:
        """One try of one request on one server."""
        while not ep.slots.acquire(timeout=0.1):
            if call.cancelled.is_set():
                raise _Cancelled()
        with ep.lock:
            ep.in_flight += 1
            ep.requests += 1
        try:
            try:
                acc = self._exchange(ep, req, call, i)
            except _Rejected as e:
                if self._format_known or self.prompt_format != "ids" or e.status not in (400, 422):
                    raise
                self.prompt_format, self._format_known = "text", True  # a generic server that wants text
                acc = self._exchange(ep, req, call, i)
            if not self._format_known:
                self._format_known = True
            return self._completion(ep, req, acc)
        finally:
            with ep.lock:
                ep.in_flight -= 1
            ep.slots.release()

    def _exchange(self, ep: _Endpoint, req: Request, call: _Call, i: int) -> _Acc:
        cfg = self.config
        acc = _Acc()
        deadline = time.monotonic() + cfg.timeout_s
        url = ep.url + "/v1/completions"
        try:
            with ep.client.stream("POST", "/v1/completions", json=self._body(req)) as resp:
                with call.cond:
                    call.open.add(resp)
                try:
                    if call.cancelled.is_set():
                        raise _Cancelled()
                    _check(resp, url)
                    if not cfg.stream:
                        self._absorb(acc, json.loads(resp.read()), req, url)
                    else:
                        for line in resp.iter_lines():
                            if call.cancelled.is_set():
                                raise _Cancelled()
                            if time.monotonic() > deadline:
                                raise _Retryable(f"{url}: no complete answer within timeout_s={cfg.timeout_s}")
                            if not line.startswith("data:"):
                                continue  # SSE comments, pings, event names
                            data = line[5:].strip()
                            if data == "[DONE]":
                                break
                            self._absorb(acc, json.loads(data), req, url)
                            call.update(i, acc.n_generated)
                finally:
                    with call.cond:
                        call.open.discard(resp)
        except (_Cancelled, _Rejected):
            raise
        except Exception as e:
            if call.cancelled.is_set():
                raise _Cancelled() from None  # our own close() of the stream
            if isinstance(e, _Retryable):
                raise
            if isinstance(e, httpx.TimeoutException):
                raise _Retryable(f"{url}: timed out ({type(e).__name__}, timeout_s={cfg.timeout_s})") from None
            if isinstance(e, (httpx.HTTPError, httpx.StreamError, ValueError)):
                raise _Retryable(f"{url}: {type(e).__name__}: {e or 'connection lost'}") from None
            raise
        if acc.finish is None:
            raise _Retryable(f"{url}: the stream ended before the completion finished")
        return acc

    def _absorb(self, acc: _Acc, event: dict, req: Request, url: str) -> None:
        """Fold one streamed chunk (or a whole non-streamed answer) into the request's state."""
        if "error" in event:
            err = event["error"]
            msg = err.get("message", err) if isinstance(err, dict) else err
            code = err.get("code") if isinstance(err, dict) else None
            if isinstance(code, int) and 400 <= code < 500 and code not in (408, 429):
                raise _Rejected(f"server {url} rejected the request ({code}): {msg}", code)
            raise _Retryable(f"{url} failed mid-stream: {msg}")
        if event.get("usage"):
            acc.usage = event["usage"]
        if event.get("timings"):
            acc.timings = event["timings"]
        verbose = event.get("__verbose") or {}
        for choice in event.get("choices") or []:
            acc.chunks += 1
            acc.text += choice.get("text") or ""
            ids = choice.get("token_ids")
            if ids is None and isinstance(verbose.get("tokens"), list):
                ids = verbose["tokens"]
            if ids is not None:
                acc.ids = (acc.ids or []) + [int(t) for t in ids]
            if choice.get("logprobs") and req.params.logprobs:
                tops, lp_ids = _parse_logprobs(choice["logprobs"], req.params.logprobs)
                acc.logprobs = (acc.logprobs or []) + tops
                if ids is None and lp_ids and all(t >= 0 for t in lp_ids):
                    acc.ids = (acc.ids or []) + lp_ids
            if choice.get("finish_reason"):
                acc.finish = choice["finish_reason"]
                acc.stop_reason = choice.get("stop_reason", choice.get("matched_stop"))
        if verbose.get("stop_type") and verbose.get("stop_type") != "none":
            acc.stop_type = verbose["stop_type"]
            acc.stopping_word = verbose.get("stopping_word") or None

    def _completion(self, ep: _Endpoint, req: Request, acc: _Acc) -> Completion:
        p = req.params
        # finish reason and stop string
        stop_string = None
        if acc.stop_type:  # llama.cpp
            finish = {"eos": "eos", "word": "stop"}.get(acc.stop_type, "length")
            stop_string = acc.stopping_word if finish == "stop" else None
        elif acc.finish == "length":
            finish = "length"
        elif isinstance(acc.stop_reason, str) and acc.stop_reason:
            finish, stop_string = "stop", acc.stop_reason
        else:
            finish = "eos"  # "stop" with no matched string: end-of-sequence (or a stop token id)
        # token ids: the server's, checked against its count; else re-tokenized text
        ids = acc.ids
        usage = acc.usage or {}
        n_reported = usage.get("completion_tokens")
        if ids is not None and n_reported is not None and len(ids) != n_reported:
            ids = None  # a token the server did not stream (llama.cpp holds back split UTF-8): re-tokenize
        if ids is not None and finish == "eos" and ids and not p.ignore_eos:
            ids = ids[:-1]  # the end-of-sequence token itself
        if ids is None:
            ids = self.tokenize(acc.text, special=False, _prefer=ep) if acc.text else []
        logprobs = None
        if p.logprobs:
            logprobs = (acc.logprobs or [])[: len(ids)]
        # prompt accounting
        prompt_tokens = len(req.prompt)
        details = usage.get("prompt_tokens_details")
        cached = None
        if isinstance(details, dict) and details.get("cached_tokens") is not None:
            cached = int(details["cached_tokens"])
        elif acc.timings and acc.timings.get("cache_n") is not None:
            cached = int(acc.timings["cache_n"])
        if cached is not None:
            self.reports_cached = True
        elif self.reports_cached is None:
            self.reports_cached = False
        reused = min(max(cached or 0, 0), prompt_tokens)
        with ep.lock:
            ep.prompt_tokens += prompt_tokens
            ep.cached_tokens += reused
        return Completion(
            token_ids=ids, text=acc.text, finish_reason=finish, prompt_tokens=prompt_tokens,
            prompt_computed=prompt_tokens - reused, prompt_reused=reused, logprobs=logprobs,
            stop_string=stop_string,
        )

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        for ep in getattr(self, "_endpoints", []):
            ep.client.close()
        tok = getattr(self, "_tokenizer", None)
        if tok is not None and hasattr(tok, "close"):
            tok.close()

    def __enter__(self) -> "OpenAIEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Session:
    """An Engine-protocol view of an OpenAIEngine pinned to one server while that server is healthy,
    so every branch and round of one question lands on one prefix cache."""

    name = OpenAIEngine.name

    def __init__(self, engine: OpenAIEngine):
        self._engine = engine
        self._lock = threading.Lock()
        self._ep: _Endpoint | None = None
        self.closed = False
        self.endpoint()

    def endpoint(self, exclude: set[int] = frozenset()) -> _Endpoint | None:
        """The pinned server; re-pinned to the least-loaded healthy one if it is down or excluded."""
        eng = self._engine
        with self._lock:
            ep = self._ep
            if ep is not None and ep.healthy and eng._endpoints.index(ep) not in exclude:
                return ep
            new = eng._pick(set(exclude))
            with eng._lock:
                if ep is not None:
                    ep.sessions -= 1
                if new is not None:
                    new.sessions += 1
            self._ep = new
            self.closed = False
            return new

    @property
    def url(self) -> str | None:
        return self._ep.url if self._ep is not None else None

    @property
    def n_ctx(self) -> int:
        return self._engine.n_ctx

    @property
    def model_info(self) -> dict:
        return self._engine.model_info

    def generate(self, requests: Sequence[Request], progress: ProgressFn | None = None) -> list[Completion]:
        return self._engine._generate(self, requests, progress)

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        return self._engine.tokenize(text, special, _prefer=self._ep)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._engine.detokenize(ids, _prefer=self._ep)

    def render_chat(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        return self._engine.render_chat(messages, add_generation_prompt)

    def release(self, slot: str) -> None:
        pass

    def session(self) -> "_Session":
        return self._engine.session()

    def close(self) -> None:
        """Unpin: the server stops counting this session in its load."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            if self._ep is not None:
                with self._engine._lock:
                    self._ep.sessions -= 1
                self._ep = None

    def __enter__(self) -> "_Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
