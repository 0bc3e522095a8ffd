"""Chat histories exported by ChatGPT and Open WebUI through the data pipeline: the branch the user saw last, the
app's own hidden and tool messages left out, ratings as feedback, images rejected with the reason.

The records follow the shapes those apps write: ChatGPT's `conversations.json` (a `mapping` of nodes linked by
`parent`/`children`, `current_node`), Open WebUI's export (`chat.history.messages` linked by `parentId`,
`currentId`, `annotation.rating`).
"""

from __future__ import annotations

import json

from finetune.data import DataPipelineConfig, prepare_dataset
from tests.finetune.data._data_helpers import read_jsonl


def _node(node_id, parent, role=None, text=None, **message):
    node = {"id": node_id, "parent": parent, "children": []}
    if role is not None:
        content = message.pop("content", {"content_type": "text", "parts": [text]})
        node["message"] = {"id": node_id, "author": {"role": role, "name": None, "metadata": {}}, "create_time": 1.7e9,
                           "content": content, "status": "finished_successfully", "end_turn": True, "weight": 1.0,
                           "metadata": message.pop("metadata", {}), "recipient": message.pop("recipient", "all")}
    return node


def chatgpt_conversation(n: int) -> dict:
    """A chat whose first reply was regenerated (the old branch stays in the tree), with ChatGPT's hidden system
    node, the custom-instructions context, and a browsing run between two parts of the last reply."""
    nodes = [
        _node("root", None),
        _node("sys", "root", "system", ""),
        _node("ctx", "sys", "user", None, content={"content_type": "user_editable_context",
                                                    "user_profile": "I ride to work", "user_instructions": "Be brief"},
              metadata={"is_visually_hidden_from_conversation": True}),
        _node("u1", "ctx", "user", f"How far can bike {n} go on one charge?"),
        _node("a1-old", "u1", "assistant", "Nobody knows.", metadata={"model_slug": "gpt-4o"}),
        _node("a1", "u1", "assistant", f"About {40 + n} km.", metadata={"model_slug": "gpt-4o"}),
        _node("u2", "a1", "user", "And the charger?"),
        _node("a2-text", "u2", "assistant", "Let me look that up.", metadata={"model_slug": "gpt-4o"}),
        _node("a2-call", "a2-text", "assistant", None, content={"content_type": "code", "language": "unknown",
                                                                 "text": "search('bike charger')"},
              recipient="browser"),
        _node("a2-tool", "a2-call", "tool", None, content={"content_type": "tether_browsing_display",
                                                            "result": "..."}),
        _node("a2", "a2-tool", "assistant", "It takes 4 hours.", metadata={"model_slug": "gpt-4o"}),
    ]
    mapping = {node["id"]: node for node in nodes}
    for node in nodes:
        if node["parent"]:
            mapping[node["parent"]]["children"].append(node["id"])
    return {"title": f"Bike {n}", "create_time": 1.7e9 + n, "update_time": 1.7e9 + n, "mapping": mapping,
            "moderation_results": [], "current_node": "a2", "plugin_ids": None, "conversation_id": f"conv-{n}",
            "conversation_template_id": None, "gizmo_id": None, "is_archived": False, "safe_urls": [],
            "default_model_slug": "gpt-4o", "id": f"conv-{n}"}


