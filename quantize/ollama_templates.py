"""Ollama (Go text/template) forms of the families' chat templates, tools and thinking included.

Each writes what the family's Jinja template, through `finetune.tool_calls.tool_messages`, writes for the same
conversation: the prompt the model was fine-tuned and is served on (tests/quantize/test_ollama_render.py renders
both, the Go side with Go's text/template as Ollama's server calls it). Where they cannot agree:
- Ollama hands a template its tools and call arguments as maps, which Go's encoding/json writes compact with the
  keys sorted and <, > and & as \u003c, \u003e and \u0026: the JSON is the same, its spacing, key order and those
  escapes are not (no template function turns them off).
- Go templates cannot hash or count: a call id is written as the client sent it (serving fits it to Mistral v0.3's
  9 characters; Ollama's clients send those it generated), and a result without an id gets none.
- Ollama joins every system message into .System; the templates write it once, at the start.
- There is no trim: content is written as sent.

What Ollama reads from a template (ollama/ollama tools/template.go, thinking/template.go): it offers tools only
when `.Tools` appears; it finds a call by the first text written inside `{{ if .ToolCalls }}`, up to its `{`
(`<tool_call>`, `[TOOL_CALLS] [`, `functools[`; none means a bare JSON object, Llama's); it splits thinking off
by the texts around `{{ .Thinking }}` in the messages loop. So each call block starts with its tag.
"""

from __future__ import annotations

from finetune.tool_calls import HERMES_SYSTEM, PHI_CALLS, TAG_CLOSE, TAG_OPEN

# The Hermes description of the tools (finetune.tool_calls.HERMES_SYSTEM), one JSON definition a line.
_HERMES_TOOLS = (HERMES_SYSTEM.replace("{{", "{").replace("}}", "}")
                 .replace("{tools}", '{{ range $k, $t := .Tools }}{{ if $k }}\n{{ end }}{{ json $t }}{{ end }}'))

# A Hermes-folded message's text: a result as a user turn names its call, a reply's calls follow its text.
_HERMES_CONTENT = (
    '{{ if eq .Role "tool" }}Result of the tool call {{ .ToolCallID }}:\n{{ .Content }}'
    '{{ else }}{{ .Content }}{{ $calls := .ToolCalls }}{{ if and .Content $calls }}\n{{ end }}'
    '{{ if .ToolCalls }}{{ range $j, $c := .ToolCalls }}' + TAG_OPEN + '\n'
    '{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}\n' + TAG_CLOSE +
    '{{ if gt (len (slice $calls $j)) 1 }}\n{{ end }}{{ end }}{{ end }}{{ end }}')


def _system(hermes: bool) -> tuple[str, str]:
    """(whether there is a system text, the text): the system prompt, with the Hermes tools after it."""
    if not hermes:
        return ".System", "{{ .System }}"
    text = '{{ .System }}{{ if and .System .Tools }}\n\n{{ end }}{{ if .Tools }}' + _HERMES_TOOLS + '{{ end }}'
    return "or .System .Tools", text


def _content(hermes: bool) -> str:
    return _HERMES_CONTENT if hermes else "{{ .Content }}"


def _role(user_for_tool: bool) -> str:
    return '{{ if eq .Role "tool" }}user{{ else }}{{ .Role }}{{ end }}' if user_for_tool else "{{ .Role }}"


def chatml(default_system: str | None, hermes: bool) -> str:
    """ChatML (SmolLM2's): the template's default system prompt, which it writes when a conversation has none;
    `hermes`: the template has no tools of its own, so serving describes them in Hermes form."""
    has_system, system = _system(hermes)
    default = f"<|im_start|>system\n{default_system}<|im_end|>\n" if default_system else ""
    return ('{{- if ' + has_system + ' }}<|im_start|>system\n' + system + '<|im_end|>\n'
            '{{ else }}' + default + '{{ end }}'
            '{{- range .Messages }}{{- if ne .Role "system" }}<|im_start|>' + _role(hermes) + '\n' + _content(hermes) +
            '<|im_end|>\n{{ end }}{{ end }}<|im_start|>assistant\n')


_QWEN_TOOLS = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function "
    "signatures within <tools></tools> XML tags:\n<tools>{{ range .Tools }}\n{{ json . }}{{ end }}\n</tools>\n\nFor "
    "each function call, return a json object with function name and arguments within <tool_call></tool_call> XML "
    'tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n')

_QWEN_CALL = ('<tool_call>\n{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}\n'
              '</tool_call>')

# Results: consecutive ones share one user turn, closed when another role (or the end) follows.
_QWEN_RESULT = ('{{ else if eq .Role "tool" }}{{ if ne $prev "tool" }}<|im_start|>user{{ end }}\n<tool_response>\n'
                '{{ .Content }}\n</tool_response>{{ end }}{{ $prev = .Role }}{{ end }}{{ end }}'
                '{{ if eq $prev "tool" }}<|im_end|>\n{{ end }}<|im_start|>assistant\n')
