"""The natural extraction set: hand-written utterances in the style of real conversations, labelled in our schema.

Source files (`examples/data/extraction_natural/*.jsonl`) hold one labelled utterance a line:

    {"text": "...", "output": {"attributes": [...], "aspects": [...], "sentiment": "..."}, "split": "train"|"dev"}

`check` verifies every label (schema-valid, and every attribute value and aspect grounded in its text: a span of it
or a close paraphrase, finetune.extraction.matching); `build` writes the chat records the fine-tune and the
evaluation read (`extraction_natural_train.jsonl`, `extraction_natural_dev.jsonl`). Guidelines:
examples/data/extraction.md.

    python -m finetune.extraction.natural check examples/data/extraction_natural/*.jsonl
    python -m finetune.extraction.natural build
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from finetune.extraction import load_schema, messages_for, to_json
from finetune.extraction.matching import grounded, phrase_words

REPO = Path(__file__).resolve().parents[2]
SOURCES = REPO / "examples" / "data" / "extraction_natural"
OUTPUTS = {"train": REPO / "examples" / "data" / "extraction_natural_train.jsonl",
           "dev": REPO / "examples" / "data" / "extraction_natural_dev.jsonl"}
# Aspects a reader names although the text only implies them ("it took three weeks to arrive" judges the delivery).
IMPLICIT_ASPECTS = frozenset({
    "delivery", "shipping", "price", "value", "wait", "service", "staff", "food", "quality", "size", "fit", "app",
    "support", "noise", "location", "cleanliness", "speed", "battery", "sound", "comfort", "taste", "portion",
})


def check_record(record: dict, validator=None) -> list[str]:
    """What is wrong with one source record; empty when it is usable."""
    problems = []
    text, output = record.get("text"), record.get("output")
    if not isinstance(text, str) or not text.strip():
        return ["'text' must be a non-empty string"]
    if record.get("split") not in ("train", "dev"):
        problems.append(f"'split' must be 'train' or 'dev', got {record.get('split')!r}")
    if validator is None:
        import jsonschema

        validator = jsonschema.Draft202012Validator(load_schema())
    errors = sorted(validator.iter_errors(output), key=lambda e: list(e.absolute_path))
    if errors:
        return [*problems, *(f"label: {'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
                             for e in errors[:3])]
    user_text = user_lines(text)
    for a in output["attributes"]:
        if not grounded(a["value"], user_text):
            problems.append(f"attribute value {a['value']!r} is not a span or close paraphrase of the user's text")
    for a in output["aspects"]:
        if a["aspect"].lower() not in IMPLICIT_ASPECTS and not grounded(a["aspect"], user_text):
            problems.append(f"aspect {a['aspect']!r} is not in the user's text nor a common implied aspect")
    return problems


def user_lines(text: str) -> str:
    """The user's part of a transcript ("Agent: ...\\nUser: ..."); the whole text when it has no speaker labels."""
    lines = text.splitlines()
    if not any(line.startswith(("Agent:", "User:")) for line in lines):
        return text
    return "\n".join(line.removeprefix("User:") for line in lines if not line.startswith("Agent:"))


def read_sources(paths: list[Path]) -> list[tuple[str, int, dict]]:
    records = []
    for path in paths:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    records.append((str(path), number, json.loads(line)))
                except json.JSONDecodeError as err:
                    records.append((str(path), number, {"text": None, "error": str(err)}))
    return records


def chat_record(record: dict) -> dict:
    return {"messages": [*messages_for(record["text"]), {"role": "assistant", "content": to_json(record["output"])}]}


def check(paths: list[Path]) -> int:
    import jsonschema

    validator = jsonschema.Draft202012Validator(load_schema())
    records = read_sources(paths)
    bad = 0
    seen: dict[str, str] = {}
    for where, number, record in records:
        problems = check_record(record, validator) if "error" not in record else [f"not JSON: {record['error']}"]
        key = " ".join(phrase_words(record.get("text") or ""))
        if key and key in seen:
            problems.append(f"same text as {seen[key]}")
        seen.setdefault(key, f"{where}:{number}")
        for problem in problems:
            print(f"{where}:{number}: {problem}")
        bad += bool(problems)
    print(f"{len(records)} records, {bad} with problems", file=sys.stderr)
    return 1 if bad else 0


def build(paths: list[Path]) -> dict[str, int]:
    """Write the train and dev chat files from the sources (every record must pass `check`)."""
    if check(paths):
        raise SystemExit("fix the records above first")
    out = {split: [] for split in OUTPUTS}
    for _, _, record in read_sources(paths):
        out[record["split"]].append(chat_record(record))
    for split, path in OUTPUTS.items():
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out[split]), encoding="utf-8")
    return {split: len(rows) for split, rows in out.items()}


def sample(size: int, seed: int, output: Path) -> int:
    """A seeded random subset of the built training file: the learning curve's smaller training sets."""
    import random

    rows = OUTPUTS["train"].read_text(encoding="utf-8").splitlines()
    if not 0 < size <= len(rows):
        raise SystemExit(f"--size must be between 1 and {len(rows)} (the training file's records)")
    random.Random(seed).shuffle(rows)
    output.write_text("".join(r + "\n" for r in rows[:size]), encoding="utf-8")
    return size


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m finetune.extraction.natural", description=__doc__.split("\n")[0])
    p.add_argument("command", choices=["check", "build", "sample"])
    p.add_argument("files", nargs="*", type=Path, help="source files (default: examples/data/extraction_natural/)")
    p.add_argument("--size", type=int, default=400, help="sample: how many training records")
    p.add_argument("--seed", type=int, default=0, help="sample: the shuffle's seed")
    p.add_argument("--output", type=Path, default=Path("extraction_natural_train_sample.jsonl"), help="sample: file")
    args = p.parse_args(argv)
    if args.command == "sample":
        print(f"{sample(args.size, args.seed, args.output)} records -> {args.output}")
        return 0
    paths = args.files or sorted(SOURCES.glob("*.jsonl"))
    if args.command == "check":
        return check(paths)
    print(build(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
