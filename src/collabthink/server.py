"""`collabthink serve`: an OpenAI-compatible chat-completions endpoint that answers with a method's vote.

Any OpenAI client posts a chat completion; the model name picks the method and its branches
(`cpt-8`, `parallel-4`, `deepconf`), an optional `collabthink` body object sets any other field of
that method's config. The branches run on one engine in worker threads behind a bounded queue, so a
burst gets fast 429s instead of piling up, and every request ends with an answer or a clear error:

- the per-request timeout (queue wait included) and a client disconnect both raise `Cancelled` from
  the method's progress callback, which stops the run at its next decode step (or right after the
  note-extraction call in flight); the embedded engine is then `reset()` so its slots are free;
- the embedded engine runs one question at a time; an engine with `session()` (the OpenAI-server
  engine) gets one session per run and may run several at once (`max_concurrent_runs`);
- the engine's cache is cleared after every serialized run, and nothing of a request outlives its
  response: no request can see another's text.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Literal, Optional, Union, get_type_hints

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from starlette.exceptions import HTTPException

from .engines.base import Engine, EngineError
from .engines.chat import THINK_CLOSE
from .methods import METHODS
from .methods.base import MethodConfig, Result

log = logging.getLogger("collabthink.server")

MODEL_SIZES = (2, 4, 8, 16)  # branch counts listed by GET /v1/models next to the plain method names


@dataclass(frozen=True)
class ServerConfig:
    """Settings of the server; the only place their defaults live (the CLI passes only what was given)."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None  # None = no authentication
    max_body_bytes: int = 1 << 20  # larger request bodies get 413
    max_concurrent_runs: int = 1  # > 1 only for engines with session() (the embedded engine runs one at a time)
    max_queue: int = 8  # runs waiting for a worker; beyond this, 429 with Retry-After
    request_timeout_s: float = 600.0  # queue wait + run; then 504 and the run is cancelled
    default_method: str = "cpt"  # for the model name `collabthink`
    max_branches: int = 8  # per request; the embedded engine is sized for it
    max_budget: int = 2048  # generated tokens per branch per request; the embedded engine is sized for it
    progress_interval_s: float = 0.5  # streaming: progress comments at most this often
    keepalive_s: float = 5.0  # streaming: a comment at least this often, so proxies keep the connection

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_concurrent_runs", "max_branches", "max_budget"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {self.max_queue}")
        for name in ("request_timeout_s", "progress_interval_s", "keepalive_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.default_method not in METHODS:
            raise ValueError(f"unknown default method '{self.default_method}': choose one of {', '.join(METHODS)}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")


# ---------------------------------------------------------------------------------------- errors
class APIError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
             413: "invalid_request_error", 429: "rate_limit_error", 499: "cancelled", 500: "server_error",
             502: "server_error", 503: "server_error", 504: "timeout"}

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.code}}


class Cancelled(Exception):
    """Raised from a run's progress callback to stop it: timeout, client gone, or shutdown."""


# ---------------------------------------------------------------------------------------- request schema
class _StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Message(_StrictModel):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Union[str, list[dict], None] = None  # a string or content parts; only text parts are accepted
    name: Optional[str] = None
    refusal: Optional[str] = None  # accepted on assistant turns, ignored
    tool_calls: Optional[list] = None
    tool_call_id: Optional[str] = None


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")  # include_obfuscation and future options: nothing to obfuscate
    include_usage: bool = False


class ChatCompletionRequest(_StrictModel):
    """The OpenAI chat-completion body. Fields a vote cannot honour are accepted only at neutral values."""

    model: str
    messages: list[_Message] = Field(min_length=1)
    max_tokens: Optional[int] = Field(default=None, ge=1)  # = budget: generated tokens per branch
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: Optional[float] = Field(default=None, ge=0, le=2)
    top_p: Optional[float] = Field(default=None, gt=0, le=1)
    top_k: Optional[int] = Field(default=None, ge=0)  # vLLM / llama.cpp server extension
    seed: Optional[int] = None
    stream: bool = False
    stream_options: Optional[_StreamOptions] = None
    n: Optional[int] = None
    stop: Union[str, list[str], None] = None
    frequency_penalty: Optional[float] = None
    presence_penalty: Optional[float] = None
    logit_bias: Optional[dict] = None
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = None
    response_format: Optional[dict] = None
    tools: Optional[list] = None
    functions: Optional[list] = None
    tool_choice: Any = None
    function_call: Any = None
    parallel_tool_calls: Optional[bool] = None
    # Accepted and ignored: they change nothing in how a vote is computed.
    user: Optional[str] = None
    metadata: Optional[dict] = None
    store: Optional[bool] = None
    service_tier: Optional[str] = None
    prompt_cache_key: Optional[str] = None
    safety_identifier: Optional[str] = None
    reasoning_effort: Optional[str] = None
    verbosity: Optional[str] = None
    modalities: Optional[list[str]] = None
    collabthink: Optional[dict] = None  # validated against the method's config (see method_options)