def openwebui_chat(n: int, rating: int | None = 1) -> dict:
    """A chat with a regenerated reply (two children of the first question; currentId on the newer branch), a
    rating on the kept reply and a reasoning block written into it."""
    def msg(mid, parent, role, content, children=(), **extra):
        return {"id": mid, "parentId": parent, "childrenIds": list(children), "role": role, "content": content,
                "timestamp": 1_700_000_000 + n, **extra}

    thought = ('<details type="reasoning" done="true" duration="2">\n<summary>Thought for 2 seconds</summary>\n'
               f'> The user asks about bike {n}.\n> Range is 40 km.\n</details>\n')
    messages = {
        "u1": msg("u1", None, "user", f"Range of bike {n}?", ["a1-old", "a1"]),
        "a1-old": msg("a1-old", "u1", "assistant", "No idea.", model="smollm2", annotation={"rating": -1}),
        "a1": msg("a1", "u1", "assistant", thought + f"About {40 + n} km.", ["u2"], model="smollm2",
                  annotation={"rating": rating} if rating else {}),
        "u2": msg("u2", "a1", "user", [{"type": "text", "text": "Thanks!"}], ["a2"]),
        "a2": msg("a2", "u2", "assistant", "You're welcome.", model="smollm2"),
    }
    return {"id": f"chat-{n}", "user_id": "u-1", "title": f"Bike {n}", "created_at": 1_700_000_000 + n,
            "updated_at": 1_700_000_100 + n, "share_id": None, "archived": False, "pinned": False, "meta": {},
            "folder_id": None,
            "chat": {"id": "", "title": f"Bike {n}", "models": ["smollm2"], "params": {},
                     "history": {"messages": messages, "currentId": "a2"},
                     "messages": [messages[k] for k in ("u1", "a1", "u2", "a2")], "tags": [],
                     "timestamp": 1_700_000_000_000 + n}}


def _run(src, out, **filters):
    return prepare_dataset(DataPipelineConfig.from_dict({
        "ingest": {"paths": [str(src)]}, "filter": filters,
        "split": {"train_ratio": 1.0, "validation_ratio": 0, "test_ratio": 0},
        "export": {"output_dir": str(out), "min_conversations": 0}}))


def test_a_chatgpt_export_gives_the_conversations_as_shown(tmp_path):
    image = chatgpt_conversation(9)
    image["mapping"]["u1"]["message"]["content"] = {"content_type": "multimodal_text", "parts": [
        {"content_type": "image_asset_pointer", "asset_pointer": "file-service://x"}, "What bike is this?"]}
    src = tmp_path / "conversations.json"
    src.write_text(json.dumps([chatgpt_conversation(n) for n in range(3)] + [image]))  # one JSON array, as exported
    result = _run(src, tmp_path / "out")
    rows = read_jsonl(result.splits["train"])
    assert len(rows) == 3
    assert rows[0]["messages"] == [
        {"role": "user", "content": "How far can bike 0 go on one charge?"},
        {"role": "assistant", "content": "About 40 km."},  # the regenerated reply, not the old branch's
        {"role": "user", "content": "And the charger?"},
        {"role": "assistant", "content": "Let me look that up.\n\nIt takes 4 hours."},  # around the browsing run
    ]
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert [r["reason"] for r in rejects] == ["ingest.non_text_content"]
    assert "image_asset_pointer content, which a text model cannot read" in rejects[0]["detail"]


def test_an_open_webui_export_keeps_ratings_and_reasoning_and_filters_on_them(tmp_path):
    src = tmp_path / "chat-export.json"
    src.write_text(json.dumps([openwebui_chat(n) for n in range(3)] + [openwebui_chat(3, rating=-1)]))
    result = _run(src, tmp_path / "out")
    rows = read_jsonl(result.splits["train"])
    assert len(rows) == 4
    first = next(r for r in rows if r["messages"][0]["content"] == "Range of bike 0?")
    assert first["messages"] == [
        {"role": "user", "content": "Range of bike 0?"},
        {"role": "assistant", "content": "About 40 km.",
         "reasoning_content": "The user asks about bike 0.\nRange is 40 km."},
        {"role": "user", "content": "Thanks!"},
        {"role": "assistant", "content": "You're welcome."},
    ]
    assert first["metadata"]["feedback"] == 1 and first["metadata"]["turn_feedback"] == [1, None]
    assert first["metadata"]["source"] == "openwebui" and first["metadata"]["model"] == "smollm2"
    liked = _run(src, tmp_path / "liked", metadata=["metadata.feedback == 1"])
    assert len(read_jsonl(liked.splits["train"])) == 3  # the thumbs-down chat is left out


