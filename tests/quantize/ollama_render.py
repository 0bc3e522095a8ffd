"""What Ollama prompts a model with for a chat request, rendered by Go's text/template (ollama_render/main.go), and
what serving and fine-tuning render for the same conversation with the model's Jinja template, to compare them."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).parent / "ollama_render" / "main.go"


def renderer() -> Path:
    """The compiled renderer, built once per source version and shared by the test processes (Go 1.19 compiles
    the standard packages it needs on the first build: about 20 s on 2 cores)."""
    from tests.require_backends import skip_missing_program

    go = shutil.which("go")
    if go is None:
        skip_missing_program("go", "Go is not installed (Debian: golang-go): the Ollama template tests render with "
                                   "Go's text/template")
    digest = hashlib.sha1(SOURCE.read_bytes()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "neuralchat-tests"
    binary = cache / f"ollama_render-{digest}"
    if binary.exists():
        return binary
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as work:
        built = Path(work) / "ollama_render"
        env = {**os.environ, "GOCACHE": str(cache / "gocache"), "GOPATH": str(cache / "gopath"), "GOFLAGS": "",
               "GO111MODULE": "off", "CGO_ENABLED": "0"}
        subprocess.run([go, "build", "-o", str(built), str(SOURCE)], check=True, env=env, cwd=work,
                       capture_output=True, timeout=600)
        os.replace(built, binary)  # atomic: another process may have built it too
    return binary


def to_ollama(messages: list[dict]) -> list[dict]:
    """OpenAI-shaped messages as an Ollama client sends them: arguments as objects, reasoning as `thinking`."""
    out = []
    for m in messages:
        sent = {"role": m["role"], "content": m.get("content") or ""}
        if m.get("reasoning_content"):
            sent["thinking"] = m["reasoning_content"]
        if m.get("tool_calls"):
            sent["tool_calls"] = [{"id": c.get("id", ""), "function": {
                "index": i, "name": c["function"]["name"], "arguments": c["function"]["arguments"]}}
                for i, c in enumerate(m["tool_calls"])]
        if m.get("tool_call_id"):
            sent["tool_call_id"] = m["tool_call_id"]
        out.append(sent)
    return out


def ollama_prompt(template: str, messages: list[dict], tools: list[dict] | None = None,
                  think: bool | None = None) -> str:
    request = {"template": template, "messages": to_ollama(messages), "tools": tools, "think": think}
    done = subprocess.run([str(renderer())], input=json.dumps(request), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def served_prompt(tokenizer, messages: list[dict], tools: list[dict] | None = None,
                  thinking: bool | None = None) -> str:
    """The generation prompt serving builds (tool_messages, then the Jinja template), without the BOS token that
    llama.cpp adds itself."""
    from finetune.chat_template import generation_prompt
    from finetune.tool_calls import tool_messages

    messages, tools = tool_messages(messages, tools, tokenizer)
    text = generation_prompt(tokenizer, messages, thinking=thinking, **({"tools": tools} if tools else {}))
    bos = tokenizer.bos_token if "bos_token" in tokenizer.chat_template else None
    return text[len(bos):] if bos and text.startswith(bos) else text


def same_json(text: str) -> str:
    """`text` with each JSON value in it written one way (keys sorted, Python's spacing), and Llama's date line
    without its date: what may differ between the Go and Jinja renderings (quantize/ollama_templates.py)."""
    decoder, out, i = json.JSONDecoder(), [], 0
    while i < len(text):
        if text[i] in '{["':
            try:
                value, end = decoder.raw_decode(text, i)
            except ValueError:
                pass
            else:
                out.append(json.dumps(value, sort_keys=True, ensure_ascii=False))
                i = end
                continue
        out.append(text[i])
        i += 1
    return re.sub(r"Today Date: [^\n]*\n", "Today Date: (today)\n", "".join(out))