def _unsupported(req: ChatCompletionRequest) -> None:
    """Standard fields that only have a neutral value here: anything else is a 400 naming the field."""
    checks = [
        ("n", req.n not in (None, 1), "n must be 1: the branches are voted into one answer"),
        ("stop", bool(req.stop), "stop is not supported: branches stop at end of sequence or their budget"),
        ("frequency_penalty", req.frequency_penalty not in (None, 0), "frequency_penalty is not supported: leave it 0"),
        ("presence_penalty", req.presence_penalty not in (None, 0), "presence_penalty is not supported: leave it 0"),
        ("logit_bias", bool(req.logit_bias), "logit_bias is not supported: leave it empty"),
        ("logprobs", bool(req.logprobs) or bool(req.top_logprobs), "logprobs are not supported: leave them off"),
        ("response_format", bool(req.response_format) and req.response_format.get("type") != "text",
         "response_format must be text: the answer is the voted branch's text"),
        ("tools", bool(req.tools) or bool(req.functions), "tools are not supported: send a plain conversation"),
        ("tool_choice", req.tool_choice not in (None, "none", "auto") or req.function_call not in (None, "none", "auto"),
         "tool_choice is not supported: send a plain conversation"),
    ]
    for param, bad, message in checks:
        if bad:
            raise APIError(400, message, param=param, code="unsupported_parameter")


def _validation_error(e: ValidationError, prefix: str = "") -> APIError:
    err = e.errors()[0]
    loc = prefix + ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        return APIError(400, f"unknown field '{loc}': remove it", param=loc, code="unknown_field")
    if err["type"] == "missing":
        return APIError(400, f"missing required field '{loc}'", param=loc, code="missing_field")
    return APIError(400, f"invalid value for '{loc}': {err['msg']}", param=loc, code="invalid_value")


# ---------------------------------------------------------------------------------------- method options
_OPTION_MODELS: dict[str, type[BaseModel]] = {}


def _options_model(method: str) -> type[BaseModel]:
    """A pydantic model of `collabthink` for one method: its config's fields, all optional, nothing else."""
    model = _OPTION_MODELS.get(method)
    if model is None:
        cls = METHODS[method].config
        hints = get_type_hints(cls)
        spec: dict[str, Any] = {f.name: (Optional[hints[f.name]], None) for f in fields(cls)}
        spec["method"] = (Optional[str], None)
        model = _OPTION_MODELS[method] = create_model(f"{method}_options", __config__=ConfigDict(extra="forbid"), **spec)
    return model


def parse_model_name(name: str, default_method: str) -> tuple[str, int | None]:
    """`cpt-8` → (cpt, 8); `cpt` → (cpt, None); `collabthink` → the default method. Unknown: 404."""
    m = re.fullmatch(r"(?:collabthink[/:])?([a-z]+)(?:-(\d+))?", name.strip())
    method = m.group(1) if m else None
    if method == "collabthink" and m.group(2) is None:
        return default_method, None
    if method not in METHODS:
        raise APIError(404, f"unknown model '{name}': use <method> or <method>-<branches> with a method of "
                            f"{', '.join(METHODS)} (e.g. cpt-8); GET /v1/models lists them",
                       param="model", code="model_not_found")
    return method, int(m.group(2)) if m.group(2) else None


@dataclass
class Plan:
    """What a request asks for, validated: the method, its config and the problem text."""

    method: str
    config: MethodConfig
    problem: str
    stream: bool
    include_usage: bool


