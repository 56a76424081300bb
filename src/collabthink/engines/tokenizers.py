"""Local tokenizers for engines that talk to a server (the OpenAI-compatible engine).

A server's own tokenize endpoints cost a round trip per call; a local tokenizer of the same model
avoids that. Two kinds: a GGUF file loaded vocab-only through llama.cpp (the same code path as the
embedded engine, so ids and chat rendering are identical to it), or a Hugging Face tokenizer directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, Sequence

from .base import EngineError
from .chat import CHATML_TEMPLATE, ChatTemplate


class Tokenizer(Protocol):
    source: str  # where the vocabulary comes from, for model_info

    def tokenize(self, text: str, special: bool = True) -> list[int]: ...

    def detokenize(self, ids: Sequence[int]) -> str: ...

    def render_chat(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str: ...


class GGUFTokenizer:
    """The vocabulary of a GGUF model without its weights (llama.cpp `vocab_only`), read by the same
    code as the embedded engine's."""

    def __init__(self, path: str | os.PathLike):
        import llama_cpp as ll

        from .llamacpp import GGUFVocab

        self._ll = ll
        self.path = Path(path)
        ll.llama_backend_init()
        params = ll.llama_model_default_params()
        params.vocab_only = True
        self._model = ll.llama_model_load_from_file(str(self.path).encode(), params)
        if not self._model:
            raise EngineError(f"could not load the vocabulary of '{self.path}': pass --tokenizer a valid .gguf")
        self._text = GGUFVocab(ll, self._model)
        self.tokenize, self.detokenize, self.render_chat = self._text.tokenize, self._text.detokenize, self._text.render_chat
        self.chat_template = self._text.chat_template
        self.source = f"gguf:{self.path}"

    def close(self) -> None:
        if getattr(self, "_model", None):
            self._ll.llama_model_free(self._model)
            self._model = None

    def __del__(self):  # pragma: no cover - best effort at interpreter exit
        try:
            self.close()
        except Exception:
            pass


class HFTokenizer:
    """A Hugging Face tokenizer (what vLLM and SGLang load for the served model), used like llama.cpp's:
    no BOS added, `special` parses special-token text into special tokens."""

    def __init__(self, path: str | os.PathLike, tokenizer=None):
        self.source = f"hf:{path}"
        if tokenizer is not None:  # already loaded (vLLM's own)
            self._tok = tokenizer
            return
        try:
            from transformers import AutoTokenizer
        except ImportError as e:  # pragma: no cover - transformers is a dependency here
            raise EngineError("a Hugging Face --tokenizer needs the transformers package: pip install transformers") from e
        try:
            self._tok = AutoTokenizer.from_pretrained(str(path))
        except Exception as e:
            raise EngineError(f"could not load the Hugging Face tokenizer in '{path}': {e}") from e

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False, split_special_tokens=not special))

    def detokenize(self, ids: Sequence[int], special: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=not special, clean_up_tokenization_spaces=False)

    def render_chat(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        if not getattr(self._tok, "chat_template", None):
            return ChatTemplate(CHATML_TEMPLATE).render(messages, add_generation_prompt=add_generation_prompt)
        return self._tok.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)

    def close(self) -> None:
        pass


def load_tokenizer(spec: str) -> GGUFTokenizer | HFTokenizer:
    """A tokenizer from `--tokenizer`: a Hugging Face directory, a .gguf path or a packaged model name."""
    path = Path(spec).expanduser()
    if path.is_dir():
        if not any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
            raise EngineError(f"--tokenizer '{spec}' is a directory without tokenizer files (tokenizer.json ...)")
        return HFTokenizer(path)
    from .models import ModelNotFound, resolve_model

    try:
        gguf = resolve_model(spec)
    except (ModelNotFound, FileNotFoundError, ValueError) as e:
        raise EngineError(
            f"--tokenizer '{spec}' is neither a Hugging Face tokenizer directory, a .gguf file nor a packaged model: {e}"
        ) from e
    return GGUFTokenizer(gguf)
