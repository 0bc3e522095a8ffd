"""Constrained decoding on the transformers path: a logits processor that only lets JSON matching a schema through.

xgrammar compiles the JSON Schema into a grammar over the tokenizer's vocabulary once (a fraction of a second for
the extraction schema) and masks every disallowed token at each step; it is the grammar engine openvino-genai's
StructuredOutputConfig uses too. neural_chat_app's torch backend uses the same class.
"""

from __future__ import annotations

import json

from finetune.extras import require


class SchemaConstraint:
    """Compiled JSON-Schema grammars for one tokenizer; `processor(schema)` gives a fresh per-generate processor."""

    def __init__(self, tokenizer, vocab_size: int, stop_token_ids: list[int], compact: bool = True):
        xgr = require("xgrammar", "Constrained decoding on the transformers backend")
        self._xgr = xgr
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=stop_token_ids)
        self._compiler = xgr.GrammarCompiler(info)
        self.compact = compact
        self._cache: dict[str, object] = {}

    def compile(self, schema: dict):
        key = json.dumps(schema, sort_keys=True)
        if key not in self._cache:
            try:
                # compact: no free whitespace, one line with ", " and ": " (json.dumps' default, the training format)
                kwargs = {"any_whitespace": False, "separators": (", ", ": ")} if self.compact else {}
                self._cache[key] = self._compiler.compile_json_schema(json.dumps(schema), **kwargs)
            except Exception as err:  # xgrammar raises RuntimeError/ValueError with its parser's message
                raise ValueError(f"The JSON schema cannot be compiled into a grammar: {err}") from err
        return self._cache[key]

    def processor(self, schema: dict):
        """A transformers LogitsProcessor for one generate() call (it keeps per-sequence state)."""
        from xgrammar.contrib.hf import LogitsProcessor

        return LogitsProcessor(self.compile(schema))