def test_a_chat_export_that_trains_reads_as_messages(tmp_path):
    """What comes out is the messages format fine-tuning checks and tokenizes as it is."""
    from finetune.formatting import FormatOptions, tokenize_record
    from finetune.records import Record, check_records
    from tests.families import family_tokenizer

    src = tmp_path / "mixed.json"
    src.write_text(json.dumps([chatgpt_conversation(1), openwebui_chat(2)]))
    rows = read_jsonl(_run(src, tmp_path / "out").splits["train"])
    check_records([Record(r, f"train.jsonl:{i}") for i, r in enumerate(rows, 1)], "chat", "train.jsonl")
    tokenizer = family_tokenizer("qwen3")
    for row in rows:
        example = tokenize_record(tokenizer, row, FormatOptions(task="chat", max_seq_length=1024))
        assert any(label != -100 for label in example["labels"])


def test_preference_pairs_from_the_branches_of_exported_chats(tmp_path):
    """`python -m finetune.data pairs`: the regenerated-away sibling against the reply kept (Open WebUI: unless the
    ratings contradict it), KTO's rated replies, and the same rules as the chat app's log."""
    from finetune.data.__main__ import main
    from finetune.records import Record, check_records

    contradicted = openwebui_chat(1)
    contradicted["chat"]["history"]["messages"]["a1-old"]["annotation"] = {"rating": 1}  # the replaced one liked
    src = tmp_path / "chat-export.json"
    src.write_text(json.dumps([openwebui_chat(0), contradicted]))
    chatgpt = tmp_path / "conversations.json"
    chatgpt.write_text(json.dumps([chatgpt_conversation(5)]))
    assert main(["pairs", "--input", str(src), "--input", str(chatgpt), "--output", str(tmp_path / "dpo.jsonl")]) == 0
    rows = read_jsonl(tmp_path / "dpo.jsonl")
    assert rows == [
        {"prompt": [{"role": "user", "content": "Range of bike 0?"}],
         "chosen": [{"role": "assistant", "content": "About 40 km.",
                     "reasoning_content": "The user asks about bike 0.\nRange is 40 km."}],
         "rejected": [{"role": "assistant", "content": "No idea."}]},
        {"prompt": [{"role": "user", "content": "How far can bike 5 go on one charge?"}],
         "chosen": [{"role": "assistant", "content": "About 45 km."}],
         "rejected": [{"role": "assistant", "content": "Nobody knows."}]},
    ]
    check_records([Record(r, f"dpo.jsonl:{i}") for i, r in enumerate(rows, 1)], "dpo", "dpo.jsonl")
    assert main(["pairs", "--input", str(src), "--format", "kto", "--output", str(tmp_path / "kto.jsonl")]) == 0
    rated = [(r["completion"][0]["content"], r["label"]) for r in read_jsonl(tmp_path / "kto.jsonl")]
    assert rated == [("About 40 km.", True), ("No idea.", False), ("About 41 km.", True), ("No idea.", True)]


def test_a_chat_that_is_not_an_export_is_named_and_skipped(tmp_path):
    from finetune.data.chat_exports import export_pairs

    src = tmp_path / "mixed.jsonl"
    src.write_text(json.dumps(openwebui_chat(0)) + "\n" + json.dumps({"messages": []}) + "\n{broken\n")
    counts = export_pairs([str(src)], str(tmp_path / "dpo.jsonl"), "dpo")
    assert counts["chats_read"] == 3 and counts["rows_written"] == 1
    assert counts["chats_skipped"][0] == (f"{src}:2: neither a ChatGPT conversation (mapping, current_node), an "
                                          f"Open WebUI chat (chat.history) nor a Claude conversation (chat_messages)")
    assert counts["chats_skipped"][1].startswith(f"{src}:3: invalid JSON")


ROOT = "00000000-0000-4000-8000-000000000000"  # what Claude's export names as a first message's parent


