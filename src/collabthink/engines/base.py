"""The engine protocol: the one interface every backend (llama.cpp, vLLM, OpenAI server) implements.

Methods are controllers that only talk to this protocol, so they run unchanged on any backend and
comparisons between them are on equal terms (same tokens, same sampling, same accounting).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Protocol, Sequence, runtime_checkable


class EngineError(RuntimeError):
    """A backend failure worth a clear one-line message (bad model file, prompt too long, ...)."""


@dataclass(frozen=True)
class SamplingParams:
    """How one request samples. The only place sampling defaults are defined."""

    max_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 20  # 0 = whole vocabulary
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int = 0  # top-k logprobs to return per generated token; 0 = none
    ignore_eos: bool = False  # keep going past end-of-sequence (benchmarks need fixed lengths)

    def __post_init__(self) -> None:
        if self.max_tokens <= 0:
            raise ValueError(f"max_tokens must be > 0, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0 or self.logprobs < 0:
            raise ValueError("top_k and logprobs must be >= 0")
        if isinstance(self.stop, str) or isinstance(self.stop, list):
            object.__setattr__(self, "stop", tuple([self.stop] if isinstance(self.stop, str) else self.stop))

    def but(self, **changes) -> "SamplingParams":
        """A copy with some fields changed (e.g. a per-branch seed)."""
        return replace(self, **changes)


@dataclass
class Request:
    """One sequence to continue.

    `slot` names a cache slot (a branch): if the slot's cached tokens share a prefix with `prompt`,
    only the rest is prefilled, which is what lets a branch pause after a chunk and resume with
    appended text at the cost of the appended tokens. A request on a slot whose cache holds a longer
    sequence drops the cached tail beyond the common prefix: that is how a temporary continuation (CPT's
    fork extraction) is discarded before the branch resumes.
    """

    prompt: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    slot: str | None = None


@dataclass
class Completion:
    """What one request produced. `finish_reason` is "stop" (a stop string), "eos" or "length"."""

    token_ids: list[int]
    text: str
    finish_reason: str
    prompt_tokens: int
    prompt_computed: int  # prompt tokens the engine had to prefill
    prompt_reused: int  # prompt tokens served from cache
    logprobs: list[list[tuple[int, float]]] | None = None  # per generated token: top-k (token, logprob)
    stop_string: str | None = None

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)


def check_requests(requests: Sequence[Request], n_ctx: int, fix: str) -> None:
    """What no engine can run: two requests on one slot, an empty prompt, a prompt that fills the
    context (`fix` says how to get a longer one)."""
    slots = [r.slot for r in requests if r.slot is not None]
    if len(set(slots)) != len(slots):
        raise EngineError("two requests in one call name the same slot")
    for r in requests:
        if not r.prompt:
            raise EngineError("empty prompt: a request needs at least one prompt token")
        if len(r.prompt) >= n_ctx:
            raise EngineError(f"prompt of {len(r.prompt)} tokens does not fit the context window of {n_ctx} "
                              f"tokens: shorten the prompt or {fix}")


# Called during generation with the number of tokens generated so far for each request of the call.
ProgressFn = Callable[[Sequence[int]], None]


@runtime_checkable
class Engine(Protocol):
    """A text-generation backend. Implementations must be safe to call from one thread at a time."""

    name: str
    n_ctx: int  # longest sequence (prompt + generated) the engine accepts per request

    def generate(self, requests: Sequence[Request], progress: ProgressFn | None = None) -> list[Completion]:
        """Continue every request; all of them decode together, not one after another."""
        ...

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        ...

    def detokenize(self, ids: Sequence[int]) -> str:
        ...

    def render_chat(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        """The model's chat template applied to messages (text, special tokens included)."""
        ...

    def release(self, slot: str) -> None:
        """Forget a slot's cache (a finished branch) so its memory can be reused."""
        ...
