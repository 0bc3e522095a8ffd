"""The filter stage: each filter is a function `Conversation -> (code, detail) | None`, built from FilterConfig.

`build_filters` returns them cheapest first, so the tokenizer only sees conversations every other filter kept.
"""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Callable
from typing import Any

from finetune.data.config import PREDICATE, FilterConfig
from finetune.data.records import Conversation, Preference
from finetune.extras import require
from finetune.tool_calls import rendered_conversation

Verdict = tuple[str, str] | None
Filter = Callable[[Conversation], Verdict]

_OPS = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
        ">=": operator.ge}
_MISSING = object()


def build_filters(cfg: FilterConfig, tokenizer: Any = None) -> list[tuple[str, Filter]]:
    filters: list[tuple[str, Filter]] = []
    if cfg.role_order:
        filters.append(("role_order", lambda c: role_order(c, cfg.allow_consecutive_assistant)))
    if cfg.min_turns:
        filters.append(("min_turns", lambda c: min_turns(c, cfg.min_turns)))
    for text in cfg.metadata:
        filters.append(("metadata", metadata_predicate(text)))
    if cfg.min_chars is not None or cfg.max_chars is not None:
        filters.append(("chars", lambda c: length_bounds(_n_chars(c), cfg.min_chars, cfg.max_chars, "chars")))
    if cfg.max_repetition is not None:
        filters.append(("repetition", lambda c: repetition(c, cfg.max_repetition)))
    if cfg.language:
        filters.append(("language", lambda c: language(c, cfg.language)))
    if tokenizer is not None:
        filters.append(("tokens", lambda c: token_bounds(c, tokenizer, cfg.min_tokens, cfg.max_tokens)))
    return filters


def first_failure(item: Conversation | Preference, filters: list[tuple[str, Filter]]) -> Verdict:
    """A preference record passes when prompt + each reply does: each is one sequence the trainer sees."""
    if isinstance(item, Preference):
        for key, view in zip(item.replies, item.views()):
            verdict = first_failure(view, filters)
            if verdict is not None:
                return verdict[0], f"prompt + {key}: {verdict[1]}"
        return None
    for _, fn in filters:
        verdict = fn(item)
        if verdict is not None:
            return verdict
    return None


def role_order(conv: Conversation, allow_consecutive_assistant: bool) -> Verdict:
    roles = [m["role"] for m in conv.messages]
    if "system" in roles[1:]:
        return "role_order", f"a system message at position {roles.index('system', 1)}; only the first may be system"
    turns = roles[1:] if roles[0] == "system" else roles
    if not turns or turns[0] != "user":
        return "role_order", "the first non-system message must be from the user"
    if turns[-1] != "assistant":
        return "role_order", "the last message must be from the assistant (nothing to learn from a trailing user turn)"
    offset = len(roles) - len(turns)
    for i in range(1, len(turns)):
        if turns[i] == "tool":  # results follow the calls they answer, one message each
            if turns[i - 1] != "tool" and not conv.messages[i - 1 + offset].get("tool_calls"):
                return "role_order", f"a tool result at message {i + offset} does not follow a reply that calls a tool"
            continue
        if turns[i] == turns[i - 1] and not (turns[i] == "assistant" and allow_consecutive_assistant):
            return "role_order", f"two {turns[i]} messages in a row at message {i + len(roles) - len(turns)}"
    return None


def min_turns(conv: Conversation, minimum: int) -> Verdict:
    n = sum(m["role"] == "assistant" for m in conv.messages)
    return None if n >= minimum else ("min_turns", f"{n} assistant turn(s), fewer than min_turns={minimum}")


def metadata_predicate(text: str) -> Filter:
    import yaml

    path, op, raw = PREDICATE.match(text).groups()
    keys, compare, expected = path.split(".")[1:], _OPS[op], yaml.safe_load(raw)

    def check(conv: Conversation) -> Verdict:
        value: Any = conv.metadata
        for k in keys:
            value = value.get(k, _MISSING) if isinstance(value, dict) else _MISSING
        if value is _MISSING:
            return "metadata", f"{path} is missing, so {text!r} does not hold"
        try:
            ok = compare(value, expected)
        except TypeError:
            ok = False
        return None if ok else ("metadata", f"{text!r} does not hold ({path} is {value!r})")

    return check


def _n_chars(conv: Conversation) -> int:
    return sum(len(m["content"]) for m in conv.messages)


def length_bounds(n: int, low: int | None, high: int | None, unit: str) -> Verdict:
    if low is not None and n < low:
        return f"min_{unit}", f"{n} {unit}, fewer than min_{unit}={low}"
    if high is not None and n > high:
        return f"max_{unit}", f"{n} {unit}, more than max_{unit}={high}"
    return None


