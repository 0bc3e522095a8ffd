"""A model's chat template, whatever its family: rendering, and which tokens are the assistant's.

One place for what differs between the templates users bring (published in each model's tokenizer_config.json):
- Gemma 2 refuses a system message and the original Phi-3-mini drops it without a word: `render_chat` folds it
  into the first user turn, with a warning, so the instruction reaches the model either way.
- Loss masking must not assume that a conversation's first turns render as a prefix of the whole (Phi-3 ends
  the text with an extra end token, Mistral v0.3 moves the system message into the last user turn, Qwen3 adds
  an empty thinking block to the last reply only). A template with generation markers (`{% generation %}`)
  gets transformers' own assistant-token mask; any other is rendered once with each assistant reply replaced
  by a unique marker, so the replies are located where the template put them, however it frames them.
- Thinking models (Qwen 3, Qwen 3.5, Gemma 4) frame a reply differently when it is generated than when it sits in
  the history: Gemma 4's generation prompt closes an empty thought channel that its history never shows, Qwen 3.5's
  opens a <think> block. A reply without reasoning is what such a model writes with thinking off, so the last reply
  is learned after the generation prompt serving renders with thinking off: what that prompt adds before the reply
  is put into the training text, unlabelled. A last reply with `reasoning_content` (a thinking model's trace, as
  distillation data holds it) is learned whole, reasoning first, after the generation prompt with thinking on.
"""

from __future__ import annotations

import logging
import os
import re

from finetune.records import DataError

logger = logging.getLogger(__name__)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Gemma 3's published template (google/gemma-3-270m-it), text content only: the system message opens the first
# user turn; the assistant's role is "model".
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

_GENERATION_MARKER = re.compile(r"{%-?\s*generation\s*-?%}")
_MARKER = "NCREPLY{}MARK"  # letters only: survives trim/strip filters and tokenizes like any other text
_WARNED: set = set()  # tokenizers (folding) and (tokenizer, message) pairs warned about once


