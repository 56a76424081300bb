"""Several questions at once: each on its own engine session, every record saved, the order kept."""

from __future__ import annotations

import threading

import pytest
from evalhelpers import AnsweringScript, FakeEngine, plan_for, write_questions

from collabthink.evaluation.runfile import RunFile
from collabthink.evaluation.runner import run_config, run_eval


class SessionEngine(FakeEngine):
    """A fake engine with per-question sessions, like the OpenAI server engine's."""

    def __init__(self, script):
        super().__init__(script)
        self.lock = threading.Lock()
        self.open = 0
        self.most_open = 0
        self.sessions = 0

    def session(self):
        engine = self

        class Session(FakeEngine):
            def close(self):
                with engine.lock:
                    engine.open -= 1

        with self.lock:
            self.open += 1
            self.sessions += 1
            self.most_open = max(self.most_open, self.open)
        return Session(self.script)


def test_questions_run_at_once_on_sessions_and_every_record_is_saved(tmp_path):
    data = write_questions(tmp_path / "q.jsonl", 6)
    plan = plan_for(data)
    engine = SessionEngine(AnsweringScript(delay=0.05))
    records = run_eval(plan, RunFile(tmp_path / "run.jsonl", run_config(plan)), lambda c, b: engine, concurrency=3)
    assert [r["question"]["id"] for r in records] == [f"q{i}" for i in range(6)]  # question order, not finish order
    assert [r["correct"] for r in records] == [True, False] * 3
    assert engine.sessions == 6 and engine.open == 0  # one session per question, all closed
    assert engine.most_open > 1
    assert engine.calls == []  # the shared engine itself decoded nothing
    saved = RunFile(tmp_path / "run.jsonl", run_config(plan)).open()
    assert len(saved) == 6


def test_concurrency_needs_an_engine_with_sessions(tmp_path):
    data = write_questions(tmp_path / "q.jsonl", 2)
    plan = plan_for(data)
    with pytest.raises(ValueError, match="--engine openai"):
        run_eval(plan, RunFile(tmp_path / "run.jsonl", run_config(plan)), lambda c, b: FakeEngine(AnsweringScript()),
                 concurrency=2)


def test_a_failing_question_ends_the_run_but_finished_ones_are_kept(tmp_path):
    data = write_questions(tmp_path / "q.jsonl", 4)
    plan = plan_for(data)

    class Failing(AnsweringScript):
        def __call__(self, request, engine):
            if "number 3" in engine.detokenize(request.prompt):
                raise RuntimeError("server gone")
            return super().__call__(request, engine)

    engine = SessionEngine(Failing())
    with pytest.raises(RuntimeError, match="server gone"):
        run_eval(plan, RunFile(tmp_path / "run.jsonl", run_config(plan)), lambda c, b: engine, concurrency=2)
    saved = RunFile(tmp_path / "run.jsonl", run_config(plan)).open()
    assert {r["question"]["id"] for r in saved.values()} >= {"q0", "q1"}
    assert "q3" not in {r["question"]["id"] for r in saved.values()}