def claude_conversation(n: int, leaf: bool = True) -> dict:
    """claude.ai's export: a first reply regenerated (both stay in chat_messages), a text file whose extracted text
    Claude read, thinking, a web search between two parts of the last reply, a citation splitting a paragraph."""
    def msg(uuid, parent, sender, content, minute, **extra):
        blocks = [{"type": "text", "text": content, "citations": []}] if isinstance(content, str) else content
        return {"uuid": uuid, "text": "", "content": blocks, "sender": sender, "index": 0,
                "created_at": f"2026-11-0{n + 1}T10:{minute:02d}:00.000000Z",
                "updated_at": f"2026-11-0{n + 1}T10:{minute:02d}:00.000000Z", "truncated": False,
                "attachments": extra.pop("attachments", []), "files": extra.pop("files", []),
                "parent_message_uuid": parent, **extra}

    chat = [
        msg("h1", ROOT, "human", f"How far can bike {n} go on one charge?", 0,
            attachments=[{"file_name": "spec.txt", "file_size": 16, "file_type": "txt",
                          "extracted_content": "Battery: 500 Wh"}]),
        msg("a1-old", "h1", "assistant", "Nobody knows.", 1),
        msg("a1", "h1", "assistant", [{"type": "thinking", "thinking": "The spec says 500 Wh."},
                                      {"type": "text", "text": f"About {40 + n} km"},
                                      {"type": "text", "text": " on flat roads.", "citations": [{"url": "x"}]}], 2),
        msg("h2", "a1", "human", "And the charger?", 3),
        msg("a2", "h2", "assistant", [{"type": "text", "text": "Let me check."},
                                      {"type": "tool_use", "name": "web_search", "input": {"query": "charger"}},
                                      {"type": "tool_result", "name": "web_search", "content": []},
                                      {"type": "text", "text": "It takes 4 hours."}], 4),
    ]
    record = {"uuid": f"conv-{n}", "name": f"Bike {n}", "summary": "", "created_at": f"2026-11-0{n + 1}T10:00:00Z",
              "updated_at": f"2026-11-0{n + 1}T10:04:00Z", "account": {"uuid": "acct"}, "chat_messages": chat}
    if leaf:
        record["current_leaf_message_uuid"] = "a2"
    return record


def test_a_claude_export_gives_the_conversations_as_shown(tmp_path):
    image = claude_conversation(3)
    image["chat_messages"][3]["files"] = [{"file_name": "charger.jpg"}]
    src = tmp_path / "conversations.json"
    src.write_text(json.dumps([claude_conversation(0), claude_conversation(1, leaf=False), image]))
    rows = read_jsonl(_run(src, tmp_path / "out").splits["train"])
    assert len(rows) == 2
    first = next(r for r in rows if r["metadata"]["conversation_id"] == "conv-0")
    assert first["messages"] == [
        {"role": "user", "content": '<file name="spec.txt">\nBattery: 500 Wh\n</file>\n\n'
                                    "How far can bike 0 go on one charge?"},
        {"role": "assistant", "content": "About 40 km on flat roads.",  # the regenerated reply, its citation joined
         "reasoning_content": "The spec says 500 Wh."},
        {"role": "user", "content": "And the charger?"},
        {"role": "assistant", "content": "Let me check.\n\nIt takes 4 hours."},  # around the web search
    ]
    assert first["metadata"]["source"] == "claude" and first["metadata"]["title"] == "Bike 0"
    second = next(r for r in rows if r["metadata"]["conversation_id"] == "conv-1")  # no current leaf: the newest
    assert second["messages"][1]["content"] == "About 41 km on flat roads."
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert [r["reason"] for r in rejects] == ["ingest.non_text_content"]
    assert "charger.jpg" in rejects[0]["detail"] and "a text model cannot read it" in rejects[0]["detail"]


