"""Embedded engine on llama.cpp (llama-cpp-python's low-level API), for the CPU.

All requests of a call decode together: one `llama_decode` per step carries one token of every active
sequence. Each named slot keeps its sequence in the KV cache between calls, so a branch that pauses
after a chunk and resumes with appended text only pays for the appended tokens. Requests in one call
that share a long prompt prefix (N branches of one question) prefill it once and copy the cache.
"""

from __future__ import annotations

import ctypes
import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Sequence

import numpy as np

from .base import Completion, EngineError, ProgressFn, Request, SamplingParams, check_requests
from .chat import CHATML_TEMPLATE, ChatTemplate
from .models import resolve_model

# A copied prefix must save at least this many tokens over the best cached one to be worth a copy.
_MIN_SHARED_PREFIX = 16


@dataclass(frozen=True)
class LlamaCppConfig:
    """Settings of the embedded engine; the only place their defaults live."""

    model: str | None = None  # GGUF path or packaged model name; None = the default model
    n_ctx: int = 4096  # context window per sequence (prompt + generated)
    n_seq_max: int = 16  # sequences held at once: branches plus scratch sequences
    n_batch: int = 512  # prompt tokens per llama_decode during prefill
    n_threads: int | None = None  # None = every core
    kv_unified: bool = True  # one KV buffer for all sequences: prefix copies are free, faster at N >= 8 here
    flash_attn: bool | None = None  # None = llama.cpp decides (it turns it on for this CPU build)

    def __post_init__(self) -> None:
        for name in ("n_ctx", "n_seq_max", "n_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_seq_max > 256:
            raise ValueError(f"n_seq_max must be <= 256 (llama.cpp's limit), got {self.n_seq_max}")


@dataclass
class _Slot:
    seq_id: int
    tokens: list[int] = field(default_factory=list)  # tokens whose KV is in the cache, in order
    last_used: float = 0.0


@dataclass
class _Run:
    """The state of one request during a call."""

    req: Request
    seq_id: int
    temp: bool
    reused: int = 0
    generated: list[int] = field(default_factory=list)
    text_bytes: bytearray = field(default_factory=bytearray)
    logprobs: list | None = None
    finish: str | None = None
    stop_string: str | None = None
    text: str = ""
    rng: np.random.Generator | None = None

    @property
    def pos(self) -> int:
        """Position of the next token to feed (the last sampled one)."""
        return len(self.req.prompt) + len(self.generated) - 1


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


_log_callback = None  # keep the ctypes callback alive for the process


def _silence_llama_logs(llama_cpp) -> None:
    global _log_callback
    if _log_callback is None:
        _log_callback = llama_cpp.llama_log_callback(lambda level, text, user_data: None)
        llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))


