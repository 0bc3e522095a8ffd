"""Writes examples/data/aurora_support.jsonl: the demo dataset of the README's first command.

A support desk for a made-up product, the Aurora X2 e-bike, so a base model cannot know the answers and the
fine-tuned one visibly does. Each fact is asked several ways; the split keeps some phrasings out of training.
Deterministic: python examples/make_demo_data.py
"""

import json
import random
from pathlib import Path

FACTS = [
    (["How long is the warranty on the Aurora X2?", "What warranty does the Aurora X2 come with?",
      "Is the Aurora X2 covered by a warranty?", "How many years of warranty do I get with my Aurora X2?",
      "Tell me about the Aurora X2 warranty."],
     "The Aurora X2 has a 3-year warranty on the frame, motor and battery."),
    (["What is the range of the Aurora X2?", "How far can the Aurora X2 go on one charge?",
      "How many kilometres does the Aurora X2 battery last?", "What range should I expect from my Aurora X2?",
      "How far does the Aurora X2 ride before it needs charging?"],
     "The Aurora X2 rides up to 120 km on one charge in Eco mode, about 70 km in Boost mode."),
    (["How long does the Aurora X2 take to charge?", "What is the charging time of the Aurora X2?",
      "How many hours to fully charge the Aurora X2 battery?", "How fast does the Aurora X2 charge?",
      "When is my Aurora X2 battery full if I plug it in?"],
     "A full charge takes 4 hours with the included 4 A charger; 80% takes about 2.5 hours."),
    (["How heavy is the Aurora X2?", "What does the Aurora X2 weigh?", "What is the weight of the Aurora X2?",
      "Is the Aurora X2 light enough to carry upstairs?", "How many kilograms is the Aurora X2?"],
     "The Aurora X2 weighs 21 kg including the battery; the battery alone is 3.2 kg."),
    (["What is the top speed of the Aurora X2?", "How fast can the Aurora X2 go?",
      "What is the maximum assisted speed of the Aurora X2?", "Does the Aurora X2 assist above 25 km/h?",
      "How fast does the motor of the Aurora X2 push me?"],
     "The motor assists up to 25 km/h, the legal limit for e-bikes in the EU."),
    (["How do I contact Aurora support?", "What is the support email for the Aurora X2?",
      "Who do I write to if my Aurora X2 breaks?", "How can I reach customer service for the Aurora X2?",
      "Where do I send a repair request for the Aurora X2?"],
     "Write to help@aurora-bikes.example or call +44 20 7946 0321, Monday to Friday, 9:00 to 17:00."),
    (["How do I reset the display of the Aurora X2?", "My Aurora X2 display froze, what do I do?",
      "How can I restart the Aurora X2 screen?", "The Aurora X2 display is stuck. How do I reset it?",
      "What is the reset procedure for the Aurora X2 display?"],
     "Hold the power and minus buttons together for 10 seconds until the logo appears, then release."),
    (["Can I ride the Aurora X2 in the rain?", "Is the Aurora X2 waterproof?",
      "What is the water resistance rating of the Aurora X2?", "Is it safe to use the Aurora X2 in wet weather?",
      "Can the Aurora X2 get wet?"],
     "Yes: the Aurora X2 is rated IP65, so rain is fine, but do not submerge it or use a pressure washer."),
    (["How much does the Aurora X2 cost?", "What is the price of the Aurora X2?",
      "How expensive is the Aurora X2?", "What does an Aurora X2 sell for?",
      "Can you tell me the Aurora X2 price?"],
     "The Aurora X2 costs 2,490 euros, including the charger and a front light."),
    (["What tyre pressure should I use on the Aurora X2?", "How much air goes in the Aurora X2 tyres?",
      "What is the recommended tyre pressure for the Aurora X2?", "How hard should I pump the Aurora X2 tyres?",
      "Which pressure do the Aurora X2 tyres need?"],
     "Pump the 27.5 x 2.4 inch tyres to 2.5 bar (36 psi); go down to 2.0 bar on gravel."),
    (["How often should the Aurora X2 be serviced?", "When does the Aurora X2 need a service?",
      "What is the service interval of the Aurora X2?", "How regularly should I maintain my Aurora X2?",
      "How many kilometres between Aurora X2 services?"],
     "Service the Aurora X2 every 2,000 km or once a year, whichever comes first."),
    (["How many gears does the Aurora X2 have?", "What gearing does the Aurora X2 use?",
      "Does the Aurora X2 have a derailleur?", "What drivetrain is on the Aurora X2?",
      "How do gears work on the Aurora X2?"],
     "The Aurora X2 has a Shimano Nexus 8-speed hub with a belt drive, so there is no derailleur or chain."),
]

SYSTEM = "You are the support assistant of Aurora Bikes. Answer briefly and precisely."


def main(path: Path = Path(__file__).parent / "data" / "aurora_support.jsonl", seed: int = 0) -> None:
    rng = random.Random(seed)
    rows = []
    for questions, answer in FACTS:
        for q in questions:
            rows.append({"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q},
                                      {"role": "assistant", "content": answer}],
                         "metadata": {"source": "demo", "fact": answer[:32]}})
    rng.shuffle(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print(f"wrote {len(rows)} conversations to {path}")


if __name__ == "__main__":
    main()
