"""A conversation that calls tools, through the server and its log, comes back out for fine-tuning whole: the
reply's calls, the tool's result before the reply that read it, and the functions offered, from the export and from
the data pipeline reading the log itself.

pytest tests/neural_chat_app/test_export_log_tools.py
"""

from __future__ import annotations

import json

import openai

from finetune.records import Record, check_records
from neural_chat_app.export_log import export_jsonl
from tests.neural_chat_app.test_server_openai_fields import WEATHER


def test_a_tool_conversation_is_exported_with_its_calls_results_and_tools(make_server, tmp_path):
    from finetune.data.chatlog import read_chatlog

    server = make_server()
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    ask = {"role": "user", "content": "Weather in Paris?"}
    # a named function: decoding is held to one call of it, which the random tiny model finishes within 200 tokens
    # (with "required", a list of calls, it ran past 60 under fp32 numerics)
    named = {"type": "function", "function": {"name": "get_weather"}}
    first = client.chat.completions.create(model="default", messages=[ask], tools=[WEATHER], tool_choice=named,
                                           max_tokens=200, temperature=0, extra_body={"conversation_id": "trip"})
    call = first.choices[0].message.tool_calls[0]
    called = {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]}
    result = {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'}
    second = client.chat.completions.create(model="default", messages=[ask, called, result], tools=[WEATHER],
                                            tool_choice="none", max_tokens=4, temperature=0,
                                            extra_body={"conversation_id": "trip"})
    counts = export_jsonl(server.state.chatlog.path, tmp_path / "out.jsonl")
    assert counts["conversations_written"] == 1
    record = json.loads((tmp_path / "out.jsonl").read_text())
    messages = record["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"]
    assert messages[1]["tool_calls"][0]["id"] == call.id
    assert json.loads(messages[1]["tool_calls"][0]["function"]["arguments"]) == json.loads(call.function.arguments)
    assert messages[2] == {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'}
    assert messages[3]["content"] == second.choices[0].message.content
    assert [t["function"]["name"] for t in record["tools"]] == ["get_weather"]
    check_records([Record(record, "out.jsonl:1")], "chat", "out.jsonl")  # fine-tuning takes it as it is
    # the data pipeline reading the log itself gets the same conversation
    (conversation,) = list(read_chatlog(server.state.chatlog.path))
    assert conversation.messages == messages and conversation.tools == record["tools"]
