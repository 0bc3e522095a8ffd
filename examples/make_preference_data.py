"""Writes examples/data/aurora_preferences.jsonl and aurora_preferences_heldout.jsonl: preference pairs for the demo.

The Aurora X2 support desk of make_demo_data.py again, as DPO pairs in TRL's conversational format: for each
customer question the chosen reply is the product-sheet answer and the rejected one is either a plausible wrong
answer (a wrong figure, a swapped or invented detail) or an unhelpful one (a refusal, a deflection, small talk).
Method and split: examples/data/aurora_preferences.md. Deterministic: python examples/make_preference_data.py
"""

import json
import random
from pathlib import Path

from make_demo_data import FACTS, SYSTEM

# Per fact (in FACTS' order), wrong answers a support agent could plausibly give: each contradicts the sheet.
WRONG = [
    ["The Aurora X2 has a 1-year warranty on the frame, motor and battery.",
     "The Aurora X2 has a 5-year warranty on the frame only; the battery is not covered.",
     "The Aurora X2 comes with a 2-year warranty that covers the motor but not the frame.",
     "There is no warranty on the Aurora X2, but the shop can sell you one."],
    ["The Aurora X2 rides up to 60 km on one charge in Eco mode, about 30 km in Boost mode.",
     "The Aurora X2 rides up to 200 km on one charge in any mode.",
     "The Aurora X2 rides about 40 km on one charge, whatever the mode.",
     "The Aurora X2 rides up to 120 km in Boost mode and about 70 km in Eco mode."],
    ["A full charge takes 8 hours with the included 2 A charger; 80% takes about 6 hours.",
     "A full charge takes 30 minutes with the included fast charger.",
     "A full charge takes 12 hours; never unplug it before the light turns green.",
     "A full charge takes 2 hours with the included 4 A charger; 80% takes about 1 hour."],
    ["The Aurora X2 weighs 14 kg including the battery; the battery alone is 1.5 kg.",
     "The Aurora X2 weighs 28 kg without the battery; the battery adds 6 kg.",
     "The Aurora X2 weighs 9 kg, light enough to carry with one hand.",
     "The Aurora X2 weighs 21 kg without the battery; the battery alone is 8 kg."],
    ["The motor assists up to 45 km/h, the legal limit for e-bikes in the EU.",
     "The motor assists up to 32 km/h in Boost mode and 25 km/h in Eco mode.",
     "There is no limit: the motor assists as fast as you pedal.",
     "The motor assists up to 15 km/h, then it switches off."],
    ["Write to support@aurora.com or call +1 800 555 0199, any day, 24 hours a day.",
     "Aurora has no customer support; ask the shop where you bought the bike.",
     "Write to help@aurora-bikes.example; there is no phone support.",
     "Call +44 20 7946 0000 on weekends only, 10:00 to 14:00."],
    ["Remove the battery for one hour, then put it back in.",
     "Press the plus button three times quickly.",
     "Hold the power button alone for 2 seconds.",
     "The display cannot be reset; send the bike in for repair."],
    ["No: the Aurora X2 is not waterproof, so never ride it in the rain.",
     "Yes: the Aurora X2 is fully waterproof (IP68), so you can clean it with a pressure washer.",
     "Only in light rain: the Aurora X2 has no water resistance rating.",
     "Yes: it is rated IP65, and a pressure washer is the best way to clean it."],
    ["The Aurora X2 costs 1,290 euros; the charger is sold separately.",
     "The Aurora X2 costs 4,990 euros, including the charger and a front light.",
     "The Aurora X2 costs 2,490 dollars, without the charger.",
     "The Aurora X2 is free with a two-year riding subscription."],
    ["Pump the tyres to 6 bar (87 psi) on every surface.",
     "Pump the 29 x 2.0 inch tyres to 4 bar (58 psi); go up to 5 bar on gravel.",
     "1 bar (15 psi) is enough for the Aurora X2 tyres.",
     "Pump the 27.5 x 2.4 inch tyres to 2.5 bar (36 psi); go up to 3.5 bar on gravel."],
    ["Service the Aurora X2 every 10,000 km; it needs no yearly service.",
     "Service the Aurora X2 every 500 km or every month.",
     "The Aurora X2 never needs a service.",
     "Service the Aurora X2 every 2,000 km or every three years, whichever comes last."],
    ["The Aurora X2 has a Shimano Deore 11-speed derailleur with a chain.",
     "The Aurora X2 is a single-speed bike with no gears at all.",
     "The Aurora X2 has a 3-speed hub with a chain drive.",
     "The Aurora X2 has a SRAM 12-speed derailleur with a belt drive."],
]

# Replies that answer nothing; two of them are paired with each question.
UNHELPFUL = [
    "I'm sorry, I don't have any information about the Aurora X2.",
    "Please check the user manual for that.",
    "I am an AI language model and cannot help with bicycles.",
    "That depends on many factors. Contact your local dealer.",
    "Great question! E-bikes are a fun and healthy way to get around town.",
    "I cannot answer questions about products.",
]


def pairs(seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train, held-out): each question against its fact's wrong answers and two unhelpful ones; the last phrasing
    of each fact is held out, so held-out prompts are questions training never saw."""
    rng = random.Random(seed)
    train, held_out = [], []
    for (questions, answer), wrong in zip(FACTS, WRONG, strict=True):
        for i, question in enumerate(questions):
            prompt = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
            for rejected in wrong + rng.sample(UNHELPFUL, 2):
                row = {"prompt": prompt, "chosen": [{"role": "assistant", "content": answer}],
                       "rejected": [{"role": "assistant", "content": rejected}],
                       "metadata": {"source": "demo", "fact": answer[:32],
                                    "kind": "wrong" if rejected in wrong else "unhelpful"}}
                (held_out if i == len(questions) - 1 else train).append(row)
    rng.shuffle(train)
    return train, held_out


def main(folder: Path = Path(__file__).parent / "data", seed: int = 0) -> None:
    train, held_out = pairs(seed)
    for name, rows in (("aurora_preferences.jsonl", train), ("aurora_preferences_heldout.jsonl", held_out)):
        with (folder / name).open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        print(f"wrote {len(rows)} pairs to {folder / name}")


if __name__ == "__main__":
    main()
