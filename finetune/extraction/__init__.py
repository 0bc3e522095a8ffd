"""The attribute-and-sentiment extraction task: its JSON Schema, its instruction, few-shot examples, and scoring.

A reply is one JSON object (`finetune/schemas/extraction.schema.json`):

    {"attributes": [{"type": "INTEREST", "value": "hiking"}],
     "aspects": [{"aspect": "delivery", "sentiment": "NEGATIVE"}],
     "sentiment": "MIXED"}

for "I love hiking, but the delivery was late." Attribute types are INTEREST, PREFERENCE, DISLIKE and BEHAVIOR;
aspect sentiments POSITIVE, NEGATIVE and NEUTRAL; the overall sentiment adds MIXED. Generate training data with
`python -m finetune.extraction.generate`; fine-tune with `python -m finetune configs/extraction.yaml`.
"""

from __future__ import annotations

import json
from pathlib import Path

from finetune.errors import UserError

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "extraction.schema.json"
ATTRIBUTE_TYPES = ("INTEREST", "PREFERENCE", "DISLIKE", "BEHAVIOR")
SENTIMENTS = ("POSITIVE", "NEGATIVE", "NEUTRAL")
OVERALL_SENTIMENTS = (*SENTIMENTS, "MIXED")

SYSTEM_PROMPT = (
    "Extract what the user says about themselves and how they feel, as one JSON object: "
    '{"attributes": [{"type": INTEREST|PREFERENCE|DISLIKE|BEHAVIOR, "value": phrase}], '
    '"aspects": [{"aspect": noun, "sentiment": POSITIVE|NEGATIVE|NEUTRAL}], '
    '"sentiment": POSITIVE|NEGATIVE|NEUTRAL|MIXED}. Ignore what the agent says.'
)

# Hand-written, and phrased unlike both generated sets, so they leak no template into the held-out score.
FEW_SHOT: list[tuple[str, dict]] = [
    (
        "My weekends are all about fishing. The hotel pool was lovely but the breakfast was cold.",
        {"attributes": [{"type": "INTEREST", "value": "fishing"}],
         "aspects": [{"aspect": "pool", "sentiment": "POSITIVE"}, {"aspect": "breakfast", "sentiment": "NEGATIVE"}],
         "sentiment": "MIXED"},
    ),
    (
        "Agent: Anything else?\nUser: I'd pick tea over coffee any day, and I walk to work. I'm not into sushi.",
        {"attributes": [{"type": "PREFERENCE", "value": "tea"}, {"type": "BEHAVIOR", "value": "walk to work"},
                        {"type": "DISLIKE", "value": "sushi"}],
         "aspects": [], "sentiment": "MIXED"},
    ),
    (
        "The screen is fine, nothing more.",
        {"attributes": [], "aspects": [{"aspect": "screen", "sentiment": "NEUTRAL"}], "sentiment": "NEUTRAL"},
    ),
]


class SchemaError(UserError):
    """A schema file that is not valid JSON or not a valid JSON Schema."""


def to_json(obj: dict) -> str:
    """The one serialization used for targets, so training, constrained decoding and scoring agree."""
    return json.dumps(obj, ensure_ascii=False)


def load_schema(path: str | Path | None = None) -> dict:
    """Read a JSON Schema file (default: the extraction schema) and check it is a valid JSON Schema."""
    path = Path(path) if path is not None else SCHEMA_PATH
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"Schema file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise SchemaError(f"{path}:{e.lineno}: the schema is not valid JSON ({e.msg}, column {e.colno}).") from None
    check_schema(schema, str(path))
    return schema


def check_schema(schema, where: str = "schema") -> None:
    import jsonschema

    if not isinstance(schema, dict):
        raise SchemaError(f"{where}: a JSON Schema must be a JSON object, got {type(schema).__name__}.")
    validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        validator.check_schema(schema)
    except jsonschema.SchemaError as e:
        at = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise SchemaError(f"{where}: not a valid JSON Schema at {at}: {e.message}") from None


def messages_for(text: str, few_shot: int = 0, system_prompt: str = SYSTEM_PROMPT) -> list[dict]:
    """The chat messages that ask for the extraction of `text`, with `few_shot` worked examples first."""
    if not 0 <= few_shot <= len(FEW_SHOT):
        raise ValueError(f"few_shot must be in [0, {len(FEW_SHOT)}], got {few_shot}")
    messages = [{"role": "system", "content": system_prompt}]
    for example, answer in FEW_SHOT[:few_shot]:
        messages += [{"role": "user", "content": example}, {"role": "assistant", "content": to_json(answer)}]
    return [*messages, {"role": "user", "content": text}]