_QWEN_TURN_START = ('{{- $prev := "" }}{{ range $i, $m := .Messages }}{{ if ne .Role "system" }}'
                    '{{ if and (eq $prev "tool") (ne .Role "tool") }}<|im_end|>\n{{ end }}'
                    '{{ if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n')


def qwen(default_system: str | None, qwen3: bool, thinking: bool) -> str:
    """Qwen's own tools section after the system prompt (Qwen 2.5's default one where there is none).
    Qwen 2.5 writes a reply's text and each call on a line of its own after the role. Qwen 3 keeps a reply's
    reasoning after the last user turn only (a user turn is a query here even when its text is a
    <tool_response>, which the Jinja template tells apart); `thinking` (a template with the switch): thinking off
    writes an empty think block into the generation prompt."""
    if default_system:
        system = '{{ if .System }}{{ .System }}{{ else }}' + default_system + '{{ end }}\n\n'
        default = f"<|im_start|>system\n{default_system}<|im_end|>\n"
    else:
        system, default = "{{ if .System }}{{ .System }}\n\n{{ end }}", ""
    head = ('{{- if .Tools }}<|im_start|>system\n' + system + _QWEN_TOOLS +
            '{{ else if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ else }}' + default + '{{ end }}')
    if not qwen3:
        reply = ('{{ else if eq .Role "assistant" }}<|im_start|>assistant{{ $calls := .ToolCalls }}'
                 '{{ if or .Content (not $calls) }}\n{{ .Content }}{{ end }}'
                 '{{ if .ToolCalls }}{{ range .ToolCalls }}\n' + _QWEN_CALL + '{{ end }}{{ end }}<|im_end|>\n')
        return head + _QWEN_TURN_START + reply + _QWEN_RESULT
    last_query = ('{{- $last := len .Messages }}{{ range $i, $m := .Messages }}{{ if eq .Role "user" }}{{ $last = $i }}'
                  '{{ end }}{{ end }}')
    reply = ('{{ else if eq .Role "assistant" }}<|im_start|>assistant\n'
             '{{ if and (gt $i $last) (or .Thinking (eq (len (slice $.Messages $i)) 1)) }}<think>\n{{ .Thinking }}\n'
             '</think>\n\n{{ end }}{{ .Content }}{{ $calls := .ToolCalls }}{{ if and .Content $calls }}\n{{ end }}'
             '{{ if .ToolCalls }}{{ range $j, $c := .ToolCalls }}' + _QWEN_CALL +
             '{{ if gt (len (slice $calls $j)) 1 }}\n{{ end }}{{ end }}{{ end }}<|im_end|>\n')
    off = '{{ if and .IsThinkSet (not .Think) }}<think>\n\n</think>\n\n{{ end }}' if thinking else ""
    return head + last_query + _QWEN_TURN_START + reply + _QWEN_RESULT + off


def llama3() -> str:
    """Llama 3: no tools, no default system header."""
    return ('{{- if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}'
            '{{- range .Messages }}{{- if ne .Role "system" }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n'
            '{{ .Content }}<|eot_id|>{{ end }}{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n')


def llama3_1(date: str) -> str:
    """Llama 3.1-3.3: a system header with the knowledge date and today's (`date`: Go template text); the tools
    before the first user message; one call as a bare JSON object; a result as an `ipython` turn, a JSON string."""
    return ('<|start_header_id|>system<|end_header_id|>\n\n{{ if .Tools }}Environment: ipython\n{{ end }}'
            'Cutting Knowledge Date: December 2023\nToday Date: ' + date + '\n\n{{ .System }}<|eot_id|>'
            '{{- $first := true }}{{ range .Messages }}{{ if ne .Role "system" }}'
            '{{ if and $first $.Tools }}<|start_header_id|>user<|end_header_id|>\n\nGiven the following functions, '
            'please respond with a JSON for a function call with its proper arguments that best answers the given '
            'prompt.\n\nRespond in the format {"name": function name, "parameters": dictionary of argument name and '
            'its value}.Do not use variables.\n\n{{ range $.Tools }}{{ json . }}\n\n{{ end }}{{ .Content }}<|eot_id|>'
            '{{ else }}<|start_header_id|>{{ if eq .Role "tool" }}ipython{{ else }}{{ .Role }}{{ end }}'
            '<|end_header_id|>\n\n{{ if .ToolCalls }}{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", '
            '"parameters": {{ .Function.Arguments }}}{{ end }}{{ else if eq .Role "tool" }}{{ json .Content }}'
            '{{ else }}{{ .Content }}{{ end }}<|eot_id|>{{ end }}'
            '{{ $first = false }}{{ end }}{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n')


