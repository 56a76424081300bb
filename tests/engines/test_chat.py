"""Chat templates rendered from the template text a model ships."""

from __future__ import annotations

import pytest

from collabthink.engines.chat import CHATML_TEMPLATE, ChatTemplate

# The shape of a Qwen3-style thinking template: the generation prompt opens the reasoning block.
THINKING = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)
GEMMA_LIKE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def test_chatml_rendering():
    t = ChatTemplate(CHATML_TEMPLATE)
    text = t.render([{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}])
    assert text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"
    assert not t.opens_thinking


def test_thinking_template_is_detected():
    t = ChatTemplate(THINKING)
    assert t.render([{"role": "user", "content": "Q"}]).endswith("<think>\n")
    assert t.opens_thinking


def test_bos_token_and_roles_from_the_template():
    t = ChatTemplate(GEMMA_LIKE, bos_token="<bos>")
    text = t.render([{"role": "user", "content": " Q "}, {"role": "assistant", "content": "A"}], add_generation_prompt=False)
    assert text == "<bos><start_of_turn>user\nQ<end_of_turn>\n<start_of_turn>model\nA<end_of_turn>\n"


def test_raise_exception_in_a_template_surfaces():
    t = ChatTemplate("{{ raise_exception('roles must alternate') }}")
    with pytest.raises(Exception, match="roles must alternate"):
        t.render([{"role": "user", "content": "Q"}])


def test_malformed_messages_are_rejected_by_name():
    with pytest.raises(ValueError, match=r"messages\[1\]"):
        ChatTemplate(CHATML_TEMPLATE).render([{"role": "user", "content": "Q"}, {"content": "no role"}])


def test_real_model_template_renders(engine):
    text = engine.render_chat([{"role": "user", "content": "What is 1+1?"}])
    assert "What is 1+1?" in text and text.endswith("assistant\n")
