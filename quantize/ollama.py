"""The Ollama Modelfile of a GGUF export: the model's own chat format as an Ollama (Go) template, and its stops.

Ollama does not run Jinja chat templates; each chat format below is the Go-template form of a family's published
template, recognized by what the model's Jinja template writes for a probe conversation (rendered, not read:
Phi-4-mini's template builds its role markers from variables, and differs from Phi-3.5's only in the newlines after
them). A template of another format gets no TEMPLATE line: Ollama then reads the GGUF's own
`tokenizer.chat_template` and matches it against the formats it knows.
"""

from __future__ import annotations

import re

# A conversation whose rendering tells the formats apart.
PROBE = [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"}]

# format -> (what its template writes for PROBE's first turn, Ollama template, stop strings)
FORMATS = {
    "chatml": ("<|im_start|>user\nQ1<|im_end|>", """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{- range .Messages }}{{- if ne .Role "system" }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}{{ end }}<|im_start|>assistant
""", ["<|im_end|>", "<|im_start|>"]),
    "llama3": ("<|start_header_id|>user<|end_header_id|>\n\nQ1<|eot_id|>",
               """{{- if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>{{ end }}{{- range .Messages }}{{- if ne .Role "system" }}<|start_header_id|>{{ .Role }}\
<|end_header_id|>

{{ .Content }}<|eot_id|>{{ end }}{{ end }}<|start_header_id|>assistant<|end_header_id|>

""", ["<|eot_id|>", "<|start_header_id|>"]),
    # Gemma's templates have no system turn: the system prompt opens the first user turn, as Gemma 3's does.
    "gemma": ("<start_of_turn>user\nQ1<end_of_turn>",
              """{{- $system := .System }}{{- range .Messages }}{{- if eq .Role "user" }}\
<start_of_turn>user
{{ if $system }}{{ $system }}

{{ $system = "" }}{{ end }}{{ .Content }}<end_of_turn>
{{ else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}<end_of_turn>
{{ end }}{{ end }}<start_of_turn>model
""", ["<end_of_turn>", "<start_of_turn>"]),
    # Phi-3 and Phi-3.5: a newline after each role marker
    "phi3": ("<|user|>\nQ1<|end|>", """{{- if .System }}<|system|>
{{ .System }}<|end|>
{{ end }}{{- range .Messages }}{{- if ne .Role "system" }}<|{{ .Role }}|>
{{ .Content }}<|end|>
{{ end }}{{ end }}<|assistant|>
""", ["<|end|>", "<|user|>", "<|endoftext|>"]),
    # Phi-4-mini: the same markers with nothing between a marker and its text
    "phi4": ("<|user|>Q1<|end|>", """{{- if .System }}<|system|>{{ .System }}<|end|>{{ end }}\
{{- range .Messages }}{{- if ne .Role "system" }}<|{{ .Role }}|>{{ .Content }}<|end|>{{ end }}{{ end }}<|assistant|>""",
             ["<|end|>", "<|user|>", "<|endoftext|>"]),
    # Mistral v0.3: the system prompt goes into the last user turn.
    "mistral": ("[INST] Q1[/INST]", """{{- range $i, $_ := .Messages }}{{- if eq .Role "user" }}[INST] \
{{ if and $.System (eq (len (slice $.Messages $i)) 1) }}{{ $.System }}

{{ end }}{{ .Content }}[/INST]{{ else if eq .Role "assistant" }} {{ .Content }}</s>{{ end }}{{ end }}""",
                ["</s>", "[INST]"]),
}


def chat_format(tokenizer) -> str | None:
    """The FORMATS key whose turns the tokenizer's chat template writes, or None (no template, another format, or
    a template that refuses the probe)."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    try:
        text = tokenizer.apply_chat_template(PROBE, tokenize=False, add_generation_prompt=True)
    except Exception:  # noqa: BLE001 - a template of its own kind: Ollama gets the GGUF's own template instead
        return None
    for name, (turn, _, _) in FORMATS.items():
        if turn in text:
            return name
    return None


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
    stops = list(FORMATS[fmt][2]) if fmt else []
    eos = getattr(generation_config, "eos_token_id", None)
    ids = (eos if isinstance(eos, list) else [eos]) + [tokenizer.eos_token_id]
    for token_id in ids:
        token = tokenizer.convert_ids_to_tokens(token_id) if token_id is not None else None
        if token and token not in stops:
            stops.append(token)
    return stops


def modelfile(gguf_name: str, tokenizer, generation_config=None) -> str:
    """An Ollama Modelfile: the GGUF, the model's chat format, its default system prompt and its stop tokens."""
    template = tokenizer.chat_template or ""
    fmt = chat_format(tokenizer)
    lines = [f"FROM ./{gguf_name}", ""]
    if fmt:
        lines += [f'TEMPLATE """{FORMATS[fmt][1]}"""', ""]
    elif template:
        lines += ["# No Ollama form of this chat template here: Ollama reads the one inside the GGUF.", ""]
    system = default_system_prompt(template) if fmt == "chatml" else None
    if system:
        lines += [f'SYSTEM """{system}"""', ""]
    lines += [f'PARAMETER stop "{s}"' for s in stop_strings(tokenizer, generation_config, fmt)]
    return "\n".join(lines) + "\n"
