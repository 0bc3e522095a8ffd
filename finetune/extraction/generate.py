"""Generate labelled conversational utterances for the extraction task, deterministically from a seed.

Each example is a chat record (system instruction, user text, assistant JSON) whose label is built together with
its text, so it is right by construction. Variety: many paraphrase templates per label, negations ("not a fan
of X" is a DISLIKE, "the wifi wasn't great" is NEGATIVE), contrast ("X but Y"), several sentences per turn,
typos in the template words (never inside the labelled phrase), filler with nothing to extract, and multi-turn
transcripts where the agent's lines carry distractors that must not be extracted.

The held-out set uses templates, connectors, fillers and agent lines that the training set never uses, so its
score measures generalization to new phrasings rather than memorized ones.

    python -m finetune.extraction.generate --train 2000 --heldout 300 --seed 0 --out examples/data
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from finetune.extraction import SYSTEM_PROMPT, to_json

# ---- slot values ----------------------------------------------------------------------------------------------

INTERESTS = [
    "hiking", "jazz", "photography", "cooking", "chess", "rock climbing", "gardening", "board games", "astronomy",
    "yoga", "baking bread", "video games", "salsa dancing", "birdwatching", "knitting", "sci-fi novels", "podcasts",
    "cycling", "surfing", "painting", "football", "tennis", "anime", "history documentaries", "camping", "pottery",
    "marathons", "learning languages", "wine tasting", "vintage cars", "jigsaw puzzles", "opera", "skiing",
]
PREFERENCES = [
    "window seats", "oat milk", "dark mode", "early flights", "aisle seats", "spicy food", "paper books",
    "quiet cafes", "electric cars", "vegetarian dishes", "green tea", "small hotels", "public transport",
    "text messages", "morning workouts", "mechanical keyboards", "decaf coffee", "cash payments", "sparkling water",
    "train travel", "video calls", "handwritten notes", "soft pillows", "cold brew", "open offices",
]
DISLIKES = [
    "loud music", "crowded places", "long meetings", "cold weather", "spam calls", "small talk", "horror movies",
    "waiting in line", "cilantro", "traffic jams", "early mornings", "reality TV", "flying", "pop-up ads",
    "humid weather", "olives", "noisy neighbors", "group chats", "automated phone menus", "tourist traps",
    "fast fashion", "mushrooms", "red-eye flights", "subscription fees",
]
BEHAVIORS = [
    "work night shifts", "cook at home", "commute by bike", "shop online", "travel for work",
    "order takeout on Fridays", "read before bed", "walk the dog twice a day", "work from home", "skip breakfast",
    "drink coffee every morning", "play guitar on weekends", "volunteer at a shelter", "check email at night",
    "run before work", "meal prep on Sundays", "take the bus", "stream movies every night", "visit my parents monthly",
    "book trips last minute", "pay with my phone", "go to the gym three times a week",
]
DOMAINS = {
    "restaurant": ["food", "service", "delivery", "price", "portions", "staff", "ambience", "dessert", "menu",
                   "wait time", "pizza", "coffee"],
    "hotel": ["room", "staff", "location", "breakfast", "wifi", "pool", "check-in", "bed", "view", "cleanliness",
              "parking", "shower"],
    "product": ["battery", "screen", "camera", "price", "shipping", "packaging", "sound", "build quality", "charger",
                "customer support", "keyboard", "warranty"],
    "app": ["interface", "speed", "support", "updates", "notifications", "login", "search", "pricing", "design",
            "sync"],
}
CONTEXT = {
    "restaurant": (["We ordered from a new place last night.", "Had dinner at that bistro downtown.",
                    "Tried the new burger joint with friends."],
                   ["Went out for lunch near the office.", "We got food delivered yesterday."]),
    "hotel": (["Just got back from a weekend trip.", "We stayed three nights at the resort.",
               "I checked out this morning."],
              ["Back home after the conference hotel.", "We spent a week by the coast."]),
    "product": (["I got my new phone on Monday.", "Bought a laptop last month.", "My headphones arrived today."],
                ["The tablet I ordered came in.", "I've had this smartwatch for a while now."]),
    "app": (["I've been using the banking app for a week.", "Switched to a new notes app.",
             "Updated the fitness app yesterday."],
            ["Tried the travel app on my trip.", "My team moved to a new chat app."]),
}

# ---- templates: (train, held-out); {x} is the labelled phrase -----------------------------------------------------

ATTRIBUTE_TEMPLATES = {
    "INTEREST": ([
        "I love {x}", "I'm really into {x}", "{x} is my favorite hobby", "I spend most weekends on {x}",
        "I've been passionate about {x} for years", "I'm a huge fan of {x}", "{x} is what I do to relax",
        "I got hooked on {x} recently", "nothing beats {x} for me", "I enjoy {x} a lot", "my hobby is {x}",
        "I'm crazy about {x}", "I can talk about {x} for hours",
        "{x} is my passion", "I'm all about {x}", "big fan of {x} here", "I'm really keen on {x}",
        "{x} is a big part of my life", "I picked up {x} last year and love it", "I'm hooked on {x}",
        "my weekends are all about {x}", "I find {x} fascinating",
    ], [
        "I'm obsessed with {x}", "{x} has been my thing since college", "honestly {x} keeps me sane",
        "you'll usually find me doing {x}", "I never get bored of {x}",
    ]),
    "PREFERENCE": ([
        "I prefer {x}", "I always go for {x}", "I'd rather have {x}", "{x} work best for me",
        "I usually pick {x}", "given the choice I take {x}", "I tend to choose {x}", "{x} suit me better",
        "I'm a {x} person", "I always ask for {x}", "if possible I go with {x}",
        "{x} are my first choice", "I'd pick {x} any day", "I favor {x}", "{x} please, whenever possible",
        "for me it has to be {x}", "I'm more of a {x} kind of person", "I generally opt for {x}",
        "I like having {x}",
    ], [
        "{x} every time, if I can", "I lean towards {x}", "I'll take {x} over anything else",
        "my go-to is {x}",
    ]),
    "DISLIKE": ([
        "I hate {x}", "I'm not a fan of {x}", "I can't stand {x}", "{x} drive me crazy", "I really dislike {x}",
        "I try to avoid {x}", "{x} are not for me", "I don't enjoy {x} at all", "I'm not into {x}",
        "I've never liked {x}", "{x} annoy me", "I'd never choose {x}",
        "I stay away from {x}", "{x} really bother me", "I have no patience for {x}", "I detest {x}",
        "{x} get on my nerves", "I'm sick of {x}", "no {x} for me, thanks", "I dread {x}",
    ], [
        "I'm allergic to {x}, figuratively speaking", "{x} are my pet peeve", "I steer clear of {x}",
        "don't get me started on {x}", "{x} make me want to scream",
    ]),
    "BEHAVIOR": ([
        "I usually {x}", "I tend to {x}", "most days I {x}", "I always {x}", "I {x}", "I normally {x}",
        "every week I {x}", "I often {x}", "I have a habit to {x}", "as a rule I {x}",
        "I regularly {x}", "I generally {x}", "on most days I {x}", "I've started to {x}",
        "I try to {x} whenever I can", "it's normal for me to {x}", "I still {x}",
    ], [
        "these days I {x}", "my routine is to {x}", "I make a point to {x}", "like clockwork I {x}",
    ]),
}
ASPECT_TEMPLATES = {
    "POSITIVE": ([
        "the {x} was great", "the {x} was excellent", "I really liked the {x}", "loved the {x}",
        "the {x} was perfect", "the {x} is amazing", "the {x} exceeded my expectations", "the {x} was top notch",
        "really happy with the {x}", "the {x} wasn't bad at all", "the {x} was fantastic", "the {x} is really good",
    ], [
        "the {x} was superb", "the {x} blew me away", "the {x} deserves five stars", "ten out of ten for the {x}",
    ]),
    "NEGATIVE": ([
        "the {x} was terrible", "the {x} was awful", "I was disappointed with the {x}", "the {x} was not good at all",
        "the {x} wasn't great", "hated the {x}", "the {x} was a letdown", "the {x} could have been much better",
        "not happy with the {x}", "the {x} is a joke", "the {x} was really bad", "the {x} was not worth it",
    ], [
        "the {x} was a total disaster", "the {x} left a lot to be desired", "the {x} was far from acceptable",
        "zero stars for the {x}",
    ]),
    "NEUTRAL": ([
        "the {x} was okay", "the {x} was fine, nothing special", "the {x} was average", "the {x} was as expected",
        "the {x} was decent I guess", "the {x} is alright", "the {x} was standard",
    ], [
        "the {x} was so-so", "the {x} was neither good nor bad", "the {x} did the job",
    ]),
}
CONNECTORS = ([" but ", ", but ", " though ", ", and ", " and ", "; "], [" whereas ", ", on the other hand, ",
                                                                       ", yet "])
FILLERS = ([
    "Hi there.", "Just wanted to share some thoughts.", "Anyway, thanks for asking.", "Long story short.",
    "Not sure if this matters.", "Hello!", "That's about it.", "Thanks.",
], ["Quick note from me.", "Hope this helps.", "Well, here goes."])
EMPTY_UTTERANCES = ([
    "What time do you open tomorrow?", "Can you send me the invoice again?", "Hi, is anyone there?",
    "I need to change my delivery address.", "How do I reset my password?", "Where is my order?",
], ["Could you call me back later?", "Is there a number I can reach you on?"])
AGENT_LINES = ([
    "How can I help you today?", "How was your experience with us?", "Anything else you'd like to tell us?",
    "Thanks for reaching out! Many customers love our {d}.", "Sorry to hear that. What else happened?",
    "Great! Tell me more about yourself.", "Our {d} just got an upgrade, by the way.",
], [
    "Could you describe your visit?", "Noted. Most people say the {d} is excellent.", "What else is on your mind?",
])
SENTIMENT_OF = {"INTEREST": "POSITIVE", "PREFERENCE": "POSITIVE", "DISLIKE": "NEGATIVE", "BEHAVIOR": "NEUTRAL"}


@dataclass
class Clause:
    text: str
    attributes: list[dict] = field(default_factory=list)
    aspects: list[dict] = field(default_factory=list)
    polarity: str = "NEUTRAL"


def _typo(word: str, rng: random.Random) -> str:
    if len(word) < 4 or not word.isalpha():
        return word
    i = rng.randrange(1, len(word) - 1)
    op = rng.randrange(3)
    if op == 0:
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if op == 1:
        return word[:i] + word[i + 1:]
    return word[:i] + word[i] + word[i:]


def _noisy(template: str, rng: random.Random, rate: float) -> str:
    """Typos and dropped apostrophes in the template's own words; the {x} slot is left intact."""
    words = template.split(" ")
    out = []
    for w in words:
        if "{" not in w and rng.random() < rate:
            w = w.replace("'", "") if "'" in w and rng.random() < 0.5 else _typo(w, rng)
        out.append(w)
    return " ".join(out)


