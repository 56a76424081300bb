"""Run files: one durable record per finished unit, resume after a crash without redoing work,
repair of a truncated last line, config mismatch errors, the lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from evalhelpers import AnsweringScript, CPTScript, FakeEngine, plan_for, run_plan, write_questions

from collabthink.evaluation.runfile import RunFile, RunFileError, read_run, record_key
from collabthink.evaluation.runner import run_config


def _lines(path: Path) -> list[dict]:
    return [json.loads(l) for l in path.read_text().splitlines()]


def test_every_unit_is_one_record_with_trace_and_grading(tmp_path):
    data = write_questions(tmp_path / "q.jsonl", 3)
    script = AnsweringScript()
    records = run_plan(plan_for(data, branches=[1, 2]), tmp_path / "run.jsonl", FakeEngine(script))
    lines = _lines(tmp_path / "run.jsonl")
    assert lines[0]["type"] == "header" and lines[0]["config"]["grid"] == {"branches": [1, 2], "budget": [32]}
    assert lines[0]["config"]["dataset"]["n_questions"] == 3 and lines[0]["config"]["methods"] == ["parallel"]
    assert [l["key"] for l in lines[1:]] == [r["key"] for r in records]
    assert len(records) == 6  # 3 questions x 2 settings
    by_key = {r["key"]: r for r in records}
    r = by_key[record_key("q2", "parallel", {"branches": 2, "budget": 32})]
    assert r["correct"] is True and r["branch_correct"] == [True, True] and r["answer"] == "2"
    assert r["trace"]["method"] == "parallel" and len(r["trace"]["branches"]) == 2
    assert r["trace"]["cost"]["generated_tokens"] > 0 and r["trace"]["reference"] == "2"
    odd = by_key[record_key("q1", "parallel", {"branches": 1, "budget": 32})]
    assert odd["correct"] is False and odd["branch_correct"] == [False]


def test_rerun_skips_finished_records(tmp_path):
    data = write_questions(tmp_path / "q.jsonl", 3)
    run_plan(plan_for(data), tmp_path / "run.jsonl", FakeEngine(AnsweringScript()))
    before = (tmp_path / "run.jsonl").read_bytes()
    script = AnsweringScript()
    created = []

    def factory(config, branches):
        created.append(config)
        return FakeEngine(script)

    plan = plan_for(data)
    from collabthink.evaluation.runner import run_eval

    records = run_eval(plan, RunFile(tmp_path / "run.jsonl", run_config(plan)), factory)
    assert len(records) == 3 and script.seen == [] and created == []  # nothing redone, no engine made
    assert (tmp_path / "run.jsonl").read_bytes() == before


def test_truncated_last_line_is_dropped_and_only_that_unit_is_redone(tmp_path):
    data = write_questions(tmp_path / "q.jsonl", 4)
    run = tmp_path / "run.jsonl"
    run_plan(plan_for(data), run, FakeEngine(AnsweringScript()))
    raw = run.read_bytes()
    last_start = raw.rstrip(b"\n").rfind(b"\n") + 1
    run.write_bytes(raw[: last_start + 57])  # killed in the middle of writing q3's record
    warnings: list[str] = []
    script = AnsweringScript()
    records = run_plan(plan_for(data), run, FakeEngine(script), warnings)
    assert script.seen == [3, 3]  # two branches of q3, nothing else
    assert any("truncated last line" in w for w in warnings)
    assert [r["question"]["id"] for r in records] == ["q0", "q1", "q2", "q3"]
    assert run.read_bytes()[:last_start] == raw[:last_start]  # finished records untouched
    assert [l["question"]["id"] for l in _lines(run)[1:]] == ["q0", "q1", "q2", "q3"]


def test_a_record_missing_only_its_newline_is_kept(tmp_path):
    data = write_questions(tmp_path / "q.jsonl", 2)
    run = tmp_path / "run.jsonl"
    run_plan(plan_for(data), run, FakeEngine(AnsweringScript()))
    run.write_bytes(run.read_bytes().rstrip(b"\n"))
    script = AnsweringScript()
    run_plan(plan_for(data), run, FakeEngine(script))
    assert script.seen == [] and run.read_bytes().endswith(b"}\n") and len(_lines(run)) == 3


def test_damaged_line_in_the_middle_is_an_error(tmp_path):
    data = write_questions(tmp_path / "q.jsonl", 3)
    run = tmp_path / "run.jsonl"
    run_plan(plan_for(data), run, FakeEngine(AnsweringScript()))
    lines = run.read_text().splitlines(keepends=True)
    lines[2] = lines[2][:20] + "\n"
    run.write_text("".join(lines))
    with pytest.raises(RunFileError, match=r"run.jsonl:3: not a JSON record"):
        run_plan(plan_for(data), run, FakeEngine(AnsweringScript()))
    with pytest.raises(RunFileError, match=r"run.jsonl:3"):
        read_run(run)


def test_killed_process_loses_only_the_unit_in_flight(tmp_path):
    """A real `kill -9` of a run in progress, then a resume that solves exactly the rest."""
    n = 10
    data = write_questions(tmp_path / "q.jsonl", n)
    run = tmp_path / "run.jsonl"
    helper = Path(__file__).with_name("evalhelpers.py")
    proc = subprocess.Popen([sys.executable, str(helper), str(data), str(run), "0.25"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if run.exists() and run.read_bytes().count(b"\n") >= 3:  # header + 2 records
                break
            if proc.poll() is not None:
                pytest.fail(f"the run ended early: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.01)
        else:
            pytest.fail("the run wrote no records in 60 s")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    header, kept = read_run(run)
    finished = [r["question"]["id"] for r in kept]
    assert 2 <= len(finished) < n, "the kill must land mid-run"
    script = AnsweringScript()
    records = run_plan(plan_for(data), run, FakeEngine(script))
    redone = sorted(set(script.seen))
    assert redone == [i for i in range(n) if f"q{i}" not in finished]  # no finished work redone
    assert sorted(r["question"]["id"] for r in records) == sorted(f"q{i}" for i in range(n))
    keys = [l["key"] for l in _lines(run)[1:]]
    assert len(keys) == len(set(keys)) == n


def test_config_mismatch_says_what_differs(tmp_path):
    data = write_questions(tmp_path / "q.jsonl", 3)
    run = tmp_path / "run.jsonl"
    run_plan(plan_for(data), run, FakeEngine(AnsweringScript()))
    with pytest.raises(RunFileError) as e:
        run_plan(plan_for(data, branches=[3], limit=2), run, FakeEngine(AnsweringScript()))
    msg = str(e.value)
    assert "another config" in msg and "grid.branches: [3] here, [2] in the file" in msg
    assert "limit: 2 here, null in the file" in msg and "dataset.n_questions: 2 here, 3 in the file" in msg
    assert "methods" not in msg  # only what differs
    with pytest.raises(RunFileError, match=r"method_options.parallel.temperature: 0.2 here, \"<absent>\" in the file"):
        run_plan(plan_for(data, options={"parallel": {"temperature": 0.2}}), run, FakeEngine(AnsweringScript()))


def test_header_only_file_takes_the_new_config(tmp_path):
    """A run that failed before its first record (say, a wrong --model) blocks nothing."""
    data = write_questions(tmp_path / "q.jsonl", 2)
    run = tmp_path / "run.jsonl"
    RunFile(run, {"model": "wrong.gguf"}).open()
    warnings: list[str] = []
    run_plan(plan_for(data), run, FakeEngine(AnsweringScript()), warnings)
    header, records = read_run(run)
    assert header["config"]["model"] == "fake" and len(records) == 2 and any("replacing" in w for w in warnings)


def test_not_a_run_file(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"problem": "a", "answer": "1"}\n')
    with pytest.raises(RunFileError, match="not a collabthink run file"):
        RunFile(path, {}).open()


def test_second_writer_is_refused(tmp_path):
    first = RunFile(tmp_path / "run.jsonl", {"a": 1})
    first.open()
    try:
        with pytest.raises(RunFileError, match="in use by another"):
            RunFile(tmp_path / "run.jsonl", {"a": 1}).open()
    finally:
        first.close()
    RunFile(tmp_path / "run.jsonl", {"a": 1}).open()  # free again once closed


def test_engine_is_sized_for_the_largest_setting_and_made_once(tmp_path):
    data = write_questions(tmp_path / "q.jsonl", 2)
    plan = plan_for(data, methods=["parallel", "cpt"], branches=[1, 3], budgets=[16, 48],
                    options={"cpt": {"chunk_tokens": 16, "embeddings": False}})
    made = []

    def factory(config, branches):
        made.append((config.budget, config.branches, branches))
        return FakeEngine(CPTScript())

    from collabthink.evaluation.runner import run_eval

    records = run_eval(plan, RunFile(tmp_path / "run.jsonl", run_config(plan)), factory)
    assert made == [(48, 3, 3)]
    assert len(records) == 2 * 4 * 2
    cpt = [r for r in records if r["method"] == "cpt"]
    assert cpt and all("schedule" in r["trace"] and "pool" in r["trace"] for r in cpt)
    assert {r["trace"]["config"]["chunk_tokens"] for r in cpt} == {16}
