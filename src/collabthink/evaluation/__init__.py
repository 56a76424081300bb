"""Evaluation harness: datasets, resumable run files, metrics, and the report with its plots.

`collabthink eval` runs methods over a benchmark into a run file; `collabthink report` turns run files
into tables and plots. Everything here also works from Python (see `runner.run_eval`, `report.write_report`).
"""

from .datasets import HUB_DATASETS, Dataset, DatasetError, Question, load_dataset, load_jsonl
from .metrics import pass_at_k, summarize, summarize_all, trace_flops, transformer_flops
from .runfile import RunFile, RunFileError, read_run

__all__ = [
    "HUB_DATASETS", "Dataset", "DatasetError", "Question", "load_dataset", "load_jsonl", "pass_at_k", "summarize",
    "summarize_all", "trace_flops", "transformer_flops", "RunFile", "RunFileError", "read_run",
]