def gemma(hermes: bool) -> str:
    """Gemma has no system turn: the system prompt (and the Hermes tools) open the first user turn, as Gemma 3's
    template does and as serving folds it for Gemma 2's, which refuses one."""
    has_system, system = _system(hermes)
    return ('{{- $first := true }}{{ range .Messages }}{{ if ne .Role "system" }}<start_of_turn>'
            '{{ if eq .Role "assistant" }}model{{ else }}user{{ end }}\n'
            '{{ if $first }}{{ with $ }}{{ if ' + has_system + ' }}' + system + '\n\n{{ end }}{{ end }}'
            '{{ $first = false }}{{ end }}' + _content(hermes) + '<end_of_turn>\n{{ end }}{{ end }}'
            '<start_of_turn>model\n')


def phi3(hermes: bool) -> str:
    """Phi-3 and Phi-3.5: a newline after each role marker."""
    has_system, system = _system(hermes)
    return ('{{- if ' + has_system + ' }}<|system|>\n' + system + '<|end|>\n{{ end }}'
            '{{- range .Messages }}{{ if ne .Role "system" }}<|' + _role(hermes) + '|>\n' + _content(hermes) +
            '<|end|>\n{{ end }}{{ end }}<|assistant|>\n')


def phi4(tools: bool) -> str:
    """Phi-4-mini: nothing between a marker and its text; with `tools` (its template's tools on the system
    message), the function definitions as a JSON list on the system turn, calls in the reply's text as
    functools[...]."""
    if not tools:
        return ('{{- if .System }}<|system|>{{ .System }}<|end|>{{ end }}{{- range .Messages }}'
                '{{ if ne .Role "system" }}<|{{ .Role }}|>{{ .Content }}<|end|>{{ end }}{{ end }}<|assistant|>')
    return ('{{- if or .System .Tools }}<|system|>{{ .System }}{{ if .Tools }}<|tool|>[{{ range $k, $t := .Tools }}'
            '{{ if $k }}, {{ end }}{{ json .Function }}{{ end }}]<|/tool|>{{ end }}<|end|>{{ end }}'
            '{{- range .Messages }}{{ if ne .Role "system" }}<|{{ .Role }}|>{{ .Content }}{{ if .ToolCalls }}'
            + PHI_CALLS + '[{{ range $j, $c := .ToolCalls }}{{ if $j }}, {{ end }}{"name": "{{ .Function.Name }}", '
            '"arguments": {{ .Function.Arguments }}}{{ end }}]{{ end }}<|end|>{{ end }}{{ end }}<|assistant|>')


def mistral(tools: bool) -> str:
    """Mistral v0.3: the system prompt in the last message when that is a user turn, else in the first user turn
    (where serving folds it: the Jinja template would leave it out); with `tools`, the definitions before the last
    user turn, calls and results in its own brackets."""
    available = ('{{ if and $.Tools (eq $i $lastUser) }}[AVAILABLE_TOOLS] [{{ range $k, $t := $.Tools }}'
                 '{{ if $k }}, {{ end }}{"type": "function", "function": {{ json .Function }}}{{ end }}]'
                 '[/AVAILABLE_TOOLS]{{ end }}') if tools else ""
    calls = ('{{ else if .ToolCalls }}[TOOL_CALLS] [{{ range $j, $c := .ToolCalls }}{{ if $j }}, {{ end }}'
             '{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}, "id": "{{ .ID }}"}{{ end }}]'
             '</s>') if tools else ""
    results = ('{{ else if eq .Role "tool" }}[TOOL_RESULTS] {"content": {{ .Content }}, "call_id": '
               '"{{ .ToolCallID }}"}[/TOOL_RESULTS]') if tools else ""
    return ('{{- $firstUser := -1 }}{{ $lastUser := -1 }}{{ $lastRole := "" }}{{ range $i, $m := .Messages }}'
            '{{ if eq .Role "user" }}{{ if lt $firstUser 0 }}{{ $firstUser = $i }}{{ end }}{{ $lastUser = $i }}'
            '{{ end }}'
            '{{ $lastRole = .Role }}{{ end }}'
            '{{- range $i, $m := .Messages }}{{ if eq .Role "user" }}' + available + '[INST] '
            '{{ if and $.System (or (eq (len (slice $.Messages $i)) 1) '
            '(and (ne $lastRole "user") (eq $i $firstUser))) }}'
            '{{ $.System }}\n\n{{ end }}{{ .Content }}[/INST]'
            + calls + '{{ else if eq .Role "assistant" }} {{ .Content }}</s>' + results + '{{ end }}{{ end }}')