def conversation_problem(messages: list[_Message]) -> tuple[str, str | None]:
    """The problem text and system prompt of a conversation.

    System (and developer) messages, joined, become the method's system prompt. A single user turn is
    the problem as is; with earlier turns, they are written out as a transcript before the last user
    message, so the branches see the whole conversation while answering its last question.
    """
    system, turns = [], []
    for i, m in enumerate(messages):
        if m.role in ("tool", "function") or m.tool_calls or m.tool_call_id:
            raise APIError(400, f"messages[{i}]: tool messages are not supported: send a plain conversation",
                           param=f"messages.{i}", code="unsupported_parameter")
        if isinstance(m.content, list):
            for j, part in enumerate(m.content):
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise APIError(400, f"messages[{i}].content[{j}]: only text parts are supported, got type "
                                        f"'{part.get('type')}'", param=f"messages.{i}.content.{j}", code="unsupported_parameter")
            text = "\n".join(part["text"] for part in m.content)
        else:
            text = m.content
        text = (text or "").strip()
        if m.role in ("system", "developer"):
            if text:
                system.append(text)
        else:
            turns.append((m.role, text))
    if not turns or turns[-1][0] != "user" or not turns[-1][1]:
        raise APIError(400, "the last message must be a non-empty user message: it is the question to answer",
                       param="messages", code="invalid_value")
    *earlier, (_, question) = turns
    if earlier:
        lines = "\n\n".join(f"{'User' if role == 'user' else 'Assistant'}: {text}" for role, text in earlier if text)
        question = f"Earlier in this conversation:\n\n{lines}\n\nNow answer the latest message:\n\n{question}"
    return question, "\n\n".join(system) or None


def plan_request(req: ChatCompletionRequest, settings: ServerConfig) -> Plan:
    """Model name + standard fields + `collabthink` object → a method config; the object wins on overlap."""
    _unsupported(req)
    method, branches = parse_model_name(req.model, settings.default_method)
    extra = dict(req.collabthink or {})
    if extra.get("method") is not None:
        method = extra["method"]
        if method not in METHODS:
            raise APIError(400, f"unknown method '{method}' in collabthink.method: choose one of {', '.join(METHODS)}",
                           param="collabthink.method", code="invalid_value")
    try:
        given = _options_model(method).model_validate(extra).model_dump(exclude_unset=True)
    except ValidationError as e:
        err = e.errors()[0]
        name = str(err["loc"][0]) if err["loc"] else ""
        owners = [m for m, spec in METHODS.items() if name in {f.name for f in fields(spec.config)}]
        if err["type"] == "extra_forbidden" and owners:
            raise APIError(400, f"collabthink.{name} does not apply to method {method} (it is an option of "
                                f"{', '.join(owners)})", param=f"collabthink.{name}", code="unknown_field") from None
        if err["type"] == "extra_forbidden":
            known = ", ".join(sorted(f.name for f in fields(METHODS[method].config)))
            raise APIError(400, f"unknown field 'collabthink.{name}' for method {method} (known: method, {known})",
                           param=f"collabthink.{name}", code="unknown_field") from None
        raise _validation_error(e, "collabthink.") from None
    given.pop("method", None)
    options: dict[str, Any] = {}
    if branches is not None:
        options["branches"] = branches
    budget = req.max_completion_tokens or req.max_tokens
    for name, value in (("budget", budget), ("temperature", req.temperature), ("top_p", req.top_p),
                        ("top_k", req.top_k), ("seed", req.seed)):
        if value is not None:
            options[name] = value
    problem, system = conversation_problem(req.messages)
    if system is not None:
        options["system_prompt"] = system
    options.update({k: v for k, v in given.items() if v is not None})
    try:
        config = METHODS[method].config.from_options(**options)
    except (ValueError, TypeError) as e:
        raise APIError(400, f"invalid settings for method {method}: {e}", code="invalid_value") from None
    if config.branches > settings.max_branches:
        raise APIError(400, f"branches must be <= {settings.max_branches} on this server, got {config.branches}: "
                            "ask for fewer (or start the server with a larger --max-branches)",
                       param="branches", code="invalid_value")
    if config.budget > settings.max_budget:
        raise APIError(400, f"max_tokens (the budget per branch) must be <= {settings.max_budget} on this server, "
                            f"got {config.budget}: ask for fewer (or start the server with a larger --max-budget)",
                       param="max_tokens", code="invalid_value")
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    return Plan(method, config, problem, req.stream, include_usage)