class GGUFVocab:
    """A llama.cpp model's vocabulary, metadata and chat template: what the embedded engine and the
    server engine's local GGUF tokenizer share, so both give the same ids and the same chat text."""

    def __init__(self, ll, model):
        self._ll, self._model = ll, model
        self.vocab = ll.llama_model_get_vocab(model)
        self.n_vocab = ll.llama_vocab_n_tokens(self.vocab)
        self._pieces: dict[int, bytes] = {}
        self.chat_template = ChatTemplate(
            self.meta("tokenizer.chat_template") or CHATML_TEMPLATE,
            bos_token=self.token_text(ll.llama_vocab_bos(self.vocab)),
            eos_token=self.token_text(ll.llama_vocab_eos(self.vocab)),
        )

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(1 << 16)
        n = self._ll.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            self._ll.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", errors="replace")

    def piece(self, token: int, special: bool = True) -> bytes:
        key = token if special else -1 - token
        piece = self._pieces.get(key)
        if piece is None:
            buf = ctypes.create_string_buffer(256)
            n = self._ll.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
            piece = buf.raw[: max(n, 0)]
            self._pieces[key] = piece
        return piece

    def token_text(self, token: int) -> str:
        return self.piece(token).decode("utf-8", errors="replace") if token >= 0 else ""

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 16
        buf = (self._ll.llama_token * cap)()
        n = self._ll.llama_tokenize(self.vocab, data, len(data), buf, cap, False, special)
        if n < 0:
            cap = -n
            buf = (self._ll.llama_token * cap)()
            n = self._ll.llama_tokenize(self.vocab, data, len(data), buf, cap, False, special)
        return list(buf[:n])

    def detokenize(self, ids: Sequence[int], special: bool = True) -> str:
        return b"".join(self.piece(int(t), special) for t in ids).decode("utf-8", errors="replace")

    def render_chat(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        return self.chat_template.render(messages, add_generation_prompt=add_generation_prompt)


class LlamaCppEngine:
    """The Engine protocol on an in-process llama.cpp model."""

    name = "llama.cpp"

    def __init__(self, model: str | os.PathLike | None = None, config: LlamaCppConfig | None = None, **options):
        import llama_cpp  # imported here so `import collabthink` stays cheap

        config = config or LlamaCppConfig()
        known = {f.name for f in fields(LlamaCppConfig)}
        unknown = set(options) - known
        if unknown:
            raise ValueError(f"unknown engine option(s): {', '.join(sorted(unknown))}")
        self.config = LlamaCppConfig(**{**config.__dict__, **options, **({"model": str(model)} if model else {})})
        self._ll = ll = llama_cpp
        self.model_path: Path = resolve_model(self.config.model)
        if not os.environ.get("COLLABTHINK_LLAMA_LOGS"):
            _silence_llama_logs(ll)
        ll.llama_backend_init()

        mparams = ll.llama_model_default_params()
        self._model = ll.llama_model_load_from_file(str(self.model_path).encode(), mparams)
        if not self._model:
            raise EngineError(f"llama.cpp could not load model file '{self.model_path}': pass --model PATH to a valid .gguf")
        self.text = GGUFVocab(ll, self._model)
        self._vocab, self.n_vocab, self.chat_template = self.text.vocab, self.text.n_vocab, self.text.chat_template

        cfg = self.config
        n_train = ll.llama_model_n_ctx_train(self._model)
        self.n_ctx = min(cfg.n_ctx, n_train) if n_train > 0 else cfg.n_ctx
        cparams = ll.llama_context_default_params()
        cparams.n_ctx = self.n_ctx * cfg.n_seq_max
        cparams.n_batch = cfg.n_batch
        cparams.n_ubatch = cfg.n_batch
        cparams.n_seq_max = cfg.n_seq_max
        threads = cfg.n_threads or os.cpu_count() or 1
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.kv_unified = cfg.kv_unified
        cparams.swa_full = True  # sliding-window models must keep every position for prefix reuse
        if cfg.flash_attn is not None:
            cparams.flash_attn_type = 1 if cfg.flash_attn else 0
        self._ctx = ll.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            raise EngineError(
                f"llama.cpp could not create a context of {cparams.n_ctx} tokens: lower n_ctx or n_seq_max"
            )
        self._mem = ll.llama_get_memory(self._ctx)
        self._batch = ll.llama_batch_init(max(cfg.n_batch, cfg.n_seq_max), 0, 1)
        self._slots: dict[str, _Slot] = {}
        self._free_seqs = list(range(cfg.n_seq_max))
        self.system_info = ll.llama_print_system_info().decode(errors="replace")
        self.model_info = {
            "path": str(self.model_path),
            "name": self.text.meta("general.name") or self.model_path.stem,
            "architecture": self.text.meta("general.architecture"),
            "n_params": ll.llama_model_n_params(self._model),
            "n_layer": ll.llama_model_n_layer(self._model),
            "n_embd": ll.llama_model_n_embd(self._model),
            "n_head": ll.llama_model_n_head(self._model),
            "n_head_kv": ll.llama_model_n_head_kv(self._model),
            "n_vocab": self.n_vocab,
            "n_ctx_train": n_train,
        }

    # ----------------------------------------------------------------- text <-> tokens
    def tokenize(self, text: str, special: bool = True) -> list[int]:
        return self.text.tokenize(text, special)

    def detokenize(self, ids: Sequence[int], special: bool = True) -> str:
        return self.text.detokenize(ids, special)

    def render_chat(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        return self.text.render_chat(messages, add_generation_prompt)

    # ----------------------------------------------------------------- cache slots
    def release(self, slot: str) -> None:
        s = self._slots.pop(slot, None)
        if s is not None:
            self._ll.llama_memory_seq_rm(self._mem, s.seq_id, -1, -1)
            self._free_seqs.append(s.seq_id)

    def reset(self) -> None:
        """Forget every slot. Clearing the whole cache also rewinds llama.cpp's cell cursor, so later
        sequences are packed at the start of the buffer and attention spans only the cells in use."""
        for name in list(self._slots):
            self.release(name)
        self._ll.llama_memory_clear(self._mem, True)

    @property
    def slots(self) -> dict[str, int]:
        """Cached tokens per slot (for tests and accounting)."""
        return {k: len(v.tokens) for k, v in self._slots.items()}

    def _take_seq(self, busy: set[str]) -> int:
        if not self._free_seqs:
            idle = [(s.last_used, name) for name, s in self._slots.items() if name not in busy]
            if not idle:
                raise EngineError(
                    f"more than n_seq_max={self.config.n_seq_max} sequences in one call: raise n_seq_max"
                )
            self.release(min(idle)[1])  # least recently used slot gives its sequence up
        return self._free_seqs.pop(0)

    # ----------------------------------------------------------------- batch helpers
    def _decode(self, items: list[tuple[int, int, int, bool]]) -> None:
        """One llama_decode of (token, pos, seq_id, want_logits) items."""
        b = self._batch
        for i, (tok, pos, seq, logits) in enumerate(items):
            b.token[i] = tok
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = logits
        b.n_tokens = len(items)
        ret = self._ll.llama_decode(self._ctx, b)
        if ret != 0:
            raise EngineError(
                f"llama_decode failed (code {ret}): the KV cache is full; lower the number of branches "
                "or raise n_ctx"
            )

    def _logits(self, i: int) -> np.ndarray:
        ptr = self._ll.llama_get_logits_ith(self._ctx, i)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    # ----------------------------------------------------------------- generation
    def generate(self, requests: Sequence[Request], progress: ProgressFn | None = None) -> list[Completion]:
        if not requests:
            return []
        check_requests(requests, self.n_ctx, "raise n_ctx")
        if len(requests) > self.config.n_seq_max:
            raise EngineError(
                f"{len(requests)} requests in one call but n_seq_max={self.config.n_seq_max}: raise n_seq_max"
            )
        runs = self._assign(requests, {r.slot for r in requests if r.slot is not None})
        try:
            self._prefill(runs)
            self._decode_loop(runs, progress)
        finally:
            now = time.monotonic()
            for run in runs:
                if run.temp:
                    self._ll.llama_memory_seq_rm(self._mem, run.seq_id, -1, -1)
                    self._free_seqs.append(run.seq_id)
                else:
                    slot = self._slots[run.req.slot]
                    slot.tokens = list(run.req.prompt) + run.generated[:-1] if run.generated else list(run.req.prompt)
                    slot.last_used = now
        return [self._completion(run) for run in runs]

    def _assign(self, requests: Sequence[Request], busy: set[str]) -> list[_Run]:
        runs = []
        for r in requests:
            if r.slot is None:
                runs.append(_Run(r, self._take_seq(busy), temp=True))
            else:
                if r.slot not in self._slots:
                    self._slots[r.slot] = _Slot(self._take_seq(busy))
                runs.append(_Run(r, self._slots[r.slot].seq_id, temp=False))
            seed = r.params.seed
            runs[-1].rng = np.random.default_rng(seed)
            if r.params.logprobs:
                runs[-1].logprobs = []
        return runs

    def _cached_tokens(self, run: _Run) -> list[int]:
        return [] if run.temp else self._slots[run.req.slot].tokens

    def _prefill(self, runs: list[_Run]) -> None:
        """Bring every sequence's cache to its prompt, reusing the longest prefix available."""
        ll, mem = self._ll, self._mem
        own = {id(run): common_prefix(self._cached_tokens(run), run.req.prompt) for run in runs}
        # Sources cached before this call: other idle slots.
        busy_seqs = {run.seq_id for run in runs}
        cached = [(s.seq_id, s.tokens) for s in self._slots.values() if s.seq_id not in busy_seqs]
        first, second = [], []  # second: requests that copy a prefix prefilled in the first wave
        plans: dict[int, tuple[int | None, int]] = {}
        for run in runs:
            best_src, best = None, own[id(run)]
            for seq, toks in cached:
                c = common_prefix(toks, run.req.prompt)
                if c >= best + _MIN_SHARED_PREFIX:
                    best_src, best = seq, c
            for other in first:
                c = common_prefix(other.req.prompt, run.req.prompt)
                if c >= best + _MIN_SHARED_PREFIX:
                    best_src, best = other.seq_id, c
            plans[id(run)] = (best_src, best)
            (second if best_src in {o.seq_id for o in first} else first).append(run)
        for wave in (first, second):
            items: list[tuple[int, int, int, bool]] = []
            owners: list[_Run] = []
            for run in wave:
                src, common = plans[id(run)]
                common = min(common, len(run.req.prompt) - 1)  # the last prompt token must give logits
                if src is None:
                    if not ll.llama_memory_seq_rm(mem, run.seq_id, common, -1):
                        ll.llama_memory_seq_rm(mem, run.seq_id, -1, -1)
                        common = 0
                else:
                    ll.llama_memory_seq_rm(mem, run.seq_id, -1, -1)
                    ll.llama_memory_seq_cp(mem, src, run.seq_id, -1, -1)
                    ll.llama_memory_seq_rm(mem, run.seq_id, common, -1)
                run.reused = common
                prompt = run.req.prompt
                for pos in range(common, len(prompt)):
                    items.append((prompt[pos], pos, run.seq_id, pos == len(prompt) - 1))
                    owners.append(run)
            # Pack the wave's prompt tokens into batches; sample each request's first token as soon
            # as its last prompt token's logits come out.
            n = self.config.n_batch
            for start in range(0, len(items), n):
                chunk = items[start : start + n]
                self._decode(chunk)
                for j, (tok, pos, seq, want) in enumerate(chunk):
                    if want:
                        self._accept(owners[start + j], self._logits(j))

    def _decode_loop(self, runs: list[_Run], progress: ProgressFn | None) -> None:
        while True:
            active = [run for run in runs if run.finish is None]
            if progress is not None:
                progress([len(run.generated) for run in runs])
            if not active:
                return
            self._decode([(run.generated[-1], run.pos, run.seq_id, True) for run in active])
            for j, run in enumerate(active):
                self._accept(run, self._logits(j))

    def _accept(self, run: _Run, logits: np.ndarray) -> None:
        """Sample the next token of a run from its logits and decide whether it is finished."""
        params = run.req.params
        if run.logprobs is not None:
            run.logprobs.append(top_logprobs(logits, params.logprobs))
        token = sample(logits, params, run.rng)
        if not params.ignore_eos and self._ll.llama_vocab_is_eog(self._vocab, token):
            if run.logprobs:
                run.logprobs.pop()  # the end token is not returned, nor its logprobs
            run.finish = "eos"
            return
        run.generated.append(token)
        if params.stop:
            before = len(run.text)
            run.text_bytes += self.text.piece(token, special=False)
            run.text = run.text_bytes.decode("utf-8", errors="ignore")
            window = max(0, before - max(len(s) for s in params.stop))
            hits = [(run.text.find(s, window), s) for s in params.stop]
            hits = [(i, s) for i, s in hits if i >= 0]
            if hits:
                i, s = min(hits)
                run.text, run.finish, run.stop_string = run.text[:i], "stop", s
                return
        if len(run.generated) >= params.max_tokens or len(run.req.prompt) + len(run.generated) >= self.n_ctx:
            run.finish = "length"

    def _completion(self, run: _Run) -> Completion:
        text = run.text if run.finish == "stop" else self.detokenize(run.generated, special=False)
        return Completion(
            token_ids=run.generated,
            text=text,
            finish_reason=run.finish or "length",
            prompt_tokens=len(run.req.prompt),
            prompt_computed=len(run.req.prompt) - run.reused,
            prompt_reused=run.reused,
            logprobs=run.logprobs,
            stop_string=run.stop_string,
        )

    def close(self) -> None:
        ll = self._ll
        if getattr(self, "_batch", None) is not None:
            ll.llama_batch_free(self._batch)
            self._batch = None
        if getattr(self, "_ctx", None):
            ll.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_model", None):
            ll.llama_model_free(self._model)
            self._model = None

    def __del__(self):  # pragma: no cover - best effort at interpreter exit
        try:
            self.close()
        except Exception:
            pass


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """Next token: greedy at temperature 0, else top-k → temperature → top-p → draw."""
    if params.temperature == 0:
        return int(np.argmax(logits))
    k = params.top_k if 0 < params.top_k < logits.shape[0] else logits.shape[0]
    idx = np.argpartition(logits, -k)[-k:] if k < logits.shape[0] else np.arange(logits.shape[0])
    vals = logits[idx].astype(np.float64) / params.temperature
    order = np.argsort(-vals, kind="stable")
    idx, vals = idx[order], vals[order]
    probs = np.exp(vals - vals[0])
    probs /= probs.sum()
    if params.top_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(probs), params.top_p)) + 1
        idx, probs = idx[:keep], probs[:keep]
    cdf = np.cumsum(probs)
    return int(idx[min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), len(idx) - 1)])


def top_logprobs(logits: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The k most likely tokens and their log-probabilities under the raw (temperature 1) model."""
    x = logits.astype(np.float64)
    m = x.max()
    lse = m + np.log(np.exp(x - m).sum())
    k = min(k, x.shape[0])
    idx = np.argpartition(x, -k)[-k:]
    idx = idx[np.argsort(-x[idx], kind="stable")]
    return [(int(i), float(x[i] - lse)) for i in idx]
