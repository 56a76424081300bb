"""collabthink: collaborative parallel thinking for reasoning LLMs."""

from .answers import Vote, extract_boxed, final_answer, majority_vote, normalize_answer
from .api import make_engine, method_config, solve
from .engines.base import Completion, Engine, EngineError, Request, SamplingParams
from .engines.llamacpp import LlamaCppConfig, LlamaCppEngine
from .engines.openai import OpenAIConfig, OpenAIEngine
from .engines.vllm import VLLMConfig, VLLMEngine
from .engines.models import PACKAGED_MODELS, resolve_model
from .grading import is_correct
from .methods import METHODS, CPTConfig, DeepConfConfig, LeaPConfig, MethodConfig, ParallelConfig, Result, Trace

__version__ = "0.1.0"

__all__ = [
    "solve", "make_engine", "method_config", "Result", "Trace", "METHODS", "MethodConfig", "ParallelConfig",
    "CPTConfig", "DeepConfConfig", "LeaPConfig",
    "Engine", "EngineError", "Request", "Completion", "SamplingParams", "LlamaCppEngine", "LlamaCppConfig",
    "OpenAIEngine", "OpenAIConfig", "VLLMEngine", "VLLMConfig",
    "PACKAGED_MODELS", "resolve_model", "Vote", "extract_boxed", "final_answer", "majority_vote",
    "normalize_answer", "is_correct",
]
