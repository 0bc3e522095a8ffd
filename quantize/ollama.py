"""The Ollama Modelfile of a GGUF export: the model's own chat format as an Ollama (Go) template, and its stops.

Ollama does not run Jinja chat templates; each chat format below is the Go-template form of a family's published
template, recognized by the markers its Jinja template writes. A template of another format gets no TEMPLATE line:
Ollama then reads the GGUF's own `tokenizer.chat_template` and matches it against the formats it knows.
"""

from __future__ import annotations

import re

# format -> (markers its Jinja template contains, Ollama template, stop strings)
FORMATS = {
    "chatml": (("<|im_start|>",), """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{- range .Messages }}{{- if ne .Role "system" }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}{{ end }}<|im_start|>assistant
""", ["<|im_end|>", "<|im_start|>"]),
    "llama3": (("<|start_header_id|>", "<|eot_id|>"), """{{- if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>{{ end }}{{- range .Messages }}{{- if ne .Role "system" }}<|start_header_id|>{{ .Role }}\
<|end_header_id|>

{{ .Content }}<|eot_id|>{{ end }}{{ end }}<|start_header_id|>assistant<|end_header_id|>

""", ["<|eot_id|>", "<|start_header_id|>"]),
    # Gemma's templates have no system turn: the system prompt opens the first user turn, as Gemma 3's does.
    "gemma": (("<start_of_turn>",), """{{- $system := .System }}{{- range .Messages }}{{- if eq .Role "user" }}\
<start_of_turn>user
{{ if $system }}{{ $system }}

{{ $system = "" }}{{ end }}{{ .Content }}<end_of_turn>
{{ else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}<end_of_turn>
{{ end }}{{ end }}<start_of_turn>model
""", ["<end_of_turn>", "<start_of_turn>"]),
    "phi3": (("<|user|>", "<|end|>"), """{{- if .System }}<|system|>
{{ .System }}<|end|>
{{ end }}{{- range .Messages }}{{- if ne .Role "system" }}<|{{ .Role }}|>
{{ .Content }}<|end|>
{{ end }}{{ end }}<|assistant|>
""", ["<|end|>", "<|user|>", "<|endoftext|>"]),
    # Mistral v0.3: the system prompt goes into the last user turn.
    "mistral": (("[INST]",), """{{- range $i, $_ := .Messages }}{{- if eq .Role "user" }}[INST] \
{{ if and $.System (eq (len (slice $.Messages $i)) 1) }}{{ $.System }}

{{ end }}{{ .Content }}[/INST]{{ else if eq .Role "assistant" }} {{ .Content }}</s>{{ end }}{{ end }}""",
                ["</s>", "[INST]"]),
}


def chat_format(chat_template: str | None) -> str | None:
    """The FORMATS key whose markers the Jinja template writes, or None."""
    for name, (markers, _, _) in FORMATS.items():
        if chat_template and all(marker in chat_template for marker in markers):
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
    fmt = chat_format(template)
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
