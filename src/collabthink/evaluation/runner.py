"""The evaluation loop: every (question, setting, method) once, each appended to the run file as it ends.

One engine serves the whole run: it is created (lazily, only when work is left) for the largest
setting of the grid, so every method and setting fits in it.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..api import method_config, solve
from ..engines.base import Engine
from ..methods.base import MethodConfig
from .datasets import Dataset, Question
from .progress import EvalProgress
from .runfile import RunFile, record_key

__all__ = ["EvalPlan", "build_plan", "run_config", "run_eval"]


@dataclass
class EvalPlan:
    dataset: Dataset
    methods: list[str]
    branches: list[int | None]
    budgets: list[int | None]
    method_options: dict[str, dict] = field(default_factory=dict)  # per method: config fields from flags
    model: str | None = None
    engine: str = "llama.cpp"
    limit: int | None = None

    def settings(self) -> list[dict]:
        """The grid, as the resolved {"branches", "budget"} of each point (method defaults filled in)."""
        out = []
        for b, t in itertools.product(self.branches, self.budgets):
            cfg = self.config(self.methods[0], {"branches": b, "budget": t})
            out.append({"branches": cfg.branches, "budget": cfg.budget})
        return out

    def config(self, method: str, setting: dict) -> MethodConfig:
        options = dict(self.method_options.get(method, {}))
        options.update({k: v for k, v in setting.items() if v is not None})
        return method_config(method, **options)

    def seed(self) -> int:
        return self.config(self.methods[0], {}).seed


def build_plan(dataset: Dataset, methods: list[str], branches: list[int] | None, budgets: list[int] | None,
               method_options: dict[str, dict] | None = None, model: str | None = None,
               engine: str = "llama.cpp", limit: int | None = None) -> EvalPlan:
    plan = EvalPlan(dataset, list(methods), list(branches or [None]), list(budgets or [None]),
                    dict(method_options or {}), model, engine, limit)
    for m in plan.methods:  # every config of the grid must be valid before any work starts
        for b, t in itertools.product(plan.branches, plan.budgets):
            plan.config(m, {"branches": b, "budget": t})
    return plan


def run_config(plan: EvalPlan) -> dict:
    """What a run file's header compares: a rerun resumes only when all of it matches."""
    return {
        "dataset": plan.dataset.identity(),
        "methods": plan.methods,
        "grid": {"branches": sorted({s["branches"] for s in plan.settings()}),
                 "budget": sorted({s["budget"] for s in plan.settings()})},
        "method_options": {m: dict(sorted(plan.method_options.get(m, {}).items())) for m in plan.methods},
        "seed": plan.seed(),
        "limit": plan.limit,
        "model": plan.model or "default",
        "engine": plan.engine,
    }


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def make_record(question: Question, method: str, setting: dict, dataset: str, result, eval_s: float) -> dict:
    trace = result.trace.to_dict()
    return {
        "type": "record",
        "key": record_key(question.id, method, setting),
        "question": {"id": question.id, "index": question.index, "answer": question.answer},
        "dataset": dataset,
        "model": (trace.get("model") or {}).get("name", ""),
        "method": method,
        "setting": setting,
        "answer": result.answer,
        "correct": bool(result.correct),
        "branch_answers": [b.answer for b in result.branches],
        "branch_correct": [bool(b.correct) for b in result.branches],
        "eval_s": eval_s,
        "finished_at": _now(),
        "trace": trace,
    }


def run_eval(plan: EvalPlan, run_file: RunFile, engine_factory: Callable[[MethodConfig, int], Engine],
             progress: EvalProgress | None = None, concurrency: int = 1) -> list[dict]:
    """Run what the run file does not hold yet; return every record of the run (old and new).

    `engine_factory(largest_config, max_branches)` is called once, when the first pending unit starts.
    """
    settings = plan.settings()
    done = run_file.open()
    engine: Engine | None = None
    try:
        units = [(q, s) for q in plan.dataset.questions for s in settings]
        pending = [(q, s, m) for q, s in units for m in plan.methods
                   if record_key(q.id, m, s) not in done]
        progress = progress or EvalProgress(enabled=False)
        progress.begin(total=len(units), methods=plan.methods, records=list(done.values()))
        if pending:
            configs = [plan.config(m, s) for _, s, m in pending]
            largest = max(configs, key=lambda c: (c.context_tokens(), c.branches))
            engine = engine_factory(largest, max(c.branches for c in configs))
        for q, s in units:
            keys = {m: record_key(q.id, m, s) for m in plan.methods}
            if all(k in done for k in keys.values()):
                progress.skip()
                continue
            progress.start(q, s)
            for m in plan.methods:
                if keys[m] in done:
                    continue
                options = {**plan.method_options.get(m, {}), **s}
                t0 = time.perf_counter()
                progress.method(m)
                result = solve(q.problem, method=m, engine=engine, reference=q.answer,
                               progress=progress.event, **options)
                record = make_record(q, m, s, plan.dataset.name, result, time.perf_counter() - t0)
                run_file.append(record)
                done[record["key"]] = record
                progress.record(record)
            progress.advance()
        progress.close()
        order = {record_key(q.id, m, s): i for i, (q, s, m) in
                 enumerate((q, s, m) for q, s in units for m in plan.methods)}
        return sorted(done.values(), key=lambda r: order.get(r["key"], len(order)))
    finally:
        run_file.close()
        if engine is not None and hasattr(engine, "close"):
            engine.close()


def header_info(plan: EvalPlan, extra: dict[str, Any] | None = None) -> dict:
    from .. import __version__

    return {"created": _now(), "dataset_location": plan.dataset.location, "dataset_fields": plan.dataset.fields,
            "collabthink_version": __version__, **(extra or {})}
