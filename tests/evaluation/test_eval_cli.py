"""`collabthink eval` and `collabthink report`: one tiny real run end to end, and one-line errors."""

from __future__ import annotations

import json
import re

import pytest
from evalhelpers import SHARED_DATA, make_record, write_run_file

from collabthink.cli import main

GSM8K = str(SHARED_DATA / "gsm8k.jsonl")


def _one_line_error(capsys, code, *fragments):
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("collabthink: error:") and err.count("\n") == 1 and "Traceback" not in err, err
    for f in fragments:
        assert f in err, (f, err)


def test_eval_then_resume_then_report_on_the_tiny_model(tmp_path, capsys):
    run = tmp_path / "run.jsonl"
    argv = ["eval", "--dataset", GSM8K, "--limit", "2", "--methods", "parallel,cpt", "--branches", "2",
            "--budget", "24", "--chunk-tokens", "12", "--extract-max-tokens", "24", "--no-embeddings",
            "--model", "smollm2-135m", "--out", str(run)]
    assert main(argv) == 0
    out = capsys.readouterr()
    assert "parallel" in out.out and "cpt" in out.out and str(run) in out.out
    # plain progress lines when not on a terminal: one per (question x setting)
    units = [l for l in out.err.splitlines() if re.match(r"\[\d/2\] ", l)]
    assert [u[:5] for u in units] == ["[1/2]", "[2/2]"]
    assert re.search(r"[\d.]+ tok/s \| acc parallel \d/2 \(\d+%\) · cpt \d/2 \(\d+%\)", units[-1]), units[-1]
    lines = [json.loads(l) for l in run.read_text().splitlines()]
    header, records = lines[0], lines[1:]
    assert header["config"]["methods"] == ["parallel", "cpt"] and header["config"]["model"] == "smollm2-135m"
    assert header["config"]["method_options"]["cpt"] == {"chunk_tokens": 12, "embeddings": False,
                                                         "extract_max_tokens": 24}
    assert header["config"]["method_options"]["parallel"] == {}
    assert sorted((r["question"]["id"], r["method"]) for r in records) == [
        ("gsm8k-0", "cpt"), ("gsm8k-0", "parallel"), ("gsm8k-1", "cpt"), ("gsm8k-1", "parallel")]
    for r in records:
        assert r["setting"] == {"branches": 2, "budget": 24} and len(r["trace"]["branches"]) == 2
        assert r["trace"]["model"]["n_params"] > 100_000_000
        assert all(b["tokens"] <= 24 for b in r["trace"]["branches"])
    before = run.read_bytes()

    assert main(argv + ["--quiet"]) == 0  # the same command again: everything is finished, nothing redone
    assert run.read_bytes() == before

    report = tmp_path / "report"
    assert main(["report", str(run), "--out", str(report)]) == 0
    out = capsys.readouterr().out
    assert "report.md" in out
    for name in ("accuracy_vs_latency", "accuracy_vs_tokens", "accuracy_vs_flops", "cpt_rounds",
                 "cpt_duplicate_rate"):
        assert (report / f"{name}.png").stat().st_size > 0 and (report / f"{name}.svg").stat().st_size > 0
    md = (report / "report.md").read_text()
    assert "| parallel | n=2,T=24 | 2 |" in md and "| cpt | n=2,T=24 | 2 |" in md


@pytest.mark.parametrize("argv, fragments", [
    (["eval", "--dataset", GSM8K, "--methods", "parallel,magic"], ["unknown method 'magic'"]),
    (["eval", "--dataset", GSM8K, "--branches", "2,0"], ["--branches must be >= 1, got 0"]),
    (["eval", "--dataset", GSM8K, "--branches", "2,x"], ["--branches must be an integer, got 'x'"]),
    (["eval", "--dataset", GSM8K, "--budget", "8,"], ["--budget takes comma-separated integers"]),
    (["eval", "--dataset", GSM8K, "--methods", "parallel", "--chunk-tokens", "8"],
     ["--chunk-tokens does not apply to any of --methods parallel"]),
    (["eval", "--dataset", GSM8K, "--methods", "parallel", "--method", "cpt"], ["--methods or --method"]),
    (["eval", "--dataset", GSM8K, "--temperature", "-1"], ["temperature must be >= 0"]),
    (["eval"], ["--dataset"]),
    (["eval", "--dataset", "gsm9k"], ["unknown dataset 'gsm9k'", "--dataset PATH.jsonl"]),
    (["report"], ["RUNFILE"]),
])
def test_bad_input_is_one_line_and_exit_2(argv, fragments, capsys, tmp_path):
    _one_line_error(capsys, main(argv + (["--out", str(tmp_path / "r.jsonl")] if argv[:1] == ["eval"] and len(argv) > 1 else [])),
                    *fragments)


def test_bad_dataset_line_is_named(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text('{"problem": "a", "answer": "1"}\n{oops\n')
    _one_line_error(capsys, main(["eval", "--dataset", str(data), "--out", str(tmp_path / "r.jsonl")]),
                    f"{data}:2: not valid JSON")


def test_config_mismatch_with_the_run_file_is_an_error(tmp_path, capsys):
    """No model is loaded: the run file's header is checked first."""
    run = tmp_path / "run.jsonl"
    write_run_file(run, [make_record("parallel", 2, 64, "gsm8k-0", True, [True, False])],
                   config={"dataset": {"name": "gsm8k"}, "methods": ["parallel"], "seed": 0})
    code = main(["eval", "--dataset", GSM8K, "--limit", "1", "--methods", "parallel", "--branches", "2",
                 "--budget", "64", "--model", "/no/such/model.gguf", "--out", str(run)])
    _one_line_error(capsys, code, "was made with another config", "grid.branches: [2] here, \"<absent>\" in the file",
                    "pass a new --out")


def test_report_of_a_missing_run_file(tmp_path, capsys):
    _one_line_error(capsys, main(["report", str(tmp_path / "none.jsonl")]), "not found")


def test_report_prints_the_table(tmp_path, capsys):
    run = write_run_file(tmp_path / "run.jsonl", [make_record("parallel", 2, 64, "a", True, [True, False]),
                                                  make_record("parallel", 2, 64, "b", False, [False, False])])
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert "parallel" in out and "50.0%" in out and "n=2,T=64" in out
    assert (tmp_path / "run-report" / "report.md").exists()
    assert (tmp_path / "run-report" / "accuracy_vs_latency.png").exists()
