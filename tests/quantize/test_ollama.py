"""The Ollama Modelfile speaks each family's chat format, with its stops.

pytest tests/quantize/test_ollama.py
"""

from __future__ import annotations

import pytest

from quantize.ollama import chat_format, go_template, modelfile
from tests.families import FAMILIES, NAMES, OLLAMA_FORMAT, family_tokenizer


@pytest.mark.parametrize("family", NAMES)
def test_each_published_template_is_recognized_and_its_end_of_turn_stops_generation(family):
    tokenizer = family_tokenizer(family)
    assert chat_format(tokenizer) == OLLAMA_FORMAT[family]

    class Generation:  # the family's generation_config.json: its end-of-turn tokens
        eos_token_id = [tokenizer.convert_tokens_to_ids(t) for t in FAMILIES[family][4]]

    text = modelfile("model-q8_0.gguf", tokenizer, Generation())
    assert text.startswith("FROM ./model-q8_0.gguf\n")
    assert f'TEMPLATE """{go_template(tokenizer)}"""' in text
    for token in FAMILIES[family][4]:
        assert f'PARAMETER stop "{token}"' in text


def test_qwen_s_default_system_prompt_is_in_the_template_where_a_chat_has_none():
    """In the template, not a SYSTEM line: Ollama would hand a SYSTEM line to the template as the chat's own
    system prompt, and SmolLM2's template leaves its default out when tools are described in the system turn
    (tests/quantize/test_ollama_render.py renders both)."""
    text = modelfile("m.gguf", family_tokenizer("qwen2"))
    assert "{{ else }}<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant." in text
    assert "SYSTEM" not in text


def test_a_template_of_another_format_is_left_to_the_one_inside_the_gguf():
    tokenizer = family_tokenizer("llama")
    tokenizer.chat_template = "{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    text = modelfile("m.gguf", tokenizer)
    assert "TEMPLATE" not in text and "Ollama reads the one inside the GGUF" in text
    assert f'PARAMETER stop "{tokenizer.eos_token}"' in text


def test_the_model_s_own_sampling_settings_replace_ollama_s_defaults():
    from transformers import GenerationConfig

    qwen = GenerationConfig(do_sample=True, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05,
                            eos_token_id=[151645, 151643])
    text = modelfile("m.gguf", family_tokenizer("qwen2"), qwen)
    params = [line for line in text.splitlines() if line.startswith("PARAMETER") and "stop" not in line]
    assert params == ["PARAMETER temperature 0.7", "PARAMETER top_p 0.8", "PARAMETER top_k 20",
                      "PARAMETER repeat_penalty 1.05"]
    greedy = modelfile("m.gguf", family_tokenizer("qwen2"), GenerationConfig(temperature=0.7))  # no do_sample
    assert "temperature" not in greedy
