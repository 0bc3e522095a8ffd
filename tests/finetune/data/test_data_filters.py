"""Each filter on its own, then the cheapest-first chain (finetune/data/filters.py)."""

import pytest

from finetune.data.config import FilterConfig
from finetune.data.filters import (
    build_filters,
    count_tokens,
    first_failure,
    language,
    length_bounds,
    metadata_predicate,
    min_turns,
    repetition,
    repetition_share,
    role_order,
)
from finetune.data.records import Conversation


def conv(roles, content="A sentence with several different words in it.", metadata=None):
    return Conversation([{"role": r, "content": content} for r in roles], metadata or {}, "f:1")


@pytest.mark.parametrize("roles, allow, problem", [
    (["user", "assistant"], False, None),
    (["system", "user", "assistant", "user", "assistant"], False, None),
    (["assistant", "user", "assistant"], False, "first non-system message must be from the user"),
    (["user", "assistant", "user"], False, "last message must be from the assistant"),
    (["user", "assistant", "assistant"], False, "two assistant messages in a row at message 2"),
    (["user", "assistant", "assistant"], True, None),
    (["user", "user", "assistant"], True, "two user messages in a row"),
    (["user", "system", "assistant"], False, "only the first may be system"),
    (["system"], False, "first non-system message must be from the user"),
])
def test_role_order(roles, allow, problem):
    verdict = role_order(conv(roles), allow)
    if problem is None:
        assert verdict is None
    else:
        assert verdict[0] == "role_order" and problem in verdict[1]


def test_min_turns_counts_assistant_turns():
    two = conv(["user", "assistant", "user", "assistant"])
    assert min_turns(two, 2) is None
    assert min_turns(two, 3) == ("min_turns", "2 assistant turn(s), fewer than min_turns=3")


@pytest.mark.parametrize("predicate, metadata, ok", [
    ("metadata.augmented == true", {"augmented": True}, True),
    ("metadata.augmented == true", {"augmented": False}, False),
    ("metadata.augmented == true", {}, False),
    ("metadata.token_reduction >= 50", {"token_reduction": 50}, True),
    ("metadata.token_reduction > 50", {"token_reduction": 50}, False),
    ("metadata.token_reduction < 10", {"token_reduction": "n/a"}, False),  # wrong type: fails, no crash
    ("metadata.source != web", {"source": "app"}, True),
    ("metadata.stats.lang == 'en'", {"stats": {"lang": "en"}}, True),
    ("metadata.feedback_down <= 0", {"feedback_down": 1}, False),
])
def test_metadata_predicates(predicate, metadata, ok):
    verdict = metadata_predicate(predicate)(conv(["user", "assistant"], metadata=metadata))
    assert (verdict is None) == ok
    if not ok:
        assert verdict[0] == "metadata" and predicate.split()[0] in verdict[1]


def test_length_bounds():
    assert length_bounds(5, 1, 10, "chars") is None
    assert length_bounds(0, 1, None, "chars") == ("min_chars", "0 chars, fewer than min_chars=1")
    assert length_bounds(11, None, 10, "tokens") == ("max_tokens", "11 tokens, more than max_tokens=10")


@pytest.mark.parametrize("text, low, high", [
    ("buy now " * 30, 0.9, 1.0),
    ("the cat sat on the mat " * 5 + "and then it slept soundly all afternoon long in the sun", 0.3, 0.6),
    ("hahahahahahahahahahahahahahahahahaha", 0.9, 1.0),  # no spaces: characters are the units
    ("A perfectly ordinary answer that explains how photosynthesis turns light into sugar in leaves.", 0.0, 0.0),
    ("too short", 0.0, 0.0),
])
def test_repetition_share(text, low, high):
    assert low <= repetition_share(text) <= high


def test_repetition_filter_names_the_message():
    c = Conversation([{"role": "user", "content": "What should I do?"},
                      {"role": "assistant", "content": "click here " * 40}], {}, "f:1")
    code, detail = repetition(c, 0.5)
    assert code == "repetition" and detail.startswith("message 1 repeats")
    assert repetition(conv(["user", "assistant"]), 0.5) is None


def test_language_filter():
    en = conv(["user", "assistant"], "The weather is lovely today and I would like to walk in the park.")
    fr = conv(["user", "assistant"], "Il fait très beau aujourd'hui et je voudrais me promener dans le parc.")
    assert language(en, ["en"]) is None
    assert language(fr, ["en"]) == ("language", "detected language 'fr', not in ['en']")
    assert language(fr, ["en", "fr"]) is None


def test_token_count_uses_the_chat_template(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    c = conv(["user", "assistant"], "The quick brown fox.")
    plain = len(tok("The quick brown fox.")["input_ids"]) * 2
    assert count_tokens(c, tok) > plain  # the template adds <|im_start|>role ... <|im_end|> around each turn


def test_chain_runs_cheapest_first_and_stops_at_the_first_failure():
    cfg = FilterConfig(min_turns=2, min_chars=10_000, metadata=["metadata.augmented == true"])
    names = [name for name, _ in build_filters(cfg)]
    assert names == ["role_order", "min_turns", "metadata", "chars", "repetition"]
    c = conv(["user", "assistant"], metadata={"augmented": False})
    assert first_failure(c, build_filters(cfg))[0] == "min_turns"
    assert first_failure(c, build_filters(FilterConfig())) is None


def test_filters_can_be_turned_off():
    cfg = FilterConfig(role_order=False, min_turns=0, max_repetition=None)
    assert build_filters(cfg) == []
    assert first_failure(conv(["assistant", "assistant"], "spam " * 50), build_filters(cfg)) is None


def test_the_repetition_shortcut_decides_as_the_full_share():
    import random

    from finetune.data.filters import _share_over, repetition_share

    rng = random.Random(13)
    words = ["buy", "now", "the", "a", "cat", "sat", "on", "mat"]
    for _ in range(2000):
        text = " ".join(rng.choice(words[: rng.randint(2, 8)]) for _ in range(rng.randint(0, 60)))
        if rng.random() < 0.2:
            text = text.replace(" ", "")
        for limit in (0.2, 0.5, 0.9):
            share = repetition_share(text)
            assert _share_over(text, limit) == (share if share > limit else None), (text, limit)


def test_tokens_counted_in_a_batch_are_counted_one_by_one(tiny_model_dir):
    from finetune.data.filters import count_tokens, count_tokens_batch
    from finetune.models import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    convs = [Conversation([{"role": "user", "content": "Hi " * i + "there?"},
                           {"role": "assistant", "content": "Hello " * (i % 5) + "friend."}], {}, f"a:{i}")
             for i in range(20)]
    assert count_tokens_batch(convs, tokenizer) == [count_tokens(c, tokenizer) for c in convs]
    assert count_tokens_batch([], tokenizer) == []
