"""Preference rows from a conversation whose turns have alternatives: KTO's rated replies and DPO's pairs of the
reply kept over one replaced (regenerated or edited away). One set of rules for every source of such trees: the
chat app's log (neural_chat_app.export_log) and the chat histories other apps export
(finetune.data.chat_exports.preference_rows_of).

A row is one message, by name: id, role, content, metadata (the log's JSON: tool_calls, tool_results, reasoning,
tools, interrupted), feedback (+1, -1 or None), alternative_of (the turn's first reply, None for that reply) and
superseded_by (the reply kept in its place, None for the kept one), in conversation order with a turn's replies
together, its first reply first.
"""

from __future__ import annotations

from typing import Literal

from finetune.data.chatlog_schema import answered, logged_message, row_metadata

Row = dict  # or a database row read by column name (sqlite3.Row, chatlog_db.Row)


def _unfinished(row: Row) -> bool:
    """An empty reply (no text and no call), or one the user stopped (or the client left) mid-stream: no side of a
    pair."""
    metadata = row_metadata(row["metadata"])
    return (not row["content"].strip() and not metadata.get("tool_calls")) or bool(metadata.get("interrupted"))


def _answer(message: dict) -> tuple:
    """What a reply says: its text and its calls (two replies reasoning differently to the same answer are no
    pair)."""
    return message["content"], message.get("tool_calls")


def preference_rows(rows: list[Row], kind: Literal["kto", "dpo"]) -> tuple[list[dict], int]:
    """The KTO or DPO rows of one conversation's messages (all of them, in conversation order), and how many
    candidate pairs were left out (contradicting ratings, same reply). A reply keeps its calls and reasoning, the
    prompt the tool results before it, and a row the functions offered up to it (`tools`), as `export_jsonl` has
    them (finetune.data.chatlog_schema.logged_message)."""
    turns: dict[int, list[Row]] = {}
    for r in rows:
        turns.setdefault(r["alternative_of"] or r["id"], []).append(r)
    out, left_out, context, tools = [], 0, [], {}
    for r in rows:
        replies = turns[r["alternative_of"] or r["id"]]
        if r is not replies[0]:  # each turn once, at its place; the context grows by the turn's kept message
            continue
        kept = next((x for x in replies if x["superseded_by"] is None), None)
        logged = {x["id"]: logged_message(x) for x in replies}
        results = logged[(kept or r)["id"]][0] if answered(context) else []
        for _, _, offered in logged.values():
            tools.update((t["function"]["name"], t) for t in offered)
        prompt = context + results
        with_tools = {"tools": list(tools.values())} if tools else {}
        if r["role"] == "assistant" and context:
            if kind == "kto":
                out += [{"prompt": list(prompt), "completion": [logged[x["id"]][1]], "label": x["feedback"] == 1,
                         **with_tools} for x in replies if x["feedback"] is not None]
            elif kept is not None:
                for x in replies:
                    if x is kept:
                        continue
                    if kept["feedback"] == -1 or x["feedback"] == 1 or _answer(logged[x["id"]][1]) == _answer(
                            logged[kept["id"]][1]) or _unfinished(kept) or _unfinished(x):
                        left_out += 1
                        continue
                    out.append({"prompt": list(prompt), "chosen": [logged[kept["id"]][1]],
                                "rejected": [logged[x["id"]][1]], **with_tools})
        if kept is not None:
            context = prompt + [logged[kept["id"]][1]]
    return out, left_out
