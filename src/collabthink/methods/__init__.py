"""Methods: controllers over an engine. Each has a config dataclass and a run function."""

from __future__ import annotations

from typing import Callable, NamedTuple

from .base import Branch, Cost, MethodConfig, Result, Trace
from .cpt import CPTConfig, run_cpt
from .deepconf import DeepConfConfig, run_deepconf
from .leap import LeaPConfig, run_leap
from .parallel import ParallelConfig, run_parallel


class MethodSpec(NamedTuple):
    config: type[MethodConfig]
    run: Callable[..., Result]


METHODS: dict[str, MethodSpec] = {
    "parallel": MethodSpec(ParallelConfig, run_parallel),
    "deepconf": MethodSpec(DeepConfConfig, run_deepconf),
    "leap": MethodSpec(LeaPConfig, run_leap),
    "cpt": MethodSpec(CPTConfig, run_cpt),
}

__all__ = [
    "METHODS", "MethodSpec", "MethodConfig", "Branch", "Cost", "Result", "Trace",
    "ParallelConfig", "run_parallel", "DeepConfConfig", "run_deepconf", "LeaPConfig", "run_leap", "CPTConfig", "run_cpt",
]
