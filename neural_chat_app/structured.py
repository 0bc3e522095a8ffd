"""`response_format`: force a reply to be JSON matching a schema (constrained decoding).

Accepted forms, as in OpenAI's API plus a bare schema:
- a JSON Schema object, e.g. `{"type": "object", "properties": {...}}`;
- `{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}`;
- `{"type": "json_object"}`: any JSON object;
- `{"type": "text"}` or None: no constraint.
The torch backend enforces it with xgrammar (finetune.evaluate.constrained), the OpenVINO backend with
openvino-genai's StructuredOutputConfig.
"""

from __future__ import annotations

OPENAI_TYPES = ("text", "json_object", "json_schema")


def json_schema_of(response_format) -> dict | None:
    """The JSON Schema a response_format asks for, or None for free text. Raises ValueError when malformed."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise ValueError(f"response_format must be a JSON Schema object or OpenAI's {{'type': 'json_schema', "
                         f"'json_schema': {{'schema': ...}}}}, got {type(response_format).__name__}")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise ValueError("response_format of type 'json_schema' needs json_schema.schema, a JSON Schema object")
    else:
        schema = response_format
    _check(schema)
    return schema


def _check(schema: dict) -> None:
    try:
        import jsonschema  # noqa: F401
    except ImportError:  # optional: the grammar compiler still rejects what it cannot handle
        return
    from finetune.extraction import check_schema

    check_schema(schema, where="response_format")  # SchemaError is a ValueError: the API answers 400
