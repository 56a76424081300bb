"""The command line: real runs on the tiny model, and one-line errors with exit code 2 for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from collabthink.cli import main

TINY = ["--model", "smollm2-135m"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["solve", "x", "-n", "0"], "--branches must be >= 1, got 0"),
        (["solve", "x", "--max-tokens", "0"], "--max-tokens must be >= 1, got 0"),
        (["solve", "x", "--max-tokens", "-5"], "--max-tokens must be >= 1, got -5"),
        (["solve", "x", "--method", "magic"], "unknown method 'magic': choose one of"),
        (["solve", "x", "--model", "/no/such/model.gguf"], "model file '/no/such/model.gguf' not found: pass --model PATH"),
        (["solve", "x", "--temperature", "-1"], "temperature must be >= 0"),
        (["solve", "   "], "the problem is empty"),
        (["solve", "x", "--engine", "warp"], "unknown --engine 'warp'"),
        (["solve", "x", "--engine", "openai"], "--engine openai needs --base-url"),
        (["solve", "x", "--base-url", "http://127.0.0.1:1/v1"], "--base-url applies to --engine openai"),
        (["solve", "x", "--engine", "openai", "--base-url", "http://h/v1", "--threads", "2"],
         "--threads applies to --engine llama.cpp"),
        (["solve", "x", "--engine", "vllm", "--api-key", "k"], "--api-key applies to --engine openai"),
        (["solve", "x", "--engine", "vllm", "--gpu-memory-utilization", "0"], "--gpu-memory-utilization must be > 0"),
        (["solve", "x", "--enforce-eager"], "--enforce-eager applies to --engine vllm"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_unreadable_model_file(tmp_path, capsys):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"\x00" * 64)
    assert main(["solve", "x", "--model", str(bad)]) == 2
    assert "not a GGUF file" in capsys.readouterr().err


def test_prompt_longer_than_the_context(capsys):
    assert main(["solve", "word " * 3000, *TINY, "-n", "1", "--max-tokens", "8", "--quiet"]) == 2
    assert "does not fit the context window" in capsys.readouterr().err


def test_solve_prints_answer_votes_branches_tokens_and_time(capsys):
    assert main(["solve", "What is 6 times 7?", *TINY, "-n", "2", "--max-tokens", "24", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("answer: ")
    assert "votes:" in out and "branch 0:" in out and "branch 1:" in out and "wall" in out


def test_solve_json_has_the_trace(capsys):
    assert main(["solve", "What is 6 times 7?", *TINY, "-n", "2", "--max-tokens", "16", "--json",
                 "--reference", "42"]) == 0
    data = json.loads(capsys.readouterr().out)
    trace = data["trace"]
    assert trace["method"] == "parallel" and len(trace["branches"]) == 2
    assert trace["config"]["branches"] == 2 and trace["config"]["budget"] == 16
    assert trace["cost"]["generated_tokens"] == sum(b["tokens"] for b in trace["branches"])
    assert data["correct"] in (True, False)


def test_console_script_exits_2_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "collabthink.cli", "solve", "x", "-n", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("collabthink: error:") and "Traceback" not in proc.stderr
