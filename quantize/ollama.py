"""The Ollama Modelfile of a GGUF export: the model's own chat format as an Ollama (Go) template, with its tools
and thinking, and its stops.

Ollama does not run Jinja chat templates the way serving does; each chat format below is the Go-template form of a
family's published template (quantize/ollama_templates.py), recognized by what the model's Jinja template writes
for probe conversations (rendered, not read: Phi-4-mini's template builds its role markers from variables, and
differs from Phi-3.5's only in the newlines after them). A template of another format gets no TEMPLATE line: Ollama
then reads the GGUF's own `tokenizer.chat_template`.
"""

from __future__ import annotations

import re
import time

from quantize import ollama_templates as go

# A conversation whose rendering tells the formats apart.
PROBE = [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"}]
PROBE_TOOLS = [{"type": "function", "function": {"name": "probe", "description": "P",
                                                  "parameters": {"type": "object", "properties": {}}}}]

# format -> (what its template writes for PROBE's first turn, stop strings); chatml, llama3 and mistral are told
# apart further by what they write for tools (_refined)
FORMATS = {
    "chatml": ("<|im_start|>user\nQ1<|im_end|>", ["<|im_end|>", "<|im_start|>"]),
    "llama3": ("<|start_header_id|>user<|end_header_id|>\n\nQ1<|eot_id|>", ["<|eot_id|>", "<|start_header_id|>"]),
    "gemma": ("<start_of_turn>user\nQ1<end_of_turn>", ["<end_of_turn>", "<start_of_turn>"]),
    # Phi-3 and Phi-3.5: a newline after each role marker
    "phi3": ("<|user|>\nQ1<|end|>", ["<|end|>", "<|user|>", "<|endoftext|>"]),
    # Phi-4-mini: the same markers with nothing between a marker and its text
    "phi4": ("<|user|>Q1<|end|>", ["<|end|>", "<|user|>", "<|endoftext|>"]),
    "mistral": ("[INST] Q1[/INST]", ["</s>", "[INST]"]),
}


def _render(tokenizer, messages: list[dict], **kwargs) -> str | None:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
    except Exception:  # noqa: BLE001 - a template of its own kind: Ollama gets the GGUF's own template instead
        return None


def chat_format(tokenizer) -> str | None:
    """The FORMATS key whose turns the tokenizer's chat template writes, or None (no template, another format, or
    a template that refuses the probe)."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    text = _render(tokenizer, PROBE)
    if text is None:
        return None
    for name, (turn, _) in FORMATS.items():
        if turn in text:
            return name
    return None


def go_template(tokenizer) -> str | None:
    """The Ollama template that prompts as serving does with this tokenizer's chat template (its tools and
    thinking included), or None where there is no Ollama form of it here."""
    from finetune.chat_template import template_text, thinking_switch
    from finetune.tool_calls import template_renders_tools

    fmt = chat_format(tokenizer)
    if fmt is None:
        return None
    template = template_text(tokenizer)
    own_tools = template_renders_tools(tokenizer)
    with_tools = _render(tokenizer, PROBE, tools=PROBE_TOOLS) if own_tools else None
    if fmt == "chatml":
        default = default_system_prompt(template)
        if with_tools is None:
            return None if own_tools else go.chatml(default, hermes=True)
        if "# Tools\n\nYou may call one or more functions" not in with_tools:
            return go.chatml(default, hermes=False)  # tools of another kind: plain chat only
        return go.qwen(default, qwen3="last_query_index" in template, thinking=thinking_switch(tokenizer))
    if fmt == "llama3":
        found = re.search(r"Today Date: ([^\n]*)\n", with_tools or "")
        if found is None or "Cutting Knowledge Date" not in with_tools:
            return go.llama3()
        today = time.strftime("%d %b %Y")
        return go.llama3_1("{{ currentDate }}" if found.group(1) == today else found.group(1))
    if fmt == "mistral":
        return go.mistral(tools=bool(with_tools) and "[AVAILABLE_TOOLS]" in with_tools)
    if fmt == "phi4":
        return go.phi4(tools=own_tools and with_tools is not None)
    return {"gemma": go.gemma, "phi3": go.phi3}[fmt](hermes=not own_tools)


def default_system_prompt(chat_template: str | None) -> str | None:
    """The system prompt a ChatML template inserts when the conversation has none (SmolLM2's and Qwen 2.5's)."""
    if not chat_template:
        return None
    # literal text only: a system turn built from variables (messages[0]['content'], a tool list) is not a default
    text = chat_template.replace("\n", "\\n")
    for found in re.finditer(r"<\|im_start\|>system\\n([^{}<]+?)<\|im_end\|>", text):
        if not re.search(r"""['"]\s*\+|\+\s*['"]""", found.group(1)):
            return found.group(1).replace("\\n", "\n")
    return None


def stop_strings(tokenizer, generation_config=None, fmt: str | None = None) -> list[str]:
    """The format's turn markers, then every end-of-sequence token of the generation config and the tokenizer."""
    stops = list(FORMATS[fmt][1]) if fmt else []
    eos = getattr(generation_config, "eos_token_id", None)
    ids = (eos if isinstance(eos, list) else [eos]) + [tokenizer.eos_token_id]
    for token_id in ids:
        token = tokenizer.convert_ids_to_tokens(token_id) if token_id is not None else None
        if token and token not in stops:
            stops.append(token)
    return stops


def modelfile(gguf_name: str, tokenizer, generation_config=None) -> str:
    """An Ollama Modelfile: the GGUF, the model's chat format (its default system prompt, tools and thinking
    included), its stop tokens and its authors' sampling settings."""
    template = go_template(tokenizer)
    lines = [f"FROM ./{gguf_name}", ""]
    if template:
        lines += [f'TEMPLATE """{template}"""', ""]
    elif getattr(tokenizer, "chat_template", None):
        lines += ["# No Ollama form of this chat template here: Ollama reads the one inside the GGUF.", ""]
    fmt = chat_format(tokenizer) if template else None
    lines += [f'PARAMETER stop "{s}"' for s in stop_strings(tokenizer, generation_config, fmt)]
    lines += [f"PARAMETER {name} {value}" for name, value in sampling_parameters(generation_config).items()]
    return "\n".join(lines) + "\n"


# generation_config.json's sampling settings -> Ollama's parameter names
SAMPLING = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
            "repetition_penalty": "repeat_penalty"}


def sampling_parameters(generation_config) -> dict:
    """The sampling the model's authors set in its generation_config.json (Qwen 2.5: temperature 0.7, top_p 0.8,
    top_k 20, repetition_penalty 1.05), in Ollama's names: without them Ollama samples with its own defaults. Only
    what the file sets, and only when it samples (`do_sample`)."""
    if generation_config is None or not hasattr(generation_config, "to_diff_dict"):
        return {}
    written = generation_config.to_diff_dict()
    if not written.get("do_sample"):
        return {}
    return {theirs: written[ours] for ours, theirs in SAMPLING.items() if written.get(ours) is not None}
