"""Conversations with tool calls and thinking models' reasoning through the data pipeline: kept whole, checked,
redacted and deduplicated with their calls, written beside their tools, and trainable as they come out."""

from __future__ import annotations

import json

from finetune.data import DataPipelineConfig, prepare_dataset
from finetune.records import PAIR
from tests.finetune.data._data_helpers import distinct_chats, read_jsonl, write_jsonl

TOOLS = [{"type": "function", "function": {"name": "send_mail", "description": "Send an email", "parameters": {
    "type": "object", "properties": {"to": {"type": "string"}, "body": {"type": "string"}}}}}]


def _tool_chat(n: int, body: str = "Report {n} is ready") -> dict:
    arguments = json.dumps({"to": "ann@example.org", "body": body.format(n=n)})
    call = {"id": f"call_{n}", "type": "function", "function": {"name": "send_mail", "arguments": arguments}}
    return {"messages": [
        {"role": "user", "content": f"Mail report number {n} to Ann, please."},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": f"call_{n}", "content": f"sent, message id {n * 17}"},
        {"role": "assistant", "content": f"Done: report {n} went out as message {n * 17}.",
         "reasoning_content": f"The mail tool said message {n * 17}."},
    ], "tools": json.dumps(TOOLS)}  # as a string, the form a dataset on the hub keeps it in


def _run(src, out, fmt="messages"):
    return prepare_dataset(DataPipelineConfig.from_dict({
        "ingest": {"paths": [str(src)]}, "clean": {"redact": ["email"]},
        "split": {"train_ratio": 1.0, "validation_ratio": 0, "test_ratio": 0},
        "export": {"output_dir": str(out), "min_conversations": 0, "format_type": fmt}}))


def test_tool_calls_results_tools_and_reasoning_come_out_whole_and_train(tmp_path):
    from finetune.formatting import FormatOptions, tokenize_record
    from finetune.records import Record, check_records
    from tests.families import family_tokenizer

    records = [_tool_chat(n) for n in range(4)]
    records.append(_tool_chat(0))  # the same conversation again: an exact duplicate
    records.append(_tool_chat(1, body="Report {n} is late"))  # other arguments: not a duplicate
    orphan = {"messages": [{"role": "user", "content": "Hi"}, {"role": "tool", "content": "x"},
                           {"role": "assistant", "content": "Hello."}]}
    records.append(orphan)
    src = write_jsonl(tmp_path / "in.jsonl", records + distinct_chats(3))
    result = _run(src, tmp_path / "out")
    rows = read_jsonl(result.splits["train"])
    with_tools = [r for r in rows if "tools" in r]
    assert len(with_tools) == 5 and all(r["tools"] == TOOLS for r in with_tools)
    first = with_tools[0]["messages"]
    assert [m["role"] for m in first] == ["user", "assistant", "tool", "assistant"]
    arguments = json.loads(first[1]["tool_calls"][0]["function"]["arguments"])
    assert arguments["to"] == "<EMAIL>" and arguments["body"].startswith("Report")  # redacted inside the call
    assert first[2]["tool_call_id"].startswith("call_") and first[3]["reasoning_content"].startswith("The mail tool")
    rejects = {r["reason"]: r for r in read_jsonl(result.rejects)}
    assert set(rejects) == {"dedup.exact", "ingest.bad_tool_call"}
    assert "is a tool result with no assistant tool_calls before it" in rejects["ingest.bad_tool_call"]["detail"]
    # what comes out is what fine-tuning reads: checked, and rendered with the tools by a family's template
    check_records([Record(r, "train.jsonl") for r in rows], "chat", "train.jsonl")
    tokenizer = family_tokenizer("qwen2")
    example = tokenize_record(tokenizer, with_tools[0], FormatOptions("chat", 2048))
    text = tokenizer.decode(example["input_ids"])
    assert "Send an email" in text and '"name": "send_mail"' in text and "<tool_response>" in text