class Generator:
    def __init__(self, seed: int, heldout: bool, typo_rate: float = 0.04):
        self.rng = random.Random(seed)
        self.split = 1 if heldout else 0
        self.typo_rate = typo_rate

    def pick(self, pair):
        return self.rng.choice(pair[self.split])

    def attribute(self, kind: str, used: set) -> Clause:
        pool = {"INTEREST": INTERESTS, "PREFERENCE": PREFERENCES, "DISLIKE": DISLIKES, "BEHAVIOR": BEHAVIORS}[kind]
        value = self.rng.choice([v for v in pool if v not in used])
        used.add(value)
        template = _noisy(self.pick(ATTRIBUTE_TEMPLATES[kind]), self.rng, self.typo_rate)
        return Clause(template.format(x=value), attributes=[{"type": kind, "value": value}],
                      polarity=SENTIMENT_OF[kind])

    def aspect(self, domain: str, sentiment: str, used: set) -> Clause:
        name = self.rng.choice([a for a in DOMAINS[domain] if a not in used])
        used.add(name)
        template = _noisy(self.pick(ASPECT_TEMPLATES[sentiment]), self.rng, self.typo_rate)
        return Clause(template.format(x=name), aspects=[{"aspect": name, "sentiment": sentiment}],
                      polarity=sentiment)

    def clauses(self, domain: str) -> list[Clause]:
        rng = self.rng
        n = rng.choices([1, 2, 3, 4], weights=[3, 4, 3, 1])[0]
        used: set = set()
        out = []
        for _ in range(n):
            if rng.random() < 0.5:
                out.append(self.aspect(domain, rng.choices(("POSITIVE", "NEGATIVE", "NEUTRAL"), (4, 4, 2))[0], used))
            else:
                out.append(self.attribute(rng.choice(list(ATTRIBUTE_TEMPLATES)), used))
        return out

    def sentences(self, clauses: list[Clause]) -> list[str]:
        """Join clauses into sentences: sometimes two per sentence with a connector (contrast), else one each."""
        out, i = [], 0
        while i < len(clauses):
            if i + 1 < len(clauses) and self.rng.random() < 0.5:
                text = clauses[i].text + self.pick(CONNECTORS) + clauses[i + 1].text
                i += 2
            else:
                text = clauses[i].text
                i += 1
            out.append(text[0].upper() + text[1:] + self.rng.choice([".", ".", ".", "!", ""]))
        return out

    def example(self) -> dict:
        rng = self.rng
        domain = rng.choice(list(DOMAINS))
        if rng.random() < 0.05:
            text, clauses = self.pick(EMPTY_UTTERANCES), []
        else:
            clauses = self.clauses(domain)
            parts = self.sentences(clauses)
            if rng.random() < 0.4:
                parts.insert(0, self.pick(CONTEXT[domain]))
            if rng.random() < 0.25:
                parts.insert(rng.randrange(len(parts) + 1), self.pick(FILLERS))
            if rng.random() < 0.3 and len(parts) >= 2:
                text = self.transcript(parts, domain)
            else:
                text = " ".join(parts)
        label = {
            "attributes": [a for c in clauses for a in c.attributes],
            "aspects": [a for c in clauses for a in c.aspects],
            "sentiment": overall([c.polarity for c in clauses]),
        }
        return {"messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text},
                             {"role": "assistant", "content": to_json(label)}]}

    def transcript(self, parts: list[str], domain: str) -> str:
        """A multi-turn exchange: the user's sentences split over turns, agent lines (with distractors) between."""
        cut = self.rng.randrange(1, len(parts))
        lines = []
        if self.rng.random() < 0.5:
            lines.append("Agent: " + self.agent_line(domain))
        lines.append("User: " + " ".join(parts[:cut]))
        lines.append("Agent: " + self.agent_line(domain))
        lines.append("User: " + " ".join(parts[cut:]))
        return "\n".join(lines)

    def agent_line(self, domain: str) -> str:
        return self.pick(AGENT_LINES).format(d=self.rng.choice(DOMAINS[domain]))


