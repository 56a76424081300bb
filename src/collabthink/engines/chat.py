"""Chat-template rendering from the template a model ships (GGUF `tokenizer.chat_template`).

Rendering ourselves (Jinja2, sandboxed, as Hugging Face does) keeps the prompt text identical across
engines, and tells us whether the model is a thinking model: its generation prompt opens `<think>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

# Used when a model ships no template: plain ChatML, which most small instruct models understand.
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def _raise(message: str) -> None:
    raise jinja2.TemplateError(message)


@dataclass
class ChatTemplate:
    source: str
    bos_token: str = ""
    eos_token: str = ""

    def __post_init__(self) -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, loader=jinja2.BaseLoader())
        env.globals["raise_exception"] = _raise
        env.filters.setdefault("tojson", lambda v, indent=None: __import__("json").dumps(v, indent=indent))
        self._template = env.from_string(self.source)

    def render(self, messages: Sequence[dict], add_generation_prompt: bool = True, **extra) -> str:
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise ValueError(f"messages[{i}] must be a dict with 'role' and 'content'")
        return self._template.render(
            messages=list(messages),
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
            **extra,
        )

    @property
    def opens_thinking(self) -> bool:
        """True for thinking models whose generation prompt already opens the reasoning block."""
        probe = self.render([{"role": "user", "content": "x"}])
        return probe.rstrip().endswith(THINK_OPEN)
