"""Helpers for the evaluation tests: a scripted engine that answers numbered questions, small
datasets, plans and hand-built records. Also imported by the subprocess of the kill test."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from fakes import CPTScript, FakeEngine  # noqa: E402

from collabthink.evaluation.datasets import load_jsonl  # noqa: E402
from collabthink.evaluation.runfile import RunFile  # noqa: E402
from collabthink.evaluation.runner import build_plan, run_config, run_eval  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
_NUMBER = re.compile(r"Question number (\d+)")


def write_questions(path: Path, n: int) -> Path:
    """n questions `Question number i`; the reference answer is i."""
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"q{i}", "problem": f"Question number {i}: what is {i}?", "answer": str(i)}) + "\n")
    return path


class AnsweringScript:
    """Answers `\\boxed{i}` for even i (correct) and `\\boxed{-1}` for odd i; logs what it solved."""

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.seen: list[int] = []

    def __call__(self, request, engine) -> str:
        if self.delay:
            time.sleep(self.delay)
        i = int(_NUMBER.findall(engine.detokenize(request.prompt))[0])
        self.seen.append(i)
        return f"ok</think>\\boxed{{{i if i % 2 == 0 else -1}}}"  # within a 32-token budget (1 char = 1 token)


def plan_for(dataset_path: Path, methods=("parallel",), branches=(2,), budgets=(32,), options=None, limit=None):
    dataset = load_jsonl(dataset_path).limited(limit)
    return build_plan(dataset, list(methods), list(branches), list(budgets), options or {}, model="fake",
                      engine="fake", limit=limit)


def run_plan(plan, run_path: Path, engine, warnings: list | None = None):
    warn = (warnings.append if warnings is not None else (lambda m: None))
    rf = RunFile(run_path, run_config(plan), {"test": True}, warn=warn)
    return run_eval(plan, rf, lambda config, branches: engine)


def solved_questions(script: AnsweringScript) -> set[int]:
    return set(script.seen)


def make_record(method: str, branches: int, budget: int, qid: str, correct: bool, branch_correct: list[bool],
                wall: float = 1.0, decode: float = 0.6, extraction: float = 0.0, generated: int = 100,
                prefill_computed: int = 40, prefill_reused: int = 0, extra: dict | None = None,
                rounds: list | None = None, model: dict | None = None) -> dict:
    """A record as the runner writes it, built by hand."""
    trace = {
        "method": method, "problem": f"problem {qid}", "reference": "1",
        "config": {"branches": branches, "budget": budget, "tau_start": 0.4, "tau_stop": 0.1},
        "model": model or {"name": "toy", "n_params": 1000, "n_layer": 2, "n_embd": 8},
        "branches": [{"index": i, "tokens": generated // branches, "correct": c, "answer": "1" if c else "2",
                      "finish_reason": "eos", "extra": {}} for i, c in enumerate(branch_correct)],
        "rounds": rounds or [],
        "vote": {"winner": "1" if correct else "2", "correct": correct},
        "cost": {"generated_tokens": generated, "initial_prompt_tokens": 10 * branches,
                 "prefill_computed": prefill_computed, "prefill_reused": prefill_reused, "injected_tokens": 0,
                 "wall_s": wall, "decode_s": decode, "extraction_s": extraction,
                 "other_s": max(0.0, wall - decode - extraction)},
        **(extra or {}),
    }
    setting = {"branches": branches, "budget": budget}
    return {"type": "record", "key": f"{qid}|{method}|branches={branches},budget={budget}",
            "question": {"id": qid, "index": 0, "answer": "1"}, "dataset": "toy", "model": "toy",
            "method": method, "setting": setting, "answer": "1" if correct else "2", "correct": correct,
            "branch_correct": branch_correct, "trace": trace}


def write_run_file(path: Path, records: list[dict], config: dict | None = None) -> Path:
    rf = RunFile(path, config or {"dataset": {"name": "toy"}, "methods": sorted({r["method"] for r in records})})
    rf.open()
    for r in records:
        rf.append(r)
    rf.close()
    return path


__all__ = ["CPTScript", "FakeEngine", "SHARED_DATA", "AnsweringScript", "write_questions", "plan_for", "run_plan",
           "make_record", "write_run_file"]


if __name__ == "__main__":  # the kill test's subprocess: evalhelpers.py DATASET RUNFILE DELAY
    dataset, run_file, delay = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
    script = AnsweringScript(delay=delay)
    run_plan(plan_for(dataset), run_file, FakeEngine(script))