# ---------------------------------------------------------------------------------------- runs
class Job:
    """One admitted run. The event loop reads its future and events; the worker thread fills them."""

    def __init__(self, request_id: str, plan: Plan, loop: asyncio.AbstractEventLoop, deadline: float,
                 progress_interval_s: float = 0.5):
        self.id, self.plan, self.loop, self.deadline = request_id, plan, loop, deadline
        self.interval = progress_interval_s
        self.created = time.monotonic()
        self.future: asyncio.Future = loop.create_future()
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancel_reason: str | None = None  # set on the loop, read by the worker (a plain attribute is enough)
        self.started: float | None = None
        self._last_progress = 0.0
        self._last_key: tuple | None = None

    def cancel(self, reason: str) -> None:
        if self.cancel_reason is None and not self.future.done():
            self.cancel_reason = reason

    def progress(self, event: dict) -> None:
        """The method's progress callback, on the worker thread: stop the run, or forward a throttled event."""
        if self.cancel_reason is not None:
            raise Cancelled(self.cancel_reason)
        if time.monotonic() > self.deadline:
            self.cancel_reason = "timeout"
            raise Cancelled("timeout")
        if not self.plan.stream:
            return
        now = time.monotonic()
        key = (event.get("phase"), event.get("round"))
        if key == self._last_key and now - self._last_progress < self.interval:
            return
        self._last_key, self._last_progress = key, now
        self._post("progress", {k: event[k] for k in ("phase", "round", "tokens", "pool", "budget") if k in event})

    def _post(self, kind: str, payload: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, payload))
        except RuntimeError:  # the loop is gone (server shut down): nobody is listening
            pass

    def finish(self, result: Result | None, error: BaseException | None) -> None:
        def settle():
            if not self.future.done():
                if error is not None:
                    self.future.set_exception(error)
                    self.future.exception()  # retrieved: a disconnected client leaves nobody to await it
                else:
                    self.future.set_result(result)
            self.events.put_nowait(("done", None))

        try:
            self.loop.call_soon_threadsafe(settle)
        except RuntimeError:
            pass


class Runner:
    """Worker threads over one engine, with admission control: running + waiting <= workers + max_queue."""

    def __init__(self, engine_or_factory: Engine | Callable[[], Engine], settings: ServerConfig):
        self.settings = settings
        self._source = engine_or_factory
        self.engine: Engine | None = None if _is_factory(engine_or_factory) else engine_or_factory
        if self.engine is not None:
            self._check_engine()
        self.pool = ThreadPoolExecutor(max_workers=settings.max_concurrent_runs, thread_name_prefix="collabthink-run")
        self._lock = threading.Lock()
        self.admitted = 0
        self.running = 0
        self.jobs: set[Job] = set()
        self._recent: list[float] = []  # wall seconds of recent runs, for Retry-After

    def start(self) -> None:
        """Build the engine on a worker thread (the thread that will use it) and check it can run in parallel."""
        if self.engine is None:
            self.engine = self.pool.submit(self._source).result()
            self._check_engine()

    def _check_engine(self) -> None:
        if self.settings.max_concurrent_runs > 1 and not hasattr(self.engine, "session"):
            raise ValueError(f"max_concurrent_runs={self.settings.max_concurrent_runs} needs an engine with "
                             f"session() (--engine openai); the {getattr(self.engine, 'name', 'given')} engine "
                             "runs one question at a time: use --max-concurrent-runs 1")

    @property
    def queued(self) -> int:
        return self.admitted - self.running

    def retry_after(self) -> int:
        per_run = sum(self._recent) / len(self._recent) if self._recent else 10.0
        return max(1, math.ceil(per_run * (self.queued + 1) / self.settings.max_concurrent_runs))

    def submit(self, job: Job) -> bool:
        with self._lock:
            if self.admitted >= self.settings.max_concurrent_runs + self.settings.max_queue:
                return False
            self.admitted += 1
        self.jobs.add(job)
        job.future.add_done_callback(lambda _: self.jobs.discard(job))
        self.pool.submit(self._work, job)
        return True

    def _work(self, job: Job) -> None:
        with self._lock:
            self.running += 1
        try:
            if job.cancel_reason is not None or time.monotonic() > job.deadline:
                job.finish(None, Cancelled(job.cancel_reason or "timeout"))
                return
            job.started = time.monotonic()
            _log("run_start", job.id, method=job.plan.method, branches=job.plan.config.branches,
                 budget=job.plan.config.budget, waited_s=round(job.started - job.created, 3))
            engine, session = self.engine, None
            result, error = None, None
            try:
                # An engine with sessions gives each run its own view (its own slots and accounting).
                session = engine.session() if hasattr(engine, "session") else None
                result = METHODS[job.plan.method].run(session or engine, job.plan.problem, job.plan.config,
                                                      progress=job.progress)
            except BaseException as e:  # noqa: BLE001 - every failure goes back to the request
                error = e
            finally:
                if session is not None and hasattr(session, "close"):
                    session.close()
                if session is None and hasattr(engine, "reset") and self.settings.max_concurrent_runs == 1:
                    engine.reset()  # serialized runs: free every slot, and leave nothing for the next request
            wall = time.monotonic() - job.started
            if error is None:
                self._recent = (self._recent + [wall])[-20:]
            _log("run_end", job.id, wall_s=round(wall, 3),
                 outcome="ok" if error is None else ("cancelled" if isinstance(error, Cancelled) else "error"),
                 **({"error": f"{type(error).__name__}: {error}"} if error is not None else {}))
            job.finish(result, error)
        finally:
            with self._lock:
                self.running -= 1
                self.admitted -= 1

    def shutdown(self) -> None:
        for job in list(self.jobs):
            job.cancel("server shutting down")
        self.pool.shutdown(wait=False, cancel_futures=True)


