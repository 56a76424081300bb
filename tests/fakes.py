"""A scripted fake engine for unit tests of the method controllers.

- Tokenizer: one token per character (token id = code point), so detokenize(tokenize(x)) == x for
  every text and token counts are easy to compute by hand.
- `render_chat`: plain ChatML.
- `generate`: the text of every request comes from a script (a callable of the request and the
  engine); the engine applies the request's limits like a real backend does:
  * stop strings: finish "stop", `text` is what came before the stop, `token_ids` run up to and
    including the stop (a real engine stops after the token that completed it);
  * `max_tokens` (and the context window): the text is cut, finish "length";
  * the scripted text ends before any limit: finish "eos".
- Prefix cache: one cached token list per slot; a request reuses its common prefix with its slot's
  cache (always recomputing at least the last prompt token), and afterwards the slot holds the
  prompt and the generated tokens except the last sampled one (never fed back to the model).
  Requests without slot reuse nothing.
- Every call is recorded in `calls` as (requests, completions), so tests can inspect prompt layouts.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Sequence

from collabthink.engines.base import Completion, EngineError, ProgressFn, Request
from collabthink.engines.llamacpp import common_prefix
from collabthink.sharing import NOTES_CLOSE, NOTES_OPEN

Script = Callable[[Request, "FakeEngine"], str]


@dataclass
class Call:
    requests: list[Request]
    completions: list[Completion]


class FakeEngine:
    """Implements the Engine protocol; every answer comes from `script`."""

    name = "fake"

    def __init__(self, script: Script, n_ctx: int = 100_000, n_seq_max: int | None = None):
        self.script = script
        self.n_ctx = n_ctx
        self.n_seq_max = n_seq_max
        self.model_info = {"name": "fake", "n_ctx": n_ctx}
        self.calls: list[Call] = []
        self._cache: dict[str, list[int]] = {}
        self.released: list[str] = []

    # ----------------------------------------------------------------- text
    def tokenize(self, text: str, special: bool = True) -> list[int]:
        return [ord(ch) for ch in text]

    def detokenize(self, ids: Sequence[int]) -> str:
        return "".join(chr(i) for i in ids)

    def render_chat(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        out = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return out + ("<|im_start|>assistant\n" if add_generation_prompt else "")

    # ----------------------------------------------------------------- cache
    def release(self, slot: str) -> None:
        self._cache.pop(slot, None)
        self.released.append(slot)

    def reset(self) -> None:
        self._cache.clear()

    @property
    def slots(self) -> dict[str, int]:
        return {k: len(v) for k, v in self._cache.items()}

    # ----------------------------------------------------------------- generation
    def generate(self, requests: Sequence[Request], progress: ProgressFn | None = None) -> list[Completion]:
        requests = list(requests)
        if not requests:
            return []
        slots = [r.slot for r in requests if r.slot is not None]
        if len(set(slots)) != len(slots):
            raise EngineError("two requests in one call name the same slot")
        if self.n_seq_max is not None and len(requests) > self.n_seq_max:
            raise EngineError(f"{len(requests)} requests in one call but n_seq_max={self.n_seq_max}")
        for r in requests:
            if not r.prompt:
                raise EngineError("empty prompt")
            if len(r.prompt) >= self.n_ctx:
                raise EngineError(f"prompt of {len(r.prompt)} tokens does not fit the context window of {self.n_ctx}")
        # All requests of a call see the caches as they were before the call.
        before = {k: list(v) for k, v in self._cache.items()}
        completions = [self._one(r, before) for r in requests]
        for r, c in zip(requests, completions):
            if r.slot is not None:
                self._cache[r.slot] = list(r.prompt) + (c.token_ids[:-1] if c.token_ids else [])
        self.calls.append(Call([Request(list(r.prompt), r.params, r.slot) for r in requests], completions))
        if progress is not None:
            progress([c.n_tokens for c in completions])
        return completions

    def _one(self, r: Request, before: dict[str, list[int]]) -> Completion:
        source = r.slot
        cached = before.get(source, []) if source is not None else []
        reused = min(common_prefix(cached, r.prompt), len(r.prompt) - 1)
        text = self.script(r, self)
        limit = min(r.params.max_tokens, self.n_ctx - len(r.prompt))
        hits = [(text.find(s), s) for s in r.params.stop if s and text.find(s) >= 0]
        stop_at, stop_s = min(hits) if hits else (None, None)
        if stop_at is not None and stop_at + len(stop_s) <= limit:
            ids = self.tokenize(text[: stop_at + len(stop_s)])
            out, finish = text[:stop_at], "stop"
        elif len(text) >= limit:
            out, finish, stop_s = text[:limit], "length", None
            ids = self.tokenize(out)
        else:
            out, finish, stop_s = text, "eos", None
            ids = self.tokenize(out)
        return Completion(token_ids=ids, text=out, finish_reason=finish, prompt_tokens=len(r.prompt),
                          prompt_computed=len(r.prompt) - reused, prompt_reused=reused, stop_string=stop_s)

    # ----------------------------------------------------------------- helpers for tests
    def requests(self) -> list[Request]:
        return [r for call in self.calls for r in call.requests]

    def log(self) -> list[tuple[Request, Completion]]:
        return [(r, c) for call in self.calls for r, c in zip(call.requests, call.completions)]

    def text(self, ids: Sequence[int]) -> str:
        return self.detokenize(ids)


# ----------------------------------------------------------------------------- a CPT script

EXTRACTION_TAIL = NOTES_OPEN + "\n"
_TAG = re.compile(r"\[b(\d+)\.\d+\]")


def branch_of_slot(slot: str | None) -> int | None:
    """CPT names branch slots `<run>/b<i>`."""
    if slot is None or "/b" not in slot:
        return None
    return int(slot.rsplit("/b", 1)[1])


def is_extraction(r: Request, engine: FakeEngine) -> bool:
    return engine.detokenize(r.prompt[-len(EXTRACTION_TAIL):]) == EXTRACTION_TAIL


def filler(branch: int, k: int, n: int = 600) -> str:
    """Default reasoning chunk: tagged `[b<branch>.<k>]` (fresh extraction finds the branch by it)."""
    head = f"[b{branch}.{k}] "
    return (head + "thinking " * (n // 9 + 1))[:n]


class CPTScript:
    """Scripted answers for a CPT run.

    `chunks[b][k]`: the text branch b's k-th decode request continues with (then `filler`).
    `notes[b][k]`: the note texts (list of str, "insight" type, or (kind, text) pairs) written at
    branch b's k-th extraction (then none). Fork extractions are matched to their branch by slot,
    fresh ones by the first `[b<i>.` tag of the transcript.
    """

    def __init__(self, chunks: dict | None = None, notes: dict | None = None):
        self.chunks = chunks or {}
        self.notes = notes or {}
        self.decodes: dict[int, int] = defaultdict(int)
        self.extractions: dict[int, int] = defaultdict(int)
        self.written: dict[int, list[str]] = defaultdict(list)  # note texts each branch wrote

    def __call__(self, r: Request, engine: FakeEngine) -> str:
        if is_extraction(r, engine):
            b = branch_of_slot(r.slot)
            if b is None:
                text = engine.detokenize(r.prompt)
                m = _TAG.search(text[text.index("<reasoning>"):])
                b = int(m.group(1))
            k = self.extractions[b]
            self.extractions[b] += 1
            items = self.notes.get(b, [])
            items = items[k] if k < len(items) else []
            lines = []
            for it in items:
                kind, body = it if isinstance(it, tuple) else ("insight", it)
                lines.append(f"- (type={kind}) {body}")
                self.written[b].append(body)
            return "\n".join(lines) + ("\n" if lines else "") + NOTES_CLOSE + "\nignored after the block"
        b = branch_of_slot(r.slot)
        k = self.decodes[b]
        self.decodes[b] += 1
        items = self.chunks.get(b, [])
        return items[k] if k < len(items) else filler(b, k)
