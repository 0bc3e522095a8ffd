"""The extraction schema's decoding constraint: the Python automaton (quantize.web_schema) accepts exactly the
replies finetune.extraction.to_json writes, and the page's constraint.js (run by node) allows the same tokens.

Run: PYTHONPATH=. pytest -q tests/quantize/test_web_schema.py
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from finetune.extraction import load_schema, to_json
from quantize.web_page import PAGE_DIR
from quantize.web_schema import Automaton, compile_schema

PROGRAM = compile_schema(load_schema())
GOOD = {"attributes": [{"type": "INTEREST", "value": "hiking"}],
        "aspects": [{"aspect": "wifi", "sentiment": "NEGATIVE"}, {"aspect": "bed", "sentiment": "POSITIVE"}],
        "sentiment": "MIXED"}


def test_accepts_the_held_out_references_and_refuses_what_breaks_the_schema():
    automaton = Automaton(PROGRAM, [], [0])
    complete = lambda text: automaton.feed(automaton.start(), text) == ()  # noqa: E731
    with open(Path(__file__).parents[2] / "examples" / "data" / "extraction_heldout.jsonl") as lines:
        references = [to_json(json.loads(json.loads(line)["messages"][-1]["content"])) for line in lines]
    assert all(complete(r) for r in references) and len(references) == 300
    assert complete(to_json(GOOD))
    bad = [
        {**GOOD, "sentiment": "HAPPY"},  # not in the enum
        {**GOOD, "attributes": [{"type": "INTEREST", "value": ""}]},  # minLength 1
        {**GOOD, "aspects": [{"aspect": "x" * 33, "sentiment": "NEUTRAL"}]},  # maxLength 32
        {**GOOD, "attributes": [{"type": "INTEREST", "value": "a"}] * 7},  # maxItems 6
        {"aspects": [], "attributes": [], "sentiment": "MIXED"},  # keys out of order
    ]
    for obj in bad:
        assert automaton.feed(automaton.start(), to_json(obj)) is None, obj
    assert automaton.feed(automaton.start(), json.dumps(GOOD, indent=1)) is None  # one serialization only
    assert automaton.feed(automaton.start(), to_json(GOOD)[:-1]) not in (None, ())  # a prefix: alive, not done


def test_unsupported_schemas_are_refused_with_the_path():
    with pytest.raises(ValueError, match=r"schema\.n: type 'number'"):
        compile_schema({"type": "object", "properties": {"n": {"type": "number"}}, "required": ["n"],
                        "additionalProperties": False})
    with pytest.raises(ValueError, match="every property required"):
        compile_schema({"type": "object", "properties": {"n": {"type": "string"}}})


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    from quantize.web import write_vocab_texts
    from tests.conftest import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    file = tmp_path_factory.mktemp("vocab") / "texts.json"
    write_vocab_texts(tokenizer, file)
    return json.loads(file.read_text()), tokenizer.eos_token_id


PREFIXES = ["", '{"attributes": [', '{"attributes": [{"type": "IN', '{"attributes": [{"type": "INTEREST", "value": "hi',
            '{"attributes": [], "aspects": [{"aspect": "' + "a" * 31,
            '{"attributes": [], "aspects": [], "sentiment": "', to_json(GOOD)[:-1], to_json(GOOD)]


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_page_allows_the_same_tokens_as_python(vocab):
    texts, eos = vocab
    automaton = Automaton(PROGRAM, texts, [eos])
    expected = [sorted(automaton.allowed_ids(automaton.feed(automaton.start(), p))) for p in PREFIXES]
    script = (
        f"import {{ SchemaConstraint, step }} from {json.dumps(str(PAGE_DIR / 'constraint.js'))};\n"
        "import { readFileSync } from 'node:fs';\n"
        "const { program, texts, eos, prefixes } = JSON.parse(readFileSync(0, 'utf8'));\n"
        "const c = new SchemaConstraint(program, texts, [eos]);\n"
        "const out = prefixes.map((p) => { let s = c.start(); for (const ch of p) s = step(s, ch);"
        " return c.allowed(s).sort((a, b) => a - b); });\n"
        "console.log(JSON.stringify(out));\n"
    )
    payload = json.dumps({"program": PROGRAM, "texts": texts, "eos": eos, "prefixes": PREFIXES})
    done = subprocess.run(["node", "--input-type=module", "-e", script], input=payload, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got == expected
    assert got[-1] == [eos] and len(got[3]) > 100  # complete: EOS only; inside a string: most of the vocabulary


def test_web_page_scores_with_the_matching_the_natural_set_uses():
    """`python -m quantize.web_page score --matching lenient` scores as finetune.evaluate does on the natural set."""
    from types import SimpleNamespace

    from quantize.web_page import score

    gold = {"attributes": [{"type": "BEHAVIOR", "value": "cycle to work"}], "aspects": [], "sentiment": "NEUTRAL"}
    reply = {**gold, "attributes": [{"type": "BEHAVIOR", "value": "cycling to work"}]}
    examples = [SimpleNamespace(reference=json.dumps(gold))]
    assert score([json.dumps(reply)], examples)["attribute_f1"] == 0
    assert score([json.dumps(reply)], examples, "lenient")["attribute_f1"] == 100