def _is_factory(x: Any) -> bool:
    return callable(x) and not hasattr(x, "generate")


# ---------------------------------------------------------------------------------------- responses
def _winner(result: Result):
    """The first branch whose answer won the vote (its spelling is the winner's), else branch 0."""
    for b in result.branches:
        if result.answer is not None and b.answer == result.answer:
            return b
    return result.branches[0] if result.branches else None


def answer_text(result: Result) -> tuple[str, str]:
    """The message content and finish_reason: the winning branch's reply, without its reasoning block."""
    b = _winner(result)
    if b is None:
        return "", "stop"
    text = b.text
    if THINK_CLOSE in text:
        tail = text[text.rindex(THINK_CLOSE) + len(THINK_CLOSE):].strip()
        text = tail or text
    return text.strip(), "length" if b.finish_reason == "length" else "stop"


def usage(result: Result) -> dict:
    """Every prompt token the engine was given (cached ones counted in cached_tokens) and every token it
    generated: all branches plus side calls (CPT's notes, LeaP's summaries)."""
    cost, extra = result.trace.cost, result.trace.extra
    prompt = cost.prefill_computed + cost.prefill_reused
    completion = cost.generated_tokens + int(extra.get("extraction_tokens", 0)) + int(extra.get("summary_tokens", 0))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cost.prefill_reused}}


def extension(result: Result, method: str) -> dict:
    """The `collabthink` field of a response: the vote and what the method did to reach it."""
    t = result.trace
    w = _winner(result)
    return {
        "method": method,
        "answer": result.answer,
        "votes": result.votes,
        "valid": t.vote.get("valid"),
        "total": t.vote.get("total"),
        "winner_branch": w.index if w is not None and result.answer is not None else None,
        "branches": [{"index": b.index, "answer": b.answer, "tokens": b.n_tokens, "finish_reason": b.finish_reason}
                     for b in result.branches],
        "rounds": len(t.rounds),
        "pool_size": len(t.extra["pool"]) if "pool" in t.extra else None,
        "phase_changes": t.extra.get("phase_changes", {}),
        "config": t.config,
        "cost": asdict(t.cost),
    }


def _run_error(e: BaseException, request_id: str) -> APIError:
    if isinstance(e, APIError):
        return e
    if isinstance(e, Cancelled):
        if str(e) == "timeout":
            return APIError(504, "the request took longer than the server's timeout; the run was cancelled: "
                                 "ask for fewer branches or tokens", code="timeout")
        return APIError(499 if "disconnect" in str(e) else 503, f"the run was cancelled: {e}", code="cancelled")
    if isinstance(e, EngineError) and "context window" in str(e):
        return APIError(400, str(e), param="messages", code="context_length_exceeded")
    if isinstance(e, (EngineError, ValueError)):
        return APIError(400 if isinstance(e, ValueError) else 500, str(e).strip().splitlines()[0],
                        code="engine_error" if isinstance(e, EngineError) else "invalid_value")
    return APIError(500, f"internal error ({type(e).__name__}); see the server log for request {request_id}",
                    code="internal_error")