def test_formats_without_a_place_for_tool_calls_reject_them_by_name(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [_tool_chat(1), *distinct_chats(2)])
    result = _run(src, tmp_path / "out", fmt="chatml")
    rejects = read_jsonl(result.rejects)
    assert [r["reason"] for r in rejects] == ["ingest.tool_calls"]
    assert "export.format_type=chatml has no place for" in rejects[0]["detail"]
    assert len(read_jsonl(result.splits["train"])) == 2


def test_llama_factory_sharegpt_tool_use_becomes_openai_messages(tmp_path):
    """LLaMA-Factory's ShareGPT for tool use (glaive_toolcall and the like): `function_call` and `observation`
    turns and `tools` as a JSON string of plain definitions."""
    plain = [t["function"] for t in TOOLS]
    record = {"conversations": [
        {"from": "human", "value": "Mail the report to Ann."},
        {"from": "function_call", "value": json.dumps({"name": "send_mail", "arguments": {"to": "Ann", "body": "r"}})},
        {"from": "observation", "value": "sent"},
        {"from": "gpt", "value": "It is sent."},
    ], "tools": json.dumps(plain)}
    bad = {"conversations": [{"from": "human", "value": "x"}, {"from": "function_call", "value": "not json"},
                             {"from": "gpt", "value": "y"}]}
    src = write_jsonl(tmp_path / "in.jsonl", [record, bad, *distinct_chats(2)])
    result = _run(src, tmp_path / "out")
    (row,) = [r for r in read_jsonl(result.splits["train"]) if "tools" in r]
    assert row["tools"] == TOOLS
    assert [m["role"] for m in row["messages"]] == ["user", "assistant", "tool", "assistant"]
    call = row["messages"][1]["tool_calls"][0]
    assert call["function"]["name"] == "send_mail" and json.loads(call["function"]["arguments"])["to"] == "Ann"
    assert row["messages"][2]["tool_call_id"] == call["id"]
    (reject,) = read_jsonl(result.rejects)
    assert reject["reason"] == "ingest.bad_tool_call" and "is not the JSON of a call" in reject["detail"]


def _mail_pair(n: int, to: str = "ann@example.org") -> dict:
    """Which report to mail: the kept reply calls the tool for report n, the replaced one for another."""
    def reply(report, call_id):
        arguments = json.dumps({"to": to, "body": f"Report {report}"})
        return [{"role": "assistant", "content": "", "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": "send_mail", "arguments": arguments}}]}]

    return {"prompt": [{"role": "user", "content": f"Mail report {n} to Ann."}], "chosen": reply(n, "c1"),
            "rejected": reply(n + 100, "c0"), "tools": TOOLS}


def test_preference_pairs_of_tool_calls_come_out_with_their_calls_and_tools(tmp_path):
    """export-log's pairs of calls: not empty replies, the arguments redacted, the tools written beside them, a pair
    calling with the same arguments twice rejected as the same reply, and a call of a function the record does not
    offer rejected by name."""
    from finetune.records import Record, check_records

    same = _mail_pair(7)
    same["rejected"] = same["chosen"]
    unknown = _mail_pair(8)
    unknown["chosen"][0]["tool_calls"][0]["function"]["name"] = "fax"
    src = write_jsonl(tmp_path / "in.jsonl", [_mail_pair(n) for n in range(4)] + [same, unknown])
    result = _run(src, tmp_path / "out", fmt="preference")
    rows = read_jsonl(result.splits["train"])
    assert len(rows) == 4 and all(r["tools"] == TOOLS for r in rows)
    for row in rows:
        chosen, rejected = (json.loads(row[k][0]["tool_calls"][0]["function"]["arguments"]) for k in PAIR)
        assert chosen["to"] == rejected["to"] != "ann@example.org"  # redacted as any text
        assert chosen["body"] != rejected["body"] and row["chosen"][0]["content"] == ""
    check_records([Record(r, f"train.jsonl:{i}") for i, r in enumerate(rows, 1)], "dpo", "train.jsonl")
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    reasons = sorted(r["reason"] for r in rejects)
    assert reasons == ["ingest.bad_tool_call", "ingest.same_replies"], rejects
    assert any("'fax', which the record's tools do not define" in r["detail"] for r in rejects)