def overall(polarities: list[str]) -> str:
    has_pos, has_neg = "POSITIVE" in polarities, "NEGATIVE" in polarities
    if has_pos and has_neg:
        return "MIXED"
    return "POSITIVE" if has_pos else ("NEGATIVE" if has_neg else "NEUTRAL")


def generate(n: int, seed: int, heldout: bool, exclude: set[str] | None = None) -> list[dict]:
    """`n` distinct examples; texts in `exclude` (e.g. the other split's) are skipped."""
    gen = Generator(seed, heldout)
    seen = set(exclude or ())
    out = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n:
            raise RuntimeError(f"Could only make {len(out)} distinct examples of the {n} asked for")
        record = gen.example()
        text = record["messages"][1]["content"]
        if text in seen:
            continue
        seen.add(text)
        out.append(record)
    return out


def write_jsonl(records: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m finetune.extraction.generate", description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=int, default=2000, help="training examples")
    parser.add_argument("--heldout", type=int, default=300, help="held-out examples (templates unseen in training)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="examples/data", help="folder for extraction_{train,heldout}.jsonl")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    train = generate(args.train, args.seed, heldout=False)
    heldout = generate(args.heldout, args.seed + 1, heldout=True,
                       exclude={r["messages"][1]["content"] for r in train})
    out = Path(args.out)
    write_jsonl(train, out / "extraction_train.jsonl")
    write_jsonl(heldout, out / "extraction_heldout.jsonl")
    print(f"wrote {len(train)} training and {len(heldout)} held-out examples to {out}")


if __name__ == "__main__":
    main()
