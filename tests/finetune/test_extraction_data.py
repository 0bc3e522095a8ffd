"""The extraction task's schema, prompts and data generator: pytest tests/finetune/test_extraction_data.py"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune.extraction import FEW_SHOT, SYSTEM_PROMPT, SchemaError, load_schema, messages_for, to_json
from finetune.extraction.generate import ASPECT_TEMPLATES, ATTRIBUTE_TEMPLATES, CONNECTORS, Generator, generate, main
from finetune.records import check_records, read_records

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "examples" / "data"


def _texts(records):
    return [r["messages"][1]["content"] for r in records]


def _labels(records):
    return [json.loads(r["messages"][2]["content"]) for r in records]


def test_schema_is_valid_and_documents_examples():
    import jsonschema

    schema = load_schema()
    for _, answer in FEW_SHOT:
        jsonschema.validate(answer, schema)
    assert schema["properties"]["attributes"]["items"]["properties"]["type"]["enum"] == [
        "INTEREST", "PREFERENCE", "DISLIKE", "BEHAVIOR"]


def test_bad_schema_files(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("{\n  \"type\": \"object\",,\n}")
    with pytest.raises(SchemaError, match=r"broken\.json:2: the schema is not valid JSON"):
        load_schema(broken)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"type": "object", "properties": {"a": {"type": "strnig"}}}))
    with pytest.raises(SchemaError, match="properties/a/type"):
        load_schema(wrong)
    array = tmp_path / "array.json"
    array.write_text("[1, 2]")
    with pytest.raises(SchemaError, match="must be a JSON object"):
        load_schema(array)


def test_generator_is_deterministic_and_labels_match_schema():
    import jsonschema

    a, b = generate(200, seed=3, heldout=False), generate(200, seed=3, heldout=False)
    assert a == b
    assert a != generate(200, seed=4, heldout=False)
    schema = load_schema()
    for record, label in zip(a, _labels(a)):
        jsonschema.validate(label, schema)
        text = record["messages"][1]["content"].lower()
        for item in label["attributes"]:
            assert item["value"].lower() in text  # the value is a span of the text (typos never touch it)
        for item in label["aspects"]:
            assert item["aspect"].lower() in text
        assert record["messages"][0]["content"] == SYSTEM_PROMPT


def _unknown_words(texts):
    """Words of the texts that appear in none of the generator's word lists: the typos."""
    import finetune.extraction.generate as g

    def words(text):
        return {w.strip(".,;!?:").lower() for w in text.replace("\n", " ").split()}

    known = set()
    for name in dir(g):
        value = getattr(g, name)
        for item in _strings(value):
            known |= words(item.replace("{x}", " ").replace("{d}", " "))
    known |= {"user", "agent"}
    return {w for t in texts for w in words(t)} - known


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def test_generated_data_covers_the_variety_asked_for():
    records = generate(600, seed=0, heldout=False)
    texts, labels = _texts(records), _labels(records)
    assert any("not a fan of" in t for t in texts)  # negation, labelled DISLIKE
    assert any(" but " in t for t in texts)  # contrast
    assert any(t.count("User:") >= 2 and "Agent:" in t for t in texts)  # multi-turn transcripts
    assert any(label["sentiment"] == "MIXED" for label in labels)
    assert any(not label["attributes"] and not label["aspects"] for label in labels)  # nothing to extract
    assert sum(t.count(".") + t.count("!") >= 2 for t in texts) > 100  # multi-sentence turns
    assert _unknown_words(texts)  # typos
    clean = Generator(0, heldout=False, typo_rate=0.0)
    assert not _unknown_words([clean.example()["messages"][1]["content"] for _ in range(600)])
    negated = [lab for t, lab in zip(texts, labels) if "not a fan of" in t.lower()]
    assert all(any(a["type"] == "DISLIKE" for a in lab["attributes"]) for lab in negated)


def test_heldout_uses_templates_training_never_uses():
    train_only = {t.split("{x}")[0].strip() for kind in (ATTRIBUTE_TEMPLATES, ASPECT_TEMPLATES)
                  for pair in kind.values() for t in pair[0]}
    heldout_markers = ["whereas", "on the other hand", "obsessed with", "blew me away", "so-so", "steer clear of"]
    train = _texts(generate(1000, seed=0, heldout=False))
    heldout = _texts(generate(300, seed=1, heldout=True))
    assert not any(m in t.lower() for t in train for m in heldout_markers)
    assert any(m in t.lower() for t in heldout for m in heldout_markers)
    assert all(c not in CONNECTORS[0] for c in CONNECTORS[1]) and train_only
    assert not set(train) & set(heldout)


def test_shipped_dataset_is_the_generators_output(tmp_path):
    main(["--out", str(tmp_path)])  # the defaults made the files in examples/data
    for name in ("extraction_train.jsonl", "extraction_heldout.jsonl"):
        assert (tmp_path / name).read_bytes() == (SHIPPED / name).read_bytes(), name
    records = read_records(SHIPPED / "extraction_heldout.jsonl")
    check_records(records, "extraction", "heldout")  # the training reader accepts it
    assert len(read_records(SHIPPED / "extraction_train.jsonl")) == 2000 and len(records) == 300


def test_messages_for_adds_few_shot_turns():
    messages = messages_for("I love chess", few_shot=2)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert messages[2]["content"] == to_json(FEW_SHOT[0][1])
    with pytest.raises(ValueError, match="few_shot"):
        messages_for("x", few_shot=9)


def test_the_natural_set_passes_its_checks_and_its_built_files_are_current(capsys):
    """Every hand-written label is schema-valid and grounded in the user's words, no text repeats, and the train
    and dev chat files are what `python -m finetune.extraction.natural build` makes of the sources."""
    import json

    from finetune.extraction import natural

    sources = sorted(natural.SOURCES.glob("*.jsonl"))
    assert natural.check(sources) == 0, capsys.readouterr().out
    records = [r for _, _, r in natural.read_sources(sources)]
    for split, path in natural.OUTPUTS.items():
        built = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        assert built == [natural.chat_record(r) for r in records if r["split"] == split], path
    assert sum(r["split"] == "train" for r in records) >= 800 and sum(r["split"] == "dev" for r in records) >= 200


def test_natural_sample_is_a_seeded_subset_of_the_training_file(tmp_path):
    from finetune.extraction.natural import OUTPUTS, sample

    train = set(OUTPUTS["train"].read_text(encoding="utf-8").splitlines())
    first, again, other = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    sample(400, 0, first), sample(400, 0, again), sample(400, 1, other)
    rows = first.read_text(encoding="utf-8").splitlines()
    assert len(rows) == len(set(rows)) == 400 and set(rows) <= train
    assert first.read_text() == again.read_text() != other.read_text()
