"""Schema-constrained decoding for the browser page: a JSON Schema compiled to a small program, and the automaton
that runs it over characters, then over tokens.

The program accepts exactly the text `finetune.extraction.to_json` writes for a valid object (keys in schema order,
", " and ": " separators, no other whitespace, strings without escapes): the one form the specialist is trained
on. Nodes: {"type": "object", "props": [[key, node], ...]} | {"type": "array", "items": node, "max": n} |
{"type": "enum", "values": [...]} | {"type": "string", "min": a, "max": b}.
page/constraint.js runs the same program in the browser; this module is the reference the tests compare it to,
and the Python path's constraint (quantize.web_page).
A state is a stack of frames (a tuple, top first); () means the object is complete and only EOS may follow.
"""

from __future__ import annotations

from functools import lru_cache

State = tuple


def compile_schema(schema: dict, where: str = "schema") -> dict:
    """The program of a schema made of objects (all properties required, no others), arrays of them with maxItems,
    string enums and strings with min/maxLength; anything else is a ValueError naming the path."""
    if "enum" in schema:
        values = schema["enum"]
        if not values or not all(isinstance(v, str) and '"' not in v and "\\" not in v for v in values):
            raise ValueError(f"{where}: the page's constraint supports enums of plain strings only")
        return {"type": "enum", "values": list(values)}
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        if set(schema.get("required", [])) != set(props) or schema.get("additionalProperties", True) is not False:
            raise ValueError(f"{where}: the page's constraint needs every property required and "
                             "additionalProperties: false")
        return {"type": "object", "props": [[k, compile_schema(v, f"{where}.{k}")] for k, v in props.items()]}
    if kind == "array":
        return {"type": "array", "items": compile_schema(schema["items"], f"{where}[]"),
                "max": int(schema.get("maxItems", 1 << 30))}
    if kind == "string":
        return {"type": "string", "min": int(schema.get("minLength", 0)), "max": int(schema.get("maxLength", 1 << 30))}
    raise ValueError(f"{where}: type {kind!r} is not supported by the page's constraint (objects, arrays, strings, "
                     "string enums)")


def _freeze(node: dict) -> tuple:
    """The program as nested tuples, so that states hash (the allowed tokens are cached per state)."""
    kind = node["type"]
    if kind == "object":
        return ("object", tuple((key, _freeze(value)) for key, value in node["props"]))
    if kind == "array":
        return ("array", _freeze(node["items"]), node["max"])
    if kind == "enum":
        return ("enum", tuple(node["values"]))
    return ("string", node["min"], node["max"])


class Automaton:
    """Character and token steps of one compiled program. Frames: ("lit", text, i), ("enum", node, prefix),
    ("str", node, n), ("arr", node, n)."""

    def __init__(self, program: dict, vocab_texts: list[str | None], eos_ids: list[int]):
        self.program = _freeze(program)
        self.texts = vocab_texts
        self.eos = list(eos_ids)
        self._trie = _build_trie(vocab_texts)
        # Inside a string most tokens are plain text: those are allowed by length alone (the fast path below).
        plain = [(len(t), i) for i, t in enumerate(vocab_texts) if t and not any(c in '"\\' or c < " " for c in t)]
        self._plain = [i for _, i in sorted(plain)]
        self._plain_lengths = [n for n, _ in sorted(plain)]
        plain_ids = set(self._plain)
        self._other = [i for i, t in enumerate(vocab_texts) if t and i not in plain_ids]
        self.allowed_ids = lru_cache(maxsize=4096)(self._allowed_ids)

    def start(self) -> State:
        return _expand(self.program, ())

    def step(self, state: State | None, ch: str) -> State | None:
        return _step(state, ch)

    def feed(self, state: State | None, text: str) -> State | None:
        for ch in text:
            state = _step(state, ch)
            if state is None:
                return None
        return state

    def advance(self, state: State | None, token: int) -> State | None:
        """The state after `token`; None when the token is not allowed (EOS only at the end)."""
        if token in self.eos:
            return None
        text = self.texts[token] if token < len(self.texts) else None
        return None if text is None or state is None else self.feed(state, text)

    def _allowed_ids(self, state: State) -> tuple[int, ...]:
        if state == ():
            return tuple(self.eos)
        if state[0][0] == "str":
            import bisect

            room = state[0][1][2] - state[0][2]
            found = self._plain[: bisect.bisect_right(self._plain_lengths, room)]
            found += [i for i in self._other if self.feed(state, self.texts[i]) is not None]
            return tuple(sorted(found))
        found = []
        stack = [(self._trie, state)]
        while stack:
            node, st = stack.pop()
            for ch, child in node[1].items():
                nxt = _step(st, ch)
                if nxt is None:
                    continue
                found.extend(child[0])
                if child[1]:
                    stack.append((child, nxt))
        return tuple(sorted(found))

    def mask(self, state: State, vocab_size: int):
        """Boolean numpy mask of the tokens allowed after `state`."""
        import numpy as np

        allowed = np.zeros(vocab_size, dtype=bool)
        ids = [i for i in self.allowed_ids(state) if i < vocab_size]
        allowed[ids] = True
        return allowed


def _build_trie(texts: list[str | None]):
    root: list = [[], {}]
    for token, text in enumerate(texts):
        if not text:
            continue
        node = root
        for ch in text:
            node = node[1].setdefault(ch, [[], {}])
        node[0].append(token)
    return root


def _expand(node: tuple, tail: State) -> State:
    kind = node[0]
    if kind == "object":
        state = (("lit", "}", 0), *tail)
        for i in range(len(node[1]) - 1, -1, -1):
            key, value = node[1][i]
            state = _expand(value, state)
            state = (("lit", ("{" if i == 0 else ", ") + '"' + key + '": ', 0), *state)
        return state
    if kind == "array":
        return (("lit", "[", 0), ("arr", node, 0), *tail)
    if kind == "enum":
        return (("lit", '"', 0), ("enum", node, ""), *tail)
    return (("lit", '"', 0), ("str", node, 0), *tail)


def _step(state: State | None, ch: str) -> State | None:
    if not state:
        return None
    frame, rest = state[0], state[1:]
    kind = frame[0]
    if kind == "lit":
        text, i = frame[1], frame[2]
        if text[i] != ch:
            return None
        return rest if i + 1 == len(text) else (("lit", text, i + 1), *rest)
    if kind == "enum":
        node, prefix = frame[1], frame[2]
        if ch == '"':
            return rest if prefix in node[1] else None
        prefix += ch
        return (("enum", node, prefix), *rest) if any(v.startswith(prefix) for v in node[1]) else None
    if kind == "str":
        node, n = frame[1], frame[2]
        if ch == '"':
            return rest if n >= node[1] else None
        if ch == "\\" or ch < " " or n >= node[2]:
            return None
        return (("str", node, n + 1), *rest)
    node, n = frame[1], frame[2]  # "arr": before "]" or the next item
    if ch == "]":
        return rest
    if n >= node[2]:
        return None
    if n == 0:
        return _step(_expand(node[1], (("arr", node, 1), *rest)), ch)
    if ch != ",":
        return None
    return (("lit", " ", 0), *_expand(node[1], (("arr", node, n + 1), *rest)))
