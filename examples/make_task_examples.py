"""Writes small example datasets for the completion, summarization and code-generation tasks (deterministic).

    python examples/make_task_examples.py

- examples/data/alpaca_aurora.json: Alpaca records (instruction / input / output) about the demo product
- examples/data/summaries.jsonl:    article / highlights pairs (service notices of a made-up bike shop)
- examples/data/code_pairs.jsonl:   prompt / completion pairs (small Python functions)
"""

import json
import random
from pathlib import Path

from make_demo_data import FACTS

DATA = Path(__file__).parent / "data"


def alpaca(rng: random.Random) -> list[dict]:
    rows = []
    for questions, answer in FACTS:
        for q in questions:
            rows.append({"instruction": q, "input": "", "output": answer})
        rows.append({"instruction": "Answer the customer's question using the product sheet.",
                     "input": questions[0], "output": answer})
    rng.shuffle(rows)
    return rows


def summaries(rng: random.Random) -> list[dict]:
    towns = ["Leeds", "Bristol", "York", "Bath", "Derby", "Exeter", "Hull", "Oxford"]
    days = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]
    rows = []
    for i in range(48):
        town, day, hours = rng.choice(towns), rng.choice(days), rng.randint(2, 9)
        reason = rng.choice(["a stock count", "staff training", "a fire drill", "new shelving", "a power upgrade"])
        article = (f"Aurora Bikes' {town} workshop will close early on {day} for {reason}. Repairs booked for that "
                   f"afternoon move to the next morning, and customers are told by e-mail. The shop reopens at "
                   f"{hours} o'clock the next day. Test rides continue at the other branches. "
                   f"Notice number {1000 + i}.")
        rows.append({"article": article,
                     "highlights": f"{town} workshop closes early on {day} ({reason}); reopens at {hours}:00."})
    return rows


def code_pairs(rng: random.Random) -> list[dict]:
    rows = []
    for _ in range(48):
        n = rng.randint(2, 9)
        op, word = rng.choice([("+", "add"), ("*", "multiply"), ("-", "subtract")])
        rows.append({"prompt": f'def {word}_{n}(x):\n    """Return x {word}ed by {n}."""\n',
                     "completion": f"    return x {op} {n}\n"})
    return rows


def main() -> None:
    rng = random.Random(0)
    DATA.mkdir(exist_ok=True)
    (DATA / "alpaca_aurora.json").write_text(json.dumps(alpaca(rng), indent=1) + "\n")
    for name, rows in (("summaries.jsonl", summaries(rng)), ("code_pairs.jsonl", code_pairs(rng))):
        (DATA / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    print("wrote", ", ".join(p.name for p in sorted(DATA.glob("*"))))


if __name__ == "__main__":
    main()
