"""Engines: text-generation backends behind one small protocol (see base.py)."""

from .base import Completion, Engine, EngineError, ProgressFn, Request, SamplingParams

__all__ = ["Completion", "Engine", "EngineError", "ProgressFn", "Request", "SamplingParams"]
