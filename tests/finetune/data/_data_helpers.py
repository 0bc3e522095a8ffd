"""Helpers shared by the data-pipeline tests."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from finetune.data.chatlog_schema import SCHEMA, SCHEMA_VERSION

FIXTURES = Path(__file__).parent / "fixtures"


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def make_chatlog(path: Path, sessions: dict[str, list[tuple]], version: int = SCHEMA_VERSION) -> Path:
    """`sessions`: id -> [(role, content, feedback), ...], written the way the chat app writes them."""
    con = sqlite3.connect(path)
    con.executescript(SCHEMA)
    con.execute("INSERT INTO schema_info VALUES (?)", (version,))
    for n, (sid, messages) in enumerate(sessions.items()):
        con.execute("INSERT INTO sessions VALUES (?, ?, ?, ?)", (sid, 1000.0 + n, f"title {sid}", "smollm2"))
        for role, content, feedback in messages:
            con.execute("INSERT INTO messages (session_id, role, content, created_at, model, feedback) "
                        "VALUES (?, ?, ?, ?, ?, ?)", (sid, role, content, 1000.0 + n, "smollm2", feedback))
    con.commit()
    con.close()
    return path


def chat(user: str, assistant: str, **metadata) -> dict:
    record = {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}
    if metadata:
        record["metadata"] = metadata
    return record


def distinct_chats(n: int, **metadata) -> list[dict]:
    """n conversations that no dedup or repetition filter would touch: each has its own vocabulary."""
    return [chat(f"Question number {i}: what is {i} squared plus {i * 7} {'alpha' * (i % 3)}?",
                 f"Answer {i}: {i * i + i * 7}. Word{i} token{i * 3} item{i * 11} thing{i * 13} stuff{i * 17}.",
                 **metadata) for i in range(n)]


_WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
          "quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()
_PII = ["write to ann.lee{i}@example.org", "see https://example.org/t/{i}.", "host 10.1.{a}.7 is down",
        "card 4111 1111 1111 1111 expired", "call +1 415-555-{p:04d} now", "v6 fe80::1ff:fe23:4567:{p:04x}"]


def tricky_lines(n: int, seed: int = 0) -> list[bytes]:
    """n lines of JSON Lines that exercise every path of the pipeline: exact and near duplicates (some of them far
    apart, some of duplicates), PII of each kind, non-ASCII text and long words, system prompts, and every kind
    of reject (bad JSON, bad UTF-8, lone surrogates, big integers, NaN, role order, repetition, empty messages),
    plus blank and CRLF lines and a cut-off last line."""
    import random

    rng = random.Random(seed)
    lines: list[bytes] = []
    kept: list[dict] = []

    def sentence(k: int) -> str:
        return " ".join(rng.choice(_WORDS) for _ in range(k))

    for i in range(n):
        roll = rng.random()
        if kept and roll < 0.06:
            record = json.loads(json.dumps(rng.choice(kept[-50:])))  # exact duplicate, possibly far back
            if rng.random() < 0.5:
                record["messages"][-1]["content"] = record["messages"][-1]["content"].upper() + "  "
        elif kept and roll < 0.12:
            record = json.loads(json.dumps(rng.choice(kept[-50:])))  # near duplicate
            record["messages"][-1]["content"] += " " + rng.choice(_WORDS)
        elif roll < 0.16:
            lines.append(_odd_line(rng, i))
            continue
        else:
            answer = sentence(rng.randint(25, 60))
            if rng.random() < 0.3:
                answer += " " + rng.choice(_PII).format(i=i, a=i % 250, p=i % 9999)
            if rng.random() < 0.1:
                answer += " Grüße aus Köln, naïve café ÉCOLE ß ﬁ " + "長い文章" * 3
            if rng.random() < 0.03:
                answer += " " + "x" * 300  # a word past the crc shift tables
            messages = [{"role": "user", "content": f"Question {i}: {sentence(8)}?"},
                        {"role": "assistant", "content": answer}]
            if rng.random() < 0.2:
                messages.insert(0, {"role": "system", "content": "You are a helpful assistant. " * 5})
            if rng.random() < 0.2:
                messages += [{"role": "user", "content": sentence(6) + "?"},
                             {"role": "assistant", "content": sentence(30)}]
            record = {"messages": messages, "metadata": {"id": i, "tree": f"t{i % 13}", "score": rng.random()}}
            kept.append(record)
        line = json.dumps(record, ensure_ascii=rng.random() < 0.5).encode()
        lines.append(line + (b"\r" if rng.random() < 0.05 else b""))
    lines.append(b'{"prompt": "cut off at the end", "resp')
    return lines


def _odd_line(rng, i: int) -> bytes:
    return rng.choice([
        b"",  # blank: not a record
        b'{"prompt": "caf\xe9 au lait?", "response": "bad latin-1 byte"}',
        b'{"prompt": "unterminated", ',
        b'{"prompt": "half an emoji \\ud83d", "response": "x"}',
        b'{"prompt": "a big id", "response": "kept with its id", "id": 123456789012345678901234567890}',
        b'{"prompt": "not a number", "response": "kept", "score": NaN}',
        b'{"messages": [{"role": "assistant", "content": "answer first"}, {"role": "user", "content": "q"}]}',
        b'{"prompt": "spam", "response": "' + b"buy now " * 40 + b'"}',
        b'{"prompt": "empty", "response": " \\u0000 "}',
        json.dumps({"prompt": f"plain {i} " + "word " * 5, "response": f"fine {i} answer"}).encode(),
        b"[1, 2, 3]",
    ])


def write_tricky(path: Path, n: int, seed: int = 0) -> Path:
    path.write_bytes(b"\xef\xbb\xbf" + b"\n".join(tricky_lines(n, seed)))
    return path


def pair(prompt, chosen, rejected, **extra) -> dict:
    """A conversational DPO pair: `prompt` a user question (or a list of messages), the replies assistant texts."""
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    return {"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}], **extra}


def preference_lines(n: int, seed: int = 0) -> list[bytes]:
    """n lines of preference data that exercise every path: several pairs per prompt (long shared prompts too),
    exact and near duplicates, PII in prompts and in rejected replies, implicit prompts, and every reject a
    preference record can get (same replies, empty reply, bad label, a prompt ending on the assistant, a chat
    record, a KTO example and a plain-text pair in a conversational DPO export)."""
    import random

    rng = random.Random(seed)
    prompts = [f"Question {k}: {' '.join(rng.choice(_WORDS) for _ in range(rng.choice((6, 60))))}?"
               for k in range(max(4, n // 4))]
    kept: list[dict] = []
    lines: list[bytes] = []

    def sentence(k: int) -> str:
        return " ".join(rng.choice(_WORDS) for _ in range(k))

    for i in range(n):
        roll = rng.random()
        if kept and roll < 0.05:
            record = json.loads(json.dumps(rng.choice(kept[-40:])))  # exact duplicate (case aside)
            record["chosen"][0]["content"] = record["chosen"][0]["content"].upper()
        elif kept and roll < 0.10:
            record = json.loads(json.dumps(rng.choice(kept[-40:])))  # near duplicate: one more word in a reply
            record["rejected"][0]["content"] += " " + rng.choice(_WORDS)
        elif roll < 0.16:
            record = rng.choice([
                pair("same?", "same reply", "same reply"),
                pair("empty?", "", "something"),
                {"prompt": "is it good?", "completion": "yes", "label": "perhaps"},
                pair([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], "a b", "c d"),
                {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
                {"prompt": [{"role": "user", "content": f"kto {i}"}],
                 "completion": [{"role": "assistant", "content": sentence(12)}], "label": True},
                {"prompt": f"plain {i}: {sentence(5)}?\nA:", "chosen": " " + sentence(9), "rejected": " no"},
            ])
        else:
            rejected = sentence(rng.randint(20, 40))
            if rng.random() < 0.3:
                rejected += " " + rng.choice(_PII).format(i=i, a=i % 250, p=i % 9999)
            record = pair(rng.choice(prompts), sentence(rng.randint(20, 40)), rejected, metadata={"id": i})
            if rng.random() < 0.15:  # the implicit-prompt form: both conversations start with the prompt
                record = {"chosen": record["prompt"] + record["chosen"],
                          "rejected": record["prompt"] + record["rejected"], "metadata": {"id": i}}
            else:
                kept.append(record)
        lines.append(json.dumps(record, ensure_ascii=rng.random() < 0.5).encode())
    return lines


def write_preferences(path: Path, n: int, seed: int = 0) -> Path:
    path.write_bytes(b"\n".join(preference_lines(n, seed)) + b"\n")
    return path