def ensure_chat_template(tokenizer) -> None:
    """Chat tasks need a template; a base model's tokenizer often has none, so give it ChatML."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHATML_TEMPLATE


def fold_system_message(messages: list[dict]) -> list[dict]:
    """The conversation with its leading system message prepended to the first user turn."""
    system, rest = messages[0], list(messages[1:])
    for i, message in enumerate(rest):
        if message["role"] == "user":
            rest[i] = {**message, "content": f"{system['content']}\n\n{message['content']}"}
            return rest
    return [{"role": "user", "content": system["content"]}, *rest]


def render_chat(tokenizer, messages: list[dict], **kwargs):
    """`tokenizer.apply_chat_template(messages, **kwargs)`, folding a system message the template refuses or drops
    into the first user turn. A conversation the template rejects otherwise raises DataError with its message."""
    from jinja2.exceptions import TemplateError

    has_system = bool(messages) and messages[0].get("role") == "system" and bool(messages[0].get("content"))
    try:
        out = tokenizer.apply_chat_template(messages, **kwargs)
    except TemplateError as error:
        if not has_system or "system" not in str(error).lower():
            raise DataError(f"the model's chat template rejects this conversation: {error}. Change its roles to "
                            f"what the template accepts, or set another chat template.") from None
        return _render_folded(tokenizer, messages, kwargs, reason=str(error))
    if has_system and _drops_system(tokenizer, messages, out, kwargs):
        return _render_folded(tokenizer, messages, kwargs, reason="it leaves the system message out")
    return out


def _drops_system(tokenizer, messages, out, kwargs) -> bool:
    text = out if isinstance(out, str) else tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=kwargs.get("add_generation_prompt", False))
    return messages[0]["content"].strip() not in text


def _render_folded(tokenizer, messages, kwargs, reason: str):
    if id(tokenizer) not in _WARNED:
        _WARNED.add(id(tokenizer))
        logger.warning("The chat template has no place for a system message (%s): it goes at the start of the first "
                       "user turn instead.", reason)
    return render_chat(tokenizer, fold_system_message(messages), **kwargs)


def chat_tokens_and_labels(tokenizer, messages: list[dict], max_length: int, train_on_inputs: bool = False,
                           tools: list[dict] | None = None) -> tuple[list[int], list[int]]:
    """Token ids of the rendered conversation and its labels: the ids inside assistant replies (each reply's
    end-of-turn token included, so the model learns to stop), tool calls included, IGNORE_INDEX elsewhere. `tools`
    (OpenAI's function definitions) and the conversation's calls and results render as serving renders them
    (finetune.tool_calls)."""
    from finetune.formatting import IGNORE_INDEX
    from finetune.tool_calls import tool_messages

    messages, tools = tool_messages(messages, tools, tokenizer)
    extra = {"tools": tools} if tools else {}
    if train_on_inputs:
        text = render_chat(tokenizer, messages, tokenize=False, **extra)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_length]
        return ids, list(ids)
    if _GENERATION_MARKER.search(tokenizer.chat_template or ""):
        enc = render_chat(tokenizer, messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
                          **extra)
        ids, mask = list(enc["input_ids"])[:max_length], list(enc["assistant_masks"])[:max_length]
        return ids, [t if m else IGNORE_INDEX for t, m in zip(ids, mask)]
    text, spans = _assistant_spans(tokenizer, messages, extra)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"][:max_length]
    # A token belongs to a reply when it overlaps one: SentencePiece's "▁Hello" starts at the template's space.
    labels = [tid if any(a < e and b > s for s, e in spans) else IGNORE_INDEX
              for tid, (a, b) in zip(ids, enc["offset_mapping"])]
    return ids, labels


def _assistant_spans(tokenizer, messages: list[dict], extra: dict) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character span of each assistant reply in it, end-of-turn token included. A reply
    with tool calls in the template's own format is found by what changes when its calls do (_call_span)."""
    text = render_chat(tokenizer, messages, tokenize=False, **extra)
    calls = [i for i, m in enumerate(messages) if m["role"] == "assistant" and m.get("tool_calls")]
    replies = [i for i, m in enumerate(messages) if m["role"] == "assistant" and str(m.get("content") or "").strip()
               and i not in calls]
    marked = [{**m, "content": _MARKER.format(i)} if i in replies else m for i, m in enumerate(messages)]
    pieces = re.split(r"NCREPLY\d+MARK", render_chat(tokenizer, marked, tokenize=False, **extra))
    if len(pieces) != len(replies) + 1:
        raise DataError("the model's chat template does not render every assistant reply once, so the replies "
                        "cannot be located for loss masking; set train_on_inputs or another chat template.")
    specials = sorted(_special_tokens(tokenizer), key=len, reverse=True)
    spans, cursor = [], len(pieces[0]) if text.startswith(pieces[0]) else 0
    if calls and (not replies or calls[0] < replies[0]):
        cursor = 0  # pieces[0] runs past the calls: they are found from the start
    out, copied = [], 0  # the training text: the rendered one with what generation prompts add before replies
    previous = 0  # where the previous reply ended: the cursor may already be past a reasoning block
    n = -1  # the marked replies so far: pieces[n + 1] follows the n-th
    for i in sorted(replies + calls):
        last = i == len(messages) - 1
        if i in calls:
            start, end = _call_span(tokenizer, messages, i, text, cursor, extra)
            start, added = _after_generation_prompt(tokenizer, messages[:i], text, start, last, extra)
        else:
            n += 1
            reasoning = str(messages[i].get("reasoning_content") or "").strip() if last else ""
            at = text.find(reasoning, previous) if reasoning else -1
            if reasoning and at < 0:
                _warn_once(tokenizer, "The chat template leaves the last reply's reasoning_content out of the text "
                                      "(Gemma 4's writes it only before tool calls): the reply is learned without it.")
            after = max(cursor, at + len(reasoning)) if at >= 0 else cursor
            start, end = _locate(text, str(messages[i]["content"]), after, pieces[n + 1])
            if at >= 0:  # learned from where the generation prompt with thinking on ends: the reasoning, the reply
                start, added = _after_thinking_prompt(tokenizer, messages[:i], text, at, start, extra), ""
            else:
                start, added = _after_generation_prompt(tokenizer, messages[:i], text, start, last, extra)
            end += next((len(s) for s in specials if text.startswith(s, end)), 0)
        out += [text[copied:start], added]
        copied = start
        shift = sum(len(piece) for piece in out) - start
        spans.append((start + shift, end + shift))
        cursor = previous = end
    return "".join([*out, text[copied:]]), spans


def template_text(tokenizer) -> str:
    """The chat template's source ("" without one); a tokenizer with several named templates gives them all."""
    template = getattr(tokenizer, "chat_template", None) or ""
    return " ".join(template.values()) if isinstance(template, dict) else template


def thinking_switch(tokenizer) -> bool:
    """Whether the chat template turns thinking on and off (`enable_thinking`: Qwen 3, Qwen 3.5, Gemma 4)."""
    return "enable_thinking" in template_text(tokenizer)


def generation_prompt(tokenizer, messages: list[dict], thinking: bool | None = False, **kwargs) -> str:
    """The text a reply is generated after: the conversation rendered with the template's generation prompt.
    `thinking` False: thinking off where the template has the switch (what a reply without reasoning follows, so
    what fine-tuning teaches and evaluation asks for); True: on; None: the template's default (Qwen 3.5 and Qwen 3
    think, Gemma 4 does not)."""
    if thinking is not None and thinking_switch(tokenizer):
        kwargs["enable_thinking"] = thinking
    return render_chat(tokenizer, messages, tokenize=False, add_generation_prompt=True, **kwargs)


def _after_thinking_prompt(tokenizer, before: list[dict], text: str, reasoning_at: int, start: int,
                           extra: dict) -> int:
    """Where a reply with reasoning starts as generation sees it with thinking on: right after that generation
    prompt (Qwen 3's ends at the assistant marker, so <think> is learned; Qwen 3.5's after <think>), else at its
    reasoning."""
    prompt = generation_prompt(tokenizer, before, thinking=True, **extra)
    return len(prompt) if text.startswith(prompt) and len(prompt) <= reasoning_at else min(reasoning_at, start)


def _warn_once(tokenizer, message: str) -> None:
    key = (id(tokenizer), message)
    if key not in _WARNED:
        _WARNED.add(key)
        logger.warning(message)


def _after_generation_prompt(tokenizer, before: list[dict], text: str, start: int, last: bool,
                             extra: dict) -> tuple[int, str]:
    """(start, added) of a reply as generation sees it. When the conversation so far renders as a prefix of the
    text, the reply starts right after the generation prompt, so the space Mistral writes after [/INST] is learned
    as the model's. When the generation prompt (thinking off) runs on past the text before the last reply, what it
    adds (Gemma 4's empty thought channel) is `added`, to go into the text before that reply. Earlier replies keep
    the framing of the history, as the model sees them in later turns."""
    if not before:
        return start, ""
    prompt = generation_prompt(tokenizer, before, **extra)
    if len(prompt) <= start and text.startswith(prompt) and not text[len(prompt):start].strip():
        return len(prompt), ""
    if last and len(prompt) > start and prompt.startswith(text[:start]) and prompt[start:].strip():
        return start, prompt[start:]
    return start, ""


def _call_span(tokenizer, messages: list[dict], i: int, text: str, cursor: int, extra: dict) -> tuple[int, int]:
    """Where reply i, whose tool calls the template renders in the family's format, lies in the text: the part that
    changes when the calls' arguments do, widened back to where the model starts writing (where the generation
    prompt leaves off) and on to the end of its turn (the token a plain reply ends with, the end-of-sequence token,
    or Gemma 4's <|tool_response>, which it writes after its calls)."""
    probe = {"NCARG": "NCCALLMARK"}
    changed = [{**c, "function": {**c["function"], "arguments": probe}} for c in messages[i]["tool_calls"]]
    other = render_chat(tokenizer, [*messages[:i], {**messages[i], "tool_calls": changed}, *messages[i + 1:]],
                        tokenize=False, **extra)
    first = len(os.path.commonprefix([text, other]))
    after = len(text) - len(os.path.commonprefix([text[::-1], other[::-1]]))
    prompt = generation_prompt(tokenizer, messages[:i], **extra)
    start = len(os.path.commonprefix([prompt, text]))
    while start > cursor and not text[:start].endswith(("\n", ">", "]", " ")):  # back to where the framing ends
        start -= 1
    if not cursor <= start <= first:  # the template moves something (Mistral's tool list): after the last turn
        header = _turn_header(prompt, messages[i - 1] if i else None)
        found = text.rfind(header, cursor, first) if header else -1
        start = found + len(header) if found >= 0 else -1
    ends = [e for e in (_reply_end(tokenizer), tokenizer.eos_token, "<|tool_response>") if e]
    end = min((at + len(e) for e in ends if (at := text.find(e, max(after, first))) >= 0), default=-1)
    if start < 0 or end < 0:
        raise DataError("a reply with tool calls cannot be located in the conversation as the chat template renders "
                        "it, so it cannot be masked for the loss; set train_on_inputs or another chat template.")
    return start, end


def _turn_header(prompt: str, before: dict | None) -> str:
    """What the generation prompt writes after the last message's content: the framing the reply starts after."""
    content = str((before or {}).get("content") or "").strip()
    at = prompt.rfind(content) if content else -1
    return prompt[at + len(content):] if at >= 0 else ""


def _reply_end(tokenizer) -> str | None:
    """The special token the template writes right after a reply's text (<|im_end|>, <|eot_id|>, </s> ...)."""
    probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _MARKER.format(0)}]
    try:
        text = render_chat(tokenizer, probe, tokenize=False)
    except DataError:
        return None
    rest = text[text.find(_MARKER.format(0)) + len(_MARKER.format(0)):]
    return next((s for s in sorted(_special_tokens(tokenizer), key=len, reverse=True) if rest.startswith(s)), None)


def _locate(text: str, content: str, cursor: int, following: str) -> tuple[int, int]:
    """Where the template put a reply: the content as the template may have trimmed it, right at the cursor and
    followed by the template's own text when it renders the same as with the marker, else the next match."""
    forms = list(dict.fromkeys([content, content.strip(), content.lstrip(), content.rstrip(), content.strip("\n")]))
    for form in forms:
        if form and text.startswith(form, cursor) and text.startswith(following[:32], cursor + len(form)):
            return cursor, cursor + len(form)
    for form in forms:
        at = text.find(form, cursor) if form else -1
        if at >= 0:
            return at, at + len(form)
    raise DataError("an assistant reply does not appear in the conversation as the chat template renders it, so "
                    "it cannot be located for loss masking; set train_on_inputs or another chat template.")


def _special_tokens(tokenizer) -> set[str]:
    tokens = set(getattr(tokenizer, "all_special_tokens", []) or [])
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    tokens.update(t.content for t in decoder.values() if getattr(t, "special", False))
    return {t for t in tokens if t}