def repetition_share(text: str, n: int = 3) -> float:
    """Share of the text covered by its most frequent n-gram: 1.0 for 'buy now buy now buy now ...'.

    Words are the units; text with few spaces (CJK, 'hahahaha') falls back to characters.
    """
    units, grams = _grams(text, n)
    if not grams:
        return 0.0  # too short to call repetitive
    top, count = Counter(grams).most_common(1)[0]
    if count < 2:
        return 0.0  # nothing repeats
    return _covered(grams, top, n) / len(units)


def _grams(text: str, n: int) -> tuple[list[str], list[tuple[str, ...]]]:
    units: list[str] = text.split()
    if len(units) < 4 * n:
        units = list(text.replace(" ", ""))
    if len(units) < 4 * n:
        return units, []
    return units, list(zip(*(units[i:] for i in range(n))))


def _covered(grams: list[tuple[str, ...]], top: tuple[str, ...], n: int) -> int:
    covered, reach = 0, 0
    for i, g in enumerate(grams):
        if g == top:
            start = max(i, reach)
            covered += i + n - start
            reach = i + n
    return covered


def _share_over(text: str, limit: float, n: int = 3) -> float | None:
    """`repetition_share(text)` if it is over `limit`, else None. Most texts are ruled out cheaply: the top
    n-gram covers at most n * its count of the units, and occurs at most as often as the most frequent unit."""
    units = text.split()
    if len(units) >= 4 * n and max(Counter(units).values()) * n / len(units) <= limit:
        return None
    units, grams = _grams(text, n)
    if not grams:
        return None
    top, count = Counter(grams).most_common(1)[0]
    if count < 2 or count * n / len(units) <= limit:
        return None
    share = _covered(grams, top, n) / len(units)
    return share if share > limit else None


def repetition(conv: Conversation, limit: float) -> Verdict:
    for i, m in enumerate(conv.messages):
        share = _share_over(m["content"], limit)
        if share is not None:
            return "repetition", f"message {i} repeats one 3-gram over {share:.0%} of its length (max {limit:.0%})"
    return None


def language(conv: Conversation, allowed: list[str]) -> Verdict:
    py3langid = require("py3langid", "filter.language")
    text = "\n".join(m["content"] for m in conv.messages if m["role"] != "system")
    lang, _ = py3langid.classify(text)
    return None if lang in allowed else ("language", f"detected language {lang!r}, not in {allowed}")


def count_tokens(conv: Conversation, tokenizer: Any) -> int:
    """Tokens of the conversation as the trainer will see it: through the chat template when there is one."""
    if getattr(tokenizer, "chat_template", None):
        text = rendered_conversation(tokenizer, conv.messages, conv.tools)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer("\n".join(m["content"] for m in conv.messages))["input_ids"]
    return len(ids)


def count_tokens_batch(convs: list[Conversation], tokenizer: Any) -> list[int]:
    """`count_tokens` of each conversation, the texts encoded in one call (the fast tokenizer's batch path)."""
    if not convs:
        return []
    if getattr(tokenizer, "chat_template", None):
        texts = [rendered_conversation(tokenizer, c.messages, c.tools) for c in convs]
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(["\n".join(m["content"] for m in c.messages) for c in convs])["input_ids"]
    return [len(x) for x in ids]


def token_bounds(conv: Conversation, tokenizer: Any, low: int | None, high: int | None) -> Verdict:
    conv.n_tokens = count_tokens(conv, tokenizer)
    return length_bounds(conv.n_tokens, low, high, "tokens")


def count_record_tokens(items: list[Conversation] | list[Preference], tokenizer: Any) -> list[int]:
    """Tokens of each conversation, or of a preference record's longest prompt + reply: through the chat template
    for conversations and conversational records, the texts joined as they are for plain ones (TRL does so)."""
    convs, plain, conv_owner, plain_owner = [], [], [], []
    for k, item in enumerate(items):
        if isinstance(item, Conversation):
            convs.append(item)
            conv_owner.append(k)
        elif item.plain:
            plain += [item.prompt[0]["content"] + reply[0]["content"] for reply in item.replies.values()]
            plain_owner += [k] * len(item.replies)
        else:
            views = item.views()
            convs += views
            conv_owner += [k] * len(views)
    counts = [0] * len(items)
    for k, n in zip(conv_owner, count_tokens_batch(convs, tokenizer)):
        counts[k] = max(counts[k], n)
    for k, ids in zip(plain_owner, tokenizer(plain)["input_ids"] if plain else []):
        counts[k] = max(counts[k], len(ids))
    return counts
