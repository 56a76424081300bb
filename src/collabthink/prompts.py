"""The question prompt every method sends, so that methods differ only in what they add to it."""

from __future__ import annotations

from typing import Sequence

from .engines.base import Engine

ANSWER_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


def question_messages(problem: str, system: str | None = None) -> list[dict]:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": f"{problem.strip()}\n\n{ANSWER_INSTRUCTION}"})
    return messages


def chat_ids(engine: Engine, messages: Sequence[dict]) -> list[int]:
    """Token ids of a chat rendered with the model's own template, ready for generation."""
    return engine.tokenize(engine.render_chat(messages, add_generation_prompt=True), special=True)