def _log(event: str, request_id: str | None = None, **fields_: Any) -> None:
    """One JSON object per line, so logs can be filtered by request id."""
    record = {"ts": round(time.time(), 3), "event": event}
    if request_id is not None:
        record["request_id"] = request_id
    record.update(fields_)
    log.info(json.dumps(record, ensure_ascii=False, default=str))


# ---------------------------------------------------------------------------------------- the app
class _RequestIdMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware, which would interfere with streaming and disconnect detection):
    gives every request an id, returns it in `x-request-id` and logs one line when the response starts."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = given if re.fullmatch(r"[A-Za-z0-9._-]{1,64}", given) else "req-" + uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = rid
        started = time.monotonic()

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
                _log("response", rid, method=scope["method"], path=scope["path"], status=message["status"],
                     latency_s=round(time.monotonic() - started, 3))
            await send(message)

        await self.app(scope, receive, send_with_id)


def create_app(engine_or_factory: Engine | Callable[[], Engine], settings: ServerConfig | None = None):
    """The FastAPI app over an engine (or a no-argument factory, called at startup on the worker thread)."""
    settings = settings or ServerConfig()
    runner = Runner(engine_or_factory, settings)

    @asynccontextmanager
    async def lifespan(app):
        await asyncio.get_running_loop().run_in_executor(None, runner.start)
        engine = runner.engine
        _log("server_start", engine=getattr(engine, "name", "?"), model=dict(getattr(engine, "model_info", {})).get("name"),
             **{k: v for k, v in asdict(settings).items() if k != "api_key"}, auth=settings.api_key is not None)
        try:
            yield
        finally:
            runner.shutdown()
            _log("server_stop")

    app = FastAPI(title="collabthink", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_RequestIdMiddleware)
    app.state.runner = runner
    app.state.settings = settings

    def error_response(e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(APIError)
    async def _api_error(request, e: APIError):
        return error_response(e)

    @app.exception_handler(HTTPException)
    async def _http_error(request, e: HTTPException):
        message = {404: f"no route {request.method} {request.url.path}: use POST /v1/chat/completions, "
                        "GET /v1/models or GET /health",
                   405: f"method {request.method} is not allowed on {request.url.path}"}.get(e.status_code, str(e.detail))
        return error_response(APIError(e.status_code, message, code="not_found" if e.status_code == 404 else None))

    @app.exception_handler(RequestValidationError)
    async def _validation(request, e: RequestValidationError):
        return error_response(APIError(400, f"invalid request: {e.errors()[0].get('msg')}"))

    def authorize(request: Request) -> None:
        if settings.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if not header:
            raise APIError(401, "missing API key: send the header 'Authorization: Bearer <key>'",
                           code="missing_api_key", headers={"WWW-Authenticate": "Bearer"})
        if scheme.lower() != "bearer" or token.strip() != settings.api_key:
            raise APIError(401, "invalid API key: send the server's key as 'Authorization: Bearer <key>'",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    async def read_body(request: Request) -> bytes:
        limit = settings.max_body_bytes
        too_big = APIError(413, f"request body larger than {limit} bytes: send a shorter conversation",
                           code="request_too_large")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise too_big
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_big
        return bytes(body)

    @app.get("/health")
    async def health():
        engine = runner.engine
        return {"status": "ok", "engine": getattr(engine, "name", None),
                "model": dict(getattr(engine, "model_info", {})).get("name"),
                "running": runner.running, "queued": runner.queued,
                "max_concurrent_runs": settings.max_concurrent_runs, "max_queue": settings.max_queue}

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        names = ["collabthink"]
        for m in METHODS:
            names += [m] + [f"{m}-{n}" for n in MODEL_SIZES if n <= settings.max_branches]
        return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "collabthink"}
                                           for n in names]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        rid = request.scope["state"]["request_id"]
        authorize(request)
        body = await read_body(request)
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise APIError(400, f"the body is not valid JSON ({e}): send a JSON chat-completion request",
                           code="invalid_json") from None
        if not isinstance(data, dict):
            raise APIError(400, "the body must be a JSON object", code="invalid_json")
        try:
            req = ChatCompletionRequest.model_validate(data)
        except ValidationError as e:
            raise _validation_error(e) from None
        plan = plan_request(req, settings)
        loop = asyncio.get_running_loop()
        job = Job(rid, plan, loop, deadline=time.monotonic() + settings.request_timeout_s,
                  progress_interval_s=settings.progress_interval_s)
        if not runner.submit(job):
            retry = runner.retry_after()
            raise APIError(429, f"the server is busy ({runner.running} running, {runner.queued} waiting, queue of "
                                f"{settings.max_queue}): retry after {retry} s", code="queue_full",
                           headers={"Retry-After": str(retry)})
        _log("request", rid, model=req.model, method=plan.method, branches=plan.config.branches,
             budget=plan.config.budget, stream=plan.stream)
        meta = {"id": "chatcmpl-" + rid.removeprefix("req-"), "created": int(time.time()), "model": req.model}
        if plan.stream:
            return _SSEResponse(_stream(job, meta, rid), on_close=lambda: job.cancel("client disconnected"),
                                media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        try:
            while not job.future.done():
                remaining = job.deadline - time.monotonic()
                if remaining <= 0:
                    job.cancel("timeout")
                    raise _run_error(Cancelled("timeout"), rid)
                await asyncio.wait({job.future}, timeout=min(0.25, remaining))
                if not job.future.done() and await request.is_disconnected():
                    job.cancel("client disconnected")
                    _log("client_disconnected", rid)
                    return Response(status_code=499)
        finally:
            job.cancel("request ended")  # no-op once the run is done; stops it when this handler is cancelled
        try:
            result = job.future.result()
        except BaseException as e:  # noqa: BLE001
            raise _run_error(e, rid) from None
        content, finish_reason = answer_text(result)
        return {**meta, "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": finish_reason, "logprobs": None}],
                "usage": usage(result), "collabthink": extension(result, plan.method)}

    async def _stream(job: Job, meta: dict, rid: str):
        def chunk(delta: dict, finish_reason=None, **extra) -> str:
            body = {**meta, "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}], **extra}
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        try:
            yield chunk({"role": "assistant", "content": ""})
            if job.started is None and runner.running >= settings.max_concurrent_runs:
                yield f": collabthink {json.dumps({'event': 'queued', 'waiting': runner.queued})}\n\n"
            while True:
                remaining = job.deadline - time.monotonic()
                if remaining <= 0:
                    job.cancel("timeout")
                    raise Cancelled("timeout")
                try:
                    kind, payload = await asyncio.wait_for(job.events.get(), timeout=min(settings.keepalive_s, remaining))
                except asyncio.TimeoutError:
                    yield ": keepalive\n\n"
                    continue
                if kind == "progress":
                    yield f": collabthink {json.dumps({'event': 'progress', **payload})}\n\n"
                elif kind == "done":
                    break
            result = job.future.result()
            content, finish_reason = answer_text(result)
            yield chunk({"content": content})
            yield chunk({}, finish_reason, collabthink=extension(result, job.plan.method))
            if job.plan.include_usage:
                body = {**meta, "object": "chat.completion.chunk", "choices": [], "usage": usage(result)}
                yield f"data: {json.dumps(body)}\n\n"
        except asyncio.CancelledError:
            job.cancel("client disconnected")
            _log("client_disconnected", rid)
            raise
        except BaseException as e:  # noqa: BLE001 - after the 200 the error goes into the stream
            if isinstance(e, GeneratorExit):
                job.cancel("client disconnected")
                raise
            err = _run_error(e, rid)
            yield f"data: {json.dumps(err.body())}\n\n"
        finally:
            job.cancel("request ended")
        yield "data: [DONE]\n\n"

    class _SSEResponse(StreamingResponse):
        """Calls `on_close` however the response ends, so a run never outlives its connection."""

        def __init__(self, content, on_close: Callable[[], None], **kw):
            super().__init__(content, **kw)
            self._on_close = on_close

        async def __call__(self, scope, receive, send):
            try:
                await super().__call__(scope, receive, send)
            finally:
                self._on_close()

    return app


def serve(engine_or_factory: Engine | Callable[[], Engine], settings: ServerConfig | None = None) -> None:
    """Run the app with uvicorn until interrupted (what `collabthink serve` calls)."""
    import uvicorn

    settings = settings or ServerConfig()
    app = create_app(engine_or_factory, settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=5)
