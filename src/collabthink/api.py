"""The Python API; the CLI and the server are thin layers over it."""

from __future__ import annotations

import os
from typing import Any

from .engines.base import Engine
from .methods import METHODS
from .methods.base import MethodConfig, ProgressCallback, Result

def method_config(method: str, **options: Any) -> MethodConfig:
    """The typed config of a method from keyword options; unknown methods and options are errors."""
    if method not in METHODS:
        raise ValueError(f"unknown method '{method}': choose one of {', '.join(METHODS)}")
    return METHODS[method].config.from_options(**options)


ENGINES = ("llama.cpp", "openai", "vllm")
_ENGINE_ALIASES = {"llamacpp": "llama.cpp", "embedded": "llama.cpp", "server": "openai"}


def make_engine(
    kind: str = "llama.cpp",
    model: str | os.PathLike | None = None,
    config: MethodConfig | None = None,
    **engine_options: Any,
) -> Engine:
    """An engine of one kind, sized for a method config where the backend needs sizing.

    llama.cpp: a context that holds prompt + budget, a sequence per branch and one scratch sequence per
    branch (fresh extraction, summaries). openai: `base_urls` of running servers; `model` is the served
    model's name. vllm: `model` is a Hugging Face directory or name; max_model_len fits prompt + budget.
    """
    kind = _ENGINE_ALIASES.get(kind, kind)
    if kind == "llama.cpp":
        from .engines.llamacpp import LlamaCppEngine

        if config is not None:
            engine_options.setdefault("n_ctx", max(2048, config.context_tokens()))
            engine_options.setdefault("n_seq_max", max(2, 2 * config.branches))
        return LlamaCppEngine(model, **engine_options)
    if kind == "openai":
        from .engines.openai import OpenAIEngine

        return OpenAIEngine(model=None if model is None else str(model), **engine_options)
    if kind == "vllm":
        from .engines.vllm import VLLMEngine

        if config is not None:
            engine_options.setdefault("max_model_len", max(2048, config.context_tokens()))
        return VLLMEngine(model, **engine_options)
    raise ValueError(f"unknown engine '{kind}': choose one of {', '.join(ENGINES)}")


def solve(
    problem: str,
    method: str = "parallel",
    engine: Engine | str | None = None,
    model: str | os.PathLike | None = None,
    reference: str | None = None,
    progress: ProgressCallback | None = None,
    **options: Any,
) -> Result:
    """Solve one problem with a method; `options` are the method config's fields (branches, budget...)."""
    if not isinstance(problem, str) or not problem.strip():
        raise ValueError("problem must be a non-empty string")
    config = method_config(method, **options)
    if engine is None or isinstance(engine, str):
        engine = make_engine(engine or "llama.cpp", model=model, config=config)
    return METHODS[method].run(engine, problem, config, reference=reference, progress=progress)
