"""Writes examples/data/aurora_tools.jsonl and aurora_tools_heldout.jsonl: tool use at the Aurora support desk.

The support desk of make_demo_data.py, now with three tools (an order's status, a service booking, a battery
report). A request that needs one is answered by calling it with the customer's own order number, city and date,
or serial number, then by a reply built from the tool's result; a product question is still answered in words
(make_demo_data.py's facts), with the tools offered all the same. OpenAI's shape: `tools`, assistant
`tool_calls`, `tool` results.

Held out: conversations that end at the call (the call is the reference, scored by finetune.evaluate as
tool_call_exact) and product questions (where a call would be a false one), with order numbers, serials, cities
and dates that training never shows, so a tuned model must copy them from the request, not recall them.
Deterministic: python examples/make_tool_data.py
"""

import json
import random
from pathlib import Path

from make_demo_data import FACTS, SYSTEM

TOOLS = [
    {"type": "function", "function": {
        "name": "order_status", "description": "The delivery status of an Aurora order.",
        "parameters": {"type": "object", "properties": {"order_id": {"type": "string", "description":
                                                                     "The order number, like AX-10423."}},
                       "required": ["order_id"]}}},
    {"type": "function", "function": {
        "name": "book_service", "description": "Book a service appointment at the Aurora shop of a city.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string"}, "date": {"type": "string", "description": "YYYY-MM-DD"}},
            "required": ["city", "date"]}}},
    {"type": "function", "function": {
        "name": "battery_report", "description": "The health of a battery, from its serial number.",
        "parameters": {"type": "object", "properties": {"serial": {"type": "string"}}, "required": ["serial"]}}},
]
CITIES = ["Berlin", "Lyon", "Milan", "Porto", "Ghent", "Graz", "Leeds", "Bergen", "Malmo", "Utrecht", "Turin",
          "Seville", "Krakow", "Dublin", "Tallinn", "Basel"]
HELD_OUT_CITIES = CITIES[-4:]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
STATUSES = ["shipped on {d}, arriving in 2 days", "being packed, ships tomorrow", "delivered on {d}",
            "waiting for the battery, ships in a week"]

ORDER_ASKS = ["Where is my order {o}?", "What is the status of order {o}?", "Has order {o} shipped yet?",
              "Can you check my order {o}, please?", "I ordered an Aurora X2, order number {o}. When does it come?"]
SERVICE_ASKS = ["Please book a service in {c} on {day} {month}.", "Can I get my bike serviced in {c} on {month} "
                "{day}?", "I need a service appointment in {c}, {day} {month} if possible.",
                "Book me in for a service at the {c} shop on {day} {month}."]
BATTERY_ASKS = ["How healthy is my battery? The serial is {s}.", "Check battery {s} for me, please.",
                "My battery (serial {s}) seems weak. Can you check it?", "What is the state of battery {s}?"]


def _order(rng: random.Random, held_out: bool) -> str:
    return f"AX-{rng.randrange(50000, 99999) if held_out else rng.randrange(10000, 49999)}"


def _serial(rng: random.Random, held_out: bool) -> str:
    letters = "QRST" if held_out else "BCDFGHJK"
    return f"{rng.choice(letters)}{rng.choice(letters)}{rng.randrange(1000, 9999)}"


def _call(name: str, arguments: dict, n: int) -> dict:
    return {"id": f"call_{n}", "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


def _tool_turns(rng: random.Random, kind: str, held_out: bool, n: int) -> tuple[list[dict], list[dict]]:
    """(the request and the call, the result and the reply built from it)."""
    if kind == "order":
        order = _order(rng, held_out)
        status = rng.choice(STATUSES).format(d=f"{rng.randrange(1, 28)} {rng.choice(MONTHS)}")
        ask, call = rng.choice(ORDER_ASKS).format(o=order), _call("order_status", {"order_id": order}, n)
        result, reply = json.dumps({"order_id": order, "status": status}), f"Your order {order} is {status}."
    elif kind == "service":
        city = rng.choice(HELD_OUT_CITIES if held_out else CITIES[:-4])
        month, day = rng.randrange(1, 13), rng.randrange(1, 29)
        date = f"2027-{month:02d}-{day:02d}"
        ask = rng.choice(SERVICE_ASKS).format(c=city, day=day, month=MONTHS[month - 1])
        call = _call("book_service", {"city": city, "date": date}, n)
        slot = rng.choice(["9:00", "11:30", "14:00", "16:30"])
        result = json.dumps({"booked": True, "city": city, "date": date, "time": slot})
        reply = f"You are booked at the {city} shop on {day} {MONTHS[month - 1]} at {slot}."
    else:
        serial = _serial(rng, held_out)
        health = rng.randrange(55, 100)
        ask, call = rng.choice(BATTERY_ASKS).format(s=serial), _call("battery_report", {"serial": serial}, n)
        result = json.dumps({"serial": serial, "health_percent": health, "cycles": rng.randrange(20, 900)})
        advice = "it is in good shape" if health >= 80 else "consider a replacement within the year"
        reply = f"Battery {serial} is at {health}% of its original capacity: {advice}."
    head = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ask},
            {"role": "assistant", "content": "", "tool_calls": [call]}]
    return head, [{"role": "tool", "tool_call_id": call["id"], "content": result},
                  {"role": "assistant", "content": reply}]


def main(out: Path = Path(__file__).parent / "data", seed: int = 0) -> None:
    rng = random.Random(seed)
    train, heldout = [], []
    for n in range(120):
        head, tail = _tool_turns(rng, ("order", "service", "battery")[n % 3], False, n)
        train.append({"messages": head + tail, "tools": TOOLS})
    for questions, answer in FACTS:  # product questions: words, not calls, with the tools offered
        for question in questions[:4]:
            train.append({"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question},
                                       {"role": "assistant", "content": answer}], "tools": TOOLS})
        heldout.append({"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": questions[4]},
                                     {"role": "assistant", "content": answer}], "tools": TOOLS})
    for n in range(24):
        head, _ = _tool_turns(rng, ("order", "service", "battery")[n % 3], True, 1000 + n)
        heldout.append({"messages": head, "tools": TOOLS})
    rng.shuffle(train)
    for name, rows in (("aurora_tools.jsonl", train), ("aurora_tools_heldout.jsonl", heldout)):
        (out / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        print(f"{out / name}: {len(rows)} conversations")


if __name__ == "__main__":
    main()
