"""The evaluation loop: every (question, setting, method) once, each appended to the run file as it ends.

One engine serves the whole run: it is created (lazily, only when work is left) for the largest
setting of the grid, so every method and setting fits in it.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
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
    With `concurrency` > 1, that many questions run at once, each on its own `engine.session()` (an
    engine view pinned to one server, so a question's branches share that server's prefix cache); only
    engines that offer sessions (the OpenAI server engine) can do that. Records are appended as each
    question ends, whatever the order, so an interrupted run loses only questions in flight.
    """
    settings = plan.settings()
    done = run_file.open()
    engine: Engine | None = None
    lock = threading.Lock()  # the run file, `done` and the progress display are shared by the workers
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
            if concurrency > 1 and not hasattr(engine, "session"):
                raise ValueError(f"concurrency {concurrency} needs an engine that serves several questions at once "
                                 f"(--engine openai); the {getattr(engine, 'name', 'engine')} engine runs one: use 1")

        def run_unit(q: Question, s: dict) -> None:
            keys = {m: record_key(q.id, m, s) for m in plan.methods}
            with lock:
                if all(k in done for k in keys.values()):
                    progress.skip()
                    return
                progress.start(q, s)
            unit_engine = engine.session() if concurrency > 1 else engine
            try:
                for m in plan.methods:
                    if keys[m] in done:
                        continue
                    options = {**plan.method_options.get(m, {}), **s}
                    t0 = time.perf_counter()
                    with lock:
                        progress.method(m)
                    result = solve(q.problem, method=m, engine=unit_engine, reference=q.answer,
                                   progress=progress.event, **options)
                    record = make_record(q, m, s, plan.dataset.name, result, time.perf_counter() - t0)
                    with lock:
                        run_file.append(record)
                        done[record["key"]] = record
                        progress.record(record)
            finally:
                if unit_engine is not engine and hasattr(unit_engine, "close"):
                    unit_engine.close()
            with lock:
                progress.advance()

        if concurrency > 1 and len(units) > 1:
            with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="question") as pool:
                futures = [pool.submit(run_unit, q, s) for q, s in units]
                try:
                    for f in futures:
                        f.result()  # the first failure ends the run; finished questions are already saved
                finally:
                    for f in futures:
                        f.cancel()
        else:
            for q, s in units:
                run_unit(q, s)
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
