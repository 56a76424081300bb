"""Methods: controllers over an engine. Each has a config dataclass and a run function."""

from __future__ import annotations

from typing import Callable, NamedTuple

from .base import Branch, Cost, MethodConfig, Result, Trace
from .cpt import CPTConfig, run_cpt
from .parallel import ParallelConfig, run_parallel


class MethodSpec(NamedTuple):
    config: type[MethodConfig]
    run: Callable[..., Result]


METHODS: dict[str, MethodSpec] = {
    "parallel": MethodSpec(ParallelConfig, run_parallel),
    "cpt": MethodSpec(CPTConfig, run_cpt),
}

__all__ = ["METHODS", "MethodSpec", "MethodConfig", "ParallelConfig", "run_parallel", "CPTConfig", "run_cpt", "Branch", "Cost", "Result", "Trace"]
