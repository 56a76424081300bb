"""The run file: an append-only JSONL log of an evaluation, safe to kill at any point.

Line 1 is the header: `{"type": "header", "format": ..., "config": {...}, "info": {...}}`. `config` is
what must match for a rerun to resume (dataset identity, methods, grid, method options, seed, limit,
model, engine); `info` is informative only (creation time, dataset path, version).

Every other line is one finished (question, method, setting):
`{"type": "record", "key": ..., "question": {...}, "method": ..., "setting": {...}, "correct": ...,
"trace": <Trace.to_dict()>, ...}`, written with one `write`, then flushed and fsynced.

A process killed mid-write leaves at most one partial last line; opening the file for appending
drops it (reading it for a report just skips it). A bad line anywhere else is an error.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Iterator

__all__ = ["FORMAT", "RunFileError", "RunFile", "read_run", "config_diff", "record_key"]

FORMAT = "collabthink-eval/1"


class RunFileError(ValueError):
    """A run file that cannot be used; the message says why and what to do."""


def record_key(question_id: str, method: str, setting: dict) -> str:
    """The identity of one unit of work: a question, a method and a setting of the grid."""
    parts = ",".join(f"{k}={setting[k]}" for k in sorted(setting))
    return f"{question_id}|{method}|{parts}"


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict) and d:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: d}


def config_diff(expected: dict, found: dict) -> list[str]:
    """The differing fields of two configs, as `field: here X, in the file Y` (dotted paths)."""
    a, b = _flatten(expected), _flatten(found)
    out = []
    for key in sorted(set(a) | set(b)):
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            out.append(f"{key}: {json.dumps(a.get(key, '<absent>'))} here, "
                       f"{json.dumps(b.get(key, '<absent>'))} in the file")
    return out


def _parse_lines(path: Path, data: bytes) -> tuple[dict | None, list[dict], int, str | None]:
    """Header, records, the byte length of the good part, and a note on a dropped partial tail."""
    header: dict | None = None
    records: list[dict] = []
    good = 0
    pos = 0
    lineno = 0
    dropped: str | None = None
    while pos < len(data):
        end = data.find(b"\n", pos)
        complete = end >= 0
        line = data[pos:end] if complete else data[pos:]
        nxt = end + 1 if complete else len(data)
        lineno += 1
        is_last = nxt >= len(data)
        if not line.strip():
            if is_last and not complete:
                dropped = f"dropped {len(line)} stray bytes at the end"
                break
            pos = nxt
            good = nxt if complete else good
            continue
        try:
            obj = json.loads(line.decode("utf-8"))
            if not isinstance(obj, dict):
                raise ValueError("not an object")
        except (ValueError, UnicodeDecodeError):
            if is_last:  # what a kill mid-write leaves: drop it
                dropped = f"dropped a truncated last line ({len(line)} bytes, line {lineno}) left by an interrupted run"
                break
            raise RunFileError(f"{path}:{lineno}: not a JSON record; the run file is damaged "
                               "(remove that line, or pass a new --out)") from None
        if lineno == 1 and header is None:
            if obj.get("type") != "header":
                raise RunFileError(f"{path}:1: not a collabthink run file (no header): pass a new --out")
            header = obj
        elif obj.get("type") == "record":
            records.append(obj)
        else:
            raise RunFileError(f"{path}:{lineno}: unexpected line of type {obj.get('type')!r} in a run file")
        if not complete:  # valid JSON without its newline: keep it, the newline is added on repair
            good = len(data)
            dropped = "added the missing newline after the last record"
        else:
            good = nxt
        pos = nxt
    return header, records, good, dropped


def read_run(path: str | Path) -> tuple[dict, list[dict]]:
    """Header and records of a run file, read-only (a partial last line is skipped)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RunFileError(f"run file '{path}' not found: pass the file `collabthink eval` wrote (--out)") from None
    except OSError as e:
        raise RunFileError(f"cannot read run file '{path}': {e.strerror}") from None
    header, records, _, _ = _parse_lines(path, data)
    if header is None:
        raise RunFileError(f"run file '{path}' is empty: it has no header")
    return header, records


class RunFile:
    """A run file opened for appending: validates the header, repairs a partial tail, locks the file.

    `open()` returns the finished records by key; `append()` writes one record durably.
    """

    def __init__(self, path: str | Path, config: dict, info: dict | None = None, warn=None):
        self.path = Path(path)
        self.config = json.loads(json.dumps(config))  # what a JSON round trip gives, for comparison
        self.info = info or {}
        self.warn = warn or (lambda msg: print(f"collabthink: {msg}", file=sys.stderr))
        self._fh = None

    def open(self) -> dict[str, dict]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fh = os.fdopen(fd, "r+b")
        try:
            _lock(fh, self.path)
            data = fh.read()
            header, records, good, dropped = _parse_lines(self.path, data)
            if header is not None:
                if header.get("format") != FORMAT:
                    raise RunFileError(f"run file '{self.path}' has format {header.get('format')!r}, "
                                       f"this version writes {FORMAT!r}: pass a new --out")
                diff = config_diff(self.config, header.get("config", {}))
                if diff and not records:  # nothing finished under the old config: start afresh
                    self.warn(f"run file '{self.path}' held no records; replacing its header ({'; '.join(diff)})")
                    header, good, dropped = None, 0, None
                elif diff:
                    raise RunFileError(f"run file '{self.path}' was made with another config ({'; '.join(diff)}): "
                                       "rerun with the same options, or pass a new --out")
            if dropped:
                self.warn(f"run file '{self.path}': {dropped}")
            if header is None:
                good = 0
            fh.seek(good)
            fh.truncate()
            if good and data[good - 1:good] != b"\n":
                fh.write(b"\n")
            if header is None:
                line = {"type": "header", "format": FORMAT, "config": self.config, "info": self.info}
                fh.write((json.dumps(line, ensure_ascii=False) + "\n").encode())
            fh.flush()
            os.fsync(fh.fileno())
        except BaseException:
            fh.close()
            raise
        self._fh = fh
        return {r["key"]: r for r in records if "key" in r}

    def append(self, record: dict) -> None:
        if self._fh is None:
            raise RuntimeError("run file is not open")
        line = (json.dumps(record, ensure_ascii=False, default=_jsonable) + "\n").encode()
        self._fh.write(line)
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing releases the lock
            self._fh = None

    def __enter__(self) -> "RunFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _jsonable(value: Any) -> Any:
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return str(value)


def _lock(fh, path: Path) -> None:
    try:
        import fcntl
    except ImportError:  # not on POSIX: no lock
        return
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise RunFileError(f"run file '{path}' is in use by another `collabthink eval`: wait for it, "
                           "or pass a new --out") from None


def iter_records(paths: list[str | Path]) -> Iterator[tuple[dict, dict]]:
    """(header, record) for every record of several run files."""
    for p in paths:
        header, records = read_run(p)
        for r in records:
            yield header, r