def test_claude_branches_give_pairs_and_what_is_not_text_is_named(tmp_path):
    from finetune.data.__main__ import main

    src = tmp_path / "conversations.json"
    odd = claude_conversation(1)
    odd["chat_messages"][4]["content"].append({"type": "voice_note", "data": "..."})
    robot = claude_conversation(2, leaf=False)  # its newest message is the one shown
    robot["chat_messages"].append({"sender": "robot", "uuid": "r1", "parent_message_uuid": "a2", "text": "beep",
                                   "created_at": "2026-11-03T11:00:00Z"})
    src.write_text(json.dumps([claude_conversation(0), odd, robot]))
    assert main(["pairs", "--input", str(src), "--output", str(tmp_path / "dpo.jsonl")]) == 0
    pairs = read_jsonl(tmp_path / "dpo.jsonl")
    assert pairs[0] == {
        "prompt": [{"role": "user", "content": '<file name="spec.txt">\nBattery: 500 Wh\n</file>\n\n'
                                               "How far can bike 0 go on one charge?"}],
        "chosen": [{"role": "assistant", "content": "About 40 km on flat roads.",
                    "reasoning_content": "The spec says 500 Wh."}],
        "rejected": [{"role": "assistant", "content": "Nobody knows."}]}
    assert len(pairs) == 3  # the regenerated first reply of each
    _run(src, tmp_path / "out")
    rejects = [json.loads(x) for x in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert [x["reason"] for x in rejects] == ["ingest.non_text_content", "ingest.bad_role"]
    assert "holds a voice_note content block, which a text model cannot read" in rejects[0]["detail"]
    assert "sender is 'robot'; expected human or assistant" in rejects[1]["detail"]


def test_a_chatgpt_reasoning_model_s_thoughts_become_reasoning_content(tmp_path):
    """o1/o3-style nodes between the question and the reply: `thoughts` (kept, for the reply after them) and the
    "Thought for 4s" line (`reasoning_recap`, the app's own: left out)."""
    record = chatgpt_conversation(7)
    mapping = record["mapping"]
    mapping["th"] = _node("th", "u2", "assistant", None, content={
        "content_type": "thoughts", "source_analysis_msg_id": "x",
        "thoughts": [{"summary": "Charger", "content": "Chargers vary by model.", "chunks": [], "finished": True},
                     {"summary": "Manual", "content": "", "chunks": [], "finished": True}]})
    mapping["recap"] = _node("recap", "th", "assistant", None,
                             content={"content_type": "reasoning_recap", "content": "Thought for 4s"})
    mapping["u2"]["children"], mapping["th"]["children"], mapping["recap"]["children"] = ["th"], ["recap"], ["a2-text"]
    mapping["a2-text"]["parent"] = "recap"
    src = tmp_path / "conversations.json"
    src.write_text(json.dumps([record]))
    (row,) = read_jsonl(_run(src, tmp_path / "out").splits["train"])
    assert row["messages"][2:] == [
        {"role": "user", "content": "And the charger?"},
        {"role": "assistant", "content": "Let me look that up.\n\nIt takes 4 hours.",
         "reasoning_content": "Chargers vary by model.\n\nManual"},  # a thought without content: its summary
    ]


def test_a_reasoning_reply_regenerated_under_its_own_thoughts_gives_a_pair(tmp_path):
    """ChatGPT hangs each regenerated reply of a reasoning model under its own hidden thoughts node: the replies
    are not siblings, their thoughts are; the pair is found through them."""
    from finetune.data.chat_exports import export_pairs

    record = chatgpt_conversation(8)
    mapping = record["mapping"]
    for name, parent, child, reply in (("th-old", "u2", "a2-old", "No charger needed."), ("th", "u2", "a2-text", None)):
        mapping[name] = _node(name, parent, "assistant", None, content={
            "content_type": "thoughts", "thoughts": [{"summary": "s", "content": f"Thinking {name}."}]})
        mapping[name]["children"] = [child]
        if reply:
            mapping[child] = _node(child, name, "assistant", reply)
    mapping["u2"]["children"] = ["th-old", "th"]
    mapping["a2-text"]["parent"] = "th"
    src = tmp_path / "conversations.json"
    src.write_text(json.dumps([record]))
    counts = export_pairs([str(src)], str(tmp_path / "dpo.jsonl"), "dpo")
    assert counts["rows_written"] == 2
    second = read_jsonl(tmp_path / "dpo.jsonl")[1]
    assert second["prompt"][-1] == {"role": "user", "content": "And the charger?"}
    assert second["chosen"] == [{"role": "assistant", "content": "Let me look that up.\n\nIt takes 4 hours."}]
    assert second["rejected"] == [{"role": "assistant", "content": "No charger needed."}]
