"""Chat histories that other chat apps export, read as conversations: ChatGPT's `conversations.json` (Settings >
Data controls > Export data), Open WebUI's chat export (Settings > Chats > Export, or one chat's "Export chat
(.json)") and Claude's `conversations.json`. Each is a JSON array of conversations, each a tree of messages in which
a regenerated or edited turn is a branch; what a user saw last is one path through it, and that path is the
conversation read here:
- ChatGPT: from `current_node` up its `parent` links. Hidden messages (the custom-instructions context) and
  ChatGPT's own tool traffic (browsing, code runs: an assistant message addressed to a tool, and the tool's reply)
  are not part of the chat as shown and are left out; the replies around them become one. A reasoning model's
  thoughts (`thoughts` nodes, as ChatGPT shows them) become the next reply's `reasoning_content`. A message with an
  image or a file has content the models here cannot read: the conversation is rejected with that reason.
- Open WebUI: from `chat.history.currentId` up its `parentId` links (older exports: `chat.messages`). Thumbs up
  and down (`annotation.rating`) become `feedback` and `turn_feedback`, as the chat app's own log has them, so a
  `filter.metadata` rule such as `metadata.feedback != -1` works on either; a reasoning model's thinking, which
  Open WebUI writes into the reply as a `<details type="reasoning">` block, becomes `reasoning_content`, and its
  tool-call blocks are left out of the text.
- Claude (claude.ai Settings > Privacy > Export data, `conversations.json`): `chat_messages` linked by
  `parent_message_uuid` (a root's parent is a sentinel uuid that names no message), from
  `current_leaf_message_uuid`, or where an export has none the newest leaf by `created_at`; older exports without
  parent links are read in order. A reply's `thinking` blocks become `reasoning_content`; Claude's own tool runs
  (`tool_use`/`tool_result` blocks: web search, artifacts, analysis) are left out like ChatGPT's. A file whose text
  Claude extracted (`attachments[].extracted_content`) is what the model read with the message, so it is kept,
  before the message's text, as `<file name="...">...</file>`; an image or other file without extracted text
  (`files`) rejects the conversation with that reason.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from finetune.data.records import Conversation


class ExportFormatError(ValueError):
    """What is wrong with an exported chat (the caller turns it into a reject with `code`)."""

    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code, self.detail = code, detail


def path_to(nodes: dict, current: Any, parent_key: str) -> list[dict]:
    """The nodes from the root down to `current`, following `parent_key` links."""
    path, seen = [], set()
    while current is not None and current in nodes:
        if current in seen:
            raise ExportFormatError("cycle", f"the message tree loops at {current!r}")
        seen.add(current)
        node = nodes[current]
        if not isinstance(node, dict):
            raise ExportFormatError("wrong_type", f"message {current!r} is not an object")
        path.append(node)
        current = node.get(parent_key)
    return path[::-1]


def _joined(messages: list[dict]) -> list[dict]:
    """Consecutive messages of one role as one (the parts of a reply split around a hidden tool run), their
    reasoning too."""
    out: list[dict] = []
    for m in messages:
        if out and out[-1]["role"] == m["role"]:
            before = out[-1]
            merged = {**before, "content": "\n\n".join(x["content"] for x in (before, m) if x["content"])}
            thoughts = [x["reasoning_content"] for x in (before, m) if x.get("reasoning_content")]
            if thoughts:
                merged["reasoning_content"] = "\n\n".join(thoughts)
            out[-1] = merged
        else:
            out.append(m)
    return out


# --- ChatGPT --------------------------------------------------------------------------------------------------

def chatgpt_conversation(record: dict, origin: str) -> Conversation:
    mapping = record.get("mapping")
    if not isinstance(mapping, dict):
        raise ExportFormatError("wrong_type", "mapping must be an object of message nodes")
    messages, models, thoughts = [], [], []
    for node in path_to(mapping, record.get("current_node"), "parent"):
        message, role = _chatgpt_shown(node)
        if role is None:
            continue
        meta = message.get("metadata") or {}
        content = message.get("content") or {}
        if role == "assistant" and content.get("content_type") == "thoughts":
            thoughts += _chatgpt_thoughts(content)  # the reply that follows thought them
            continue
        text = _chatgpt_text(content, node.get("id"))
        if text is None or not text.strip():
            continue
        messages.append({"role": role, "content": text})
        if role == "assistant" and thoughts:
            messages[-1]["reasoning_content"] = "\n\n".join(thoughts)
            thoughts = []
        if role == "assistant" and meta.get("model_slug"):
            models.append(meta["model_slug"])
    if not any(m["role"] == "assistant" for m in messages):
        raise ExportFormatError("no_reply", "the conversation has no reply from the assistant on its current branch")
    metadata = {"source": "chatgpt", "title": record.get("title"), "created_at": record.get("create_time"),
                "conversation_id": record.get("conversation_id") or record.get("id"),
                "model": models[-1] if models else record.get("default_model_slug")}
    return Conversation(_joined(messages), metadata, origin, "chatgpt", record)


def _chatgpt_shown(node: dict) -> tuple[dict, str | None]:
    """(the node's message, its role), the role None where the chat as shown has no such message: the tree's root,
    a hidden message, ChatGPT's own tool traffic."""
    message = node.get("message")
    if not isinstance(message, dict):
        return {}, None
    role = (message.get("author") or {}).get("role")
    if role not in ("system", "user", "assistant") or message.get("recipient", "all") != "all" \
            or (message.get("metadata") or {}).get("is_visually_hidden_from_conversation"):
        return message, None
    return message, role


def _chatgpt_thoughts(content: dict) -> list[str]:
    """A reasoning model's thoughts as ChatGPT shows them (`thoughts`: each a summary and its content); the
    "Thought for 38s" line after them (`reasoning_recap`) is the app's, not the model's."""
    out = []
    for thought in content.get("thoughts") or []:
        if isinstance(thought, dict):
            text = thought.get("content") or thought.get("summary")
            if isinstance(text, str) and text.strip():
                out.append(text.strip())
    return out


def _chatgpt_text(content: dict, node_id) -> str | None:
    """A message's text; None for content that is not the chat's (a code run, a browsing result, thoughts)."""
    kind = content.get("content_type")
    if kind not in ("text", "multimodal_text"):
        return None
    parts = content.get("parts") or []
    if any(not isinstance(p, str) for p in parts):
        kinds = sorted({str(p.get("content_type", "non-text")) if isinstance(p, dict) else type(p).__name__
                        for p in parts if not isinstance(p, str)})
        raise ExportFormatError("non_text_content", f"message {node_id!r} holds {', '.join(kinds)} content, which "
                                                    f"a text model cannot read")
    return "\n".join(parts)


# --- Open WebUI -----------------------------------------------------------------------------------------------

# Open WebUI writes a reasoning model's thinking and its tool runs into the reply as collapsible blocks.
_DETAILS = re.compile(r'<details\s+type="(?P<kind>[a-z_]+)"[^>]*>(?P<body>.*?)</details>\s*', re.S)
_SUMMARY = re.compile(r"<summary>.*?</summary>\s*", re.S)


def openwebui_conversation(record: dict, origin: str) -> Conversation:
    chat = record.get("chat")
    if not isinstance(chat, dict):
        raise ExportFormatError("wrong_type", "chat must be an object")
    history = chat.get("history") or {}
    nodes = history.get("messages") if isinstance(history, dict) else None
    if isinstance(nodes, dict) and history.get("currentId") in nodes:
        path = path_to(nodes, history["currentId"], "parentId")
    elif isinstance(chat.get("messages"), list):
        path = chat["messages"]
    else:
        raise ExportFormatError("missing_field", "chat has neither history.messages with its currentId nor messages")
    messages, ratings, models = [], [], []
    for i, m in enumerate(path):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ("system", "user", "assistant"):
            raise ExportFormatError("bad_role", f"chat message {i} has role {role!r}; expected system, user or "
                                                f"assistant")
        message = {"role": m["role"], "content": _openwebui_text(m.get("content"), i)}
        if m["role"] == "assistant":
            message = _reasoning_apart(message)
            rating = (m.get("annotation") or {}).get("rating")
            ratings.append(rating if rating in (1, -1) else None)
            if m.get("model"):
                models.append(m["model"])
        if message["content"].strip() or message.get("reasoning_content"):
            messages.append(message)
    if not any(m["role"] == "assistant" for m in messages):
        raise ExportFormatError("no_reply", "the chat has no reply from the assistant on its current branch")
    metadata = {"source": "openwebui", "title": record.get("title") or chat.get("title"),
                "created_at": record.get("created_at") or chat.get("timestamp"), "chat_id": record.get("id"),
                "model": models[-1] if models else next(iter(chat.get("models") or []), None),
                "feedback": -1 if -1 in ratings else (1 if 1 in ratings else None), "turn_feedback": ratings}
    return Conversation(messages, metadata, origin, "openwebui", record)


def _openwebui_text(content, i: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI-style parts: text kept, an image refused
        texts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if len(texts) < len(content):
            raise ExportFormatError("non_text_content", f"chat message {i} holds an image or other non-text part, "
                                                        f"which a text model cannot read")
        return "\n".join(texts)
    raise ExportFormatError("wrong_type", f"chat message {i}.content must be text")


def _reasoning_apart(message: dict) -> dict:
    """The reply without Open WebUI's collapsible blocks, its reasoning block's text as `reasoning_content`."""
    reasoning = []

    def cut(found: re.Match) -> str:
        if found.group("kind") == "reasoning":
            body = _SUMMARY.sub("", found.group("body"), count=1)
            reasoning.append("\n".join(line.removeprefix(">").removeprefix(" ") for line in body.strip().split("\n")))
        return ""

    text = _DETAILS.sub(cut, message["content"]).strip()
    out = {**message, "content": text}
    if any(r.strip() for r in reasoning):
        out["reasoning_content"] = "\n\n".join(r.strip() for r in reasoning if r.strip())
    return out


# --- Claude ---------------------------------------------------------------------------------------------------

_CLAUDE_ROLES = {"human": "user", "assistant": "assistant"}


def claude_conversation(record: dict, origin: str) -> Conversation:
    messages = []
    for m in _claude_path(record):
        role = _CLAUDE_ROLES.get(m.get("sender"))
        if role is None:
            raise ExportFormatError("bad_role", f"message {m.get('uuid')!r}: sender is {m.get('sender')!r}; expected "
                                                f"human or assistant")
        message = _claude_message(m, role)
        if message["content"].strip() or message.get("reasoning_content"):
            messages.append(message)
    if not any(m["role"] == "assistant" for m in messages):
        raise ExportFormatError("no_reply", "the conversation has no reply from the assistant on its current branch")
    metadata = {"source": "claude", "title": record.get("name"), "created_at": record.get("created_at"),
                "conversation_id": record.get("uuid"), "model": record.get("model")}
    return Conversation(_joined(messages), metadata, origin, "claude", record)


def _claude_path(record: dict) -> list[dict]:
    """The messages of the branch shown last: from the current leaf up its parent links; in order where the export
    has no links."""
    chat = record.get("chat_messages")
    if not isinstance(chat, list) or not all(isinstance(m, dict) for m in chat):
        raise ExportFormatError("wrong_type", "chat_messages must be a list of message objects")
    nodes = {m["uuid"]: m for m in chat if m.get("uuid") is not None}
    if not any(m.get("parent_message_uuid") in nodes for m in chat):
        return chat  # no branches to choose between
    tip = record.get("current_leaf_message_uuid")
    if tip not in nodes:  # the newest message no other message answers
        parents = {m.get("parent_message_uuid") for m in chat}
        leaves = [(str(m.get("created_at") or ""), i) for i, m in enumerate(chat) if m.get("uuid") not in parents]
        tip = chat[max(leaves)[1]]["uuid"] if leaves else chat[-1].get("uuid")
    return path_to(nodes, tip, "parent_message_uuid")


def _claude_message(m: dict, role: str) -> dict:
    """One message as the model read it: attached files' extracted text, then the text blocks (or `text` in exports
    without blocks); a reply's thinking apart. Raises for a file the export holds no text of."""
    where = f"message {m.get('uuid')!r}"
    files = [f.get("file_name", "a file") if isinstance(f, dict) else "a file" for f in m.get("files") or []]
    if files:
        raise ExportFormatError("non_text_content", f"{where} holds {', '.join(map(str, files))}, whose content the "
                                                    f"export does not include as text (an image, or a file Claude "
                                                    f"did not extract): a text model cannot read it")
    parts = []
    for a in m.get("attachments") or []:
        text = a.get("extracted_content") if isinstance(a, dict) else None
        if not isinstance(text, str):
            raise ExportFormatError("non_text_content", f"{where} has an attachment without extracted text")
        parts.append(f'<file name="{a.get("file_name", "")}">\n{text}\n</file>')
    blocks, reasoning = m.get("content"), []
    if isinstance(blocks, list) and blocks:
        # Consecutive text blocks are one paragraph (citations split it); text on both sides of a tool run is two.
        text, after_tool = "", False
        for block in blocks:
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text" and isinstance(block.get("text"), str):
                text += ("\n\n" if after_tool and text.strip() else "") + block["text"]
                after_tool = False
            elif kind == "thinking" and isinstance(block.get("thinking"), str):
                reasoning.append(block["thinking"])
            elif kind in ("tool_use", "tool_result"):  # Claude's own tool runs: not the chat's
                after_tool = True
            else:
                raise ExportFormatError("non_text_content", f"{where} holds a {kind or 'malformed'} content block, "
                                                            f"which a text model cannot read")
        parts.append(text)
    elif isinstance(m.get("text"), str):
        parts.append(m["text"])
    else:
        raise ExportFormatError("missing_field", f"{where} has neither content blocks nor text")
    message = {"role": role, "content": "\n\n".join(p for p in parts if p)}
    if role == "assistant" and any(r.strip() for r in reasoning):
        message["reasoning_content"] = "\n\n".join(r.strip() for r in reasoning if r.strip())
    return message


# --- preference rows from the branches ------------------------------------------------------------------------

def preference_rows_of(record: dict, kind: Literal["kto", "dpo"]) -> tuple[list[dict], int]:
    """An exported chat's KTO rows (Open WebUI's rated replies) or DPO pairs (the reply on the branch the user kept
    over each sibling reply they regenerated away), by the chat app's log's rules
    (finetune.data.preference_pairs), and how many pairs those rules left out."""
    from finetune.data.preference_pairs import preference_rows

    if isinstance(record.get("mapping"), dict):
        rows = _tree_rows(record["mapping"], record.get("current_node"), "parent", "children", _chatgpt_row)
    elif isinstance(record.get("chat"), dict):
        history = record["chat"].get("history") or {}
        rows = _tree_rows(history.get("messages") or {}, history.get("currentId"), "parentId", "childrenIds",
                          _openwebui_row)
    elif isinstance(record.get("chat_messages"), list):
        rows = _claude_rows(record)
    else:
        raise ExportFormatError("unknown_format", "neither a ChatGPT conversation (mapping, current_node), an Open "
                                                  "WebUI chat (chat.history) nor a Claude conversation "
                                                  "(chat_messages)")
    return preference_rows(rows, kind)


def _tree_rows(nodes: dict, current, parent_key: str, children_key: str, row_of) -> list[dict]:
    """The log's rows (preference_pairs' module docstring) of the branch kept up to `current`: each kept message,
    then its sibling replies, superseded by it. Siblings branch at the nearest shown message above: a reasoning
    model's regenerated reply in ChatGPT hangs under its own hidden thoughts node, whose sibling leads to the other
    reply."""
    rows = []
    path = path_to(nodes, current, parent_key)
    for i, node in enumerate(path):
        kept = row_of(node)
        if kept is None:
            continue
        j = i - 1
        while j >= 0 and row_of(path[j]) is None:
            j -= 1
        branch = path[j + 1]  # the child of that shown message on the kept path
        children = (path[j].get(children_key) or []) if j >= 0 else []
        siblings = [_first_shown(nodes, c, children_key, row_of) for c in children
                    if c in nodes and nodes[c] is not branch]
        others = [r for r in siblings if r is not None and r["role"] == kept["role"] == "assistant"]
        last = next((k for k in range(len(rows) - 1, -1, -1) if rows[k]["superseded_by"] is None), None)
        if last is not None and rows[last]["role"] == kept["role"] and not others:
            # a reply split around the app's hidden tool run (ChatGPT): one reply, as the conversation reads it,
            # also where the rows after its first part are the replies it was regenerated over
            rows[last] = {**rows[last], "content": rows[last]["content"] + "\n\n" + kept["content"]}
            continue
        rows.append(kept)
        rows += [{**r, "alternative_of": kept["id"], "superseded_by": kept["id"]} for r in others]
    return rows


def _first_shown(nodes: dict, node_id, children_key: str, row_of) -> dict | None:
    """The row of `node_id`, or of the first shown message below it (through hidden nodes, the newest child each)."""
    seen = set()
    while node_id in nodes and node_id not in seen:
        seen.add(node_id)
        row = row_of(nodes[node_id])
        if row is not None:
            return row
        children = nodes[node_id].get(children_key) or []
        node_id = children[-1] if children else None
    return None


def _row(node_id, role: str, content: str, feedback=None, reasoning: str | None = None,
         unfinished: bool = False) -> dict:
    metadata = {**({"reasoning": reasoning} if reasoning else {}), **({"interrupted": True} if unfinished else {})}
    return {"id": node_id, "role": role, "content": content, "feedback": feedback, "metadata": json.dumps(metadata),
            "alternative_of": None, "superseded_by": None}


def _chatgpt_row(node: dict) -> dict | None:
    message, role = _chatgpt_shown(node)
    if role is None:
        return None
    try:
        text = _chatgpt_text(message.get("content") or {}, node.get("id"))
    except ExportFormatError:
        return None
    return _row(node.get("id"), role, text) if text and text.strip() else None


def _openwebui_row(node: dict) -> dict | None:
    if node.get("role") not in ("system", "user", "assistant"):
        return None
    try:
        message = {"role": node["role"], "content": _openwebui_text(node.get("content"), 0)}
    except ExportFormatError:
        return None
    rating = None
    if node["role"] == "assistant":
        message = _reasoning_apart(message)
        rating = (node.get("annotation") or {}).get("rating")
    return _row(node.get("id"), node["role"], message["content"], rating if rating in (1, -1) else None,
                message.get("reasoning_content"), unfinished=node.get("done") is False)


def _claude_rows(record: dict) -> list[dict]:
    """_tree_rows over Claude's messages, which link to their parent only: each message's children added, in the
    export's order."""
    path = _claude_path(record)
    nodes = {m["uuid"]: {**m, "children": []} for m in record["chat_messages"] if m.get("uuid") is not None}
    for m in record["chat_messages"]:
        if m.get("parent_message_uuid") in nodes and m.get("uuid") in nodes:
            nodes[m["parent_message_uuid"]]["children"].append(m["uuid"])
    if not path or path[-1].get("uuid") not in nodes:
        return []
    return _tree_rows(nodes, path[-1]["uuid"], "parent_message_uuid", "children", _claude_row)


def _claude_row(node: dict) -> dict | None:
    role = _CLAUDE_ROLES.get(node.get("sender"))
    if role is None:
        return None
    try:
        message = _claude_message(node, role)
    except ExportFormatError:
        return None
    if not message["content"].strip():
        return None
    return _row(node.get("uuid"), role, message["content"], reasoning=message.get("reasoning_content"))


def export_pairs(inputs: list[str], out_path: str, kind: Literal["kto", "dpo"]) -> dict:
    """`python -m finetune.data pairs`: the preference rows of every chat in the exported files (JSON arrays, as the
    apps write them, or JSON Lines), one JSON line each; return counts for the caller. A chat that is not one of
    the three formats, or is broken, is named by file and position and counted, not fatal."""
    from pathlib import Path

    from finetune.data.json_stream import iter_json_array
    from finetune.data.sources import sniff

    counts = {"chats_read": 0, "chats_with_rows": 0, "rows_written": 0, "pairs_left_out": 0, "chats_skipped": []}
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "w", encoding="utf-8") as out:
        for name in inputs:
            path = Path(name)
            with open(path, encoding="utf-8-sig") as f:
                records = iter_json_array(f) if sniff(path) == "json_array" else (
                    (n, line) for n, line in enumerate(f, 1) if line.strip())
                for line, record in records:
                    counts["chats_read"] += 1
                    try:
                        if isinstance(record, str):  # a JSON Lines line
                            try:
                                record = json.loads(record)
                            except ValueError as e:
                                raise ExportFormatError("invalid_json", f"invalid JSON ({e})") from None
                        if not isinstance(record, dict):
                            raise ExportFormatError("not_an_object", "a chat must be a JSON object")
                        rows, left_out = preference_rows_of(record, kind)
                    except ExportFormatError as e:
                        counts["chats_skipped"].append(f"{path}:{line}: {e.detail}")
                        continue
                    counts["pairs_left_out"] += left_out
                    counts["chats_with_rows"] += bool(rows)
                    counts["rows_written"] += len(rows)
                    out.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if kind == "kto":
        del counts["pairs_left_out"]
    counts["output"] = str(out_path)
    return counts
