"""Metrics on generated text against references: pure functions of strings, no model needed.

Text generation: BLEU and chrF (sacrebleu, corpus level), ROUGE-1/2/L F-measure (rouge-score, mean over
examples), exact match, and token reduction (how many fewer tokens the outputs use than the references, in
percent: the metric of the EmoGPT guide). Extraction: JSON validity, schema validity, attribute
precision/recall/F1 on (type, value) overall and per type, aspect-sentiment precision/recall/F1 overall and per
sentiment with a confusion matrix, overall sentiment accuracy with its own; values and aspects matched exactly or
leniently (finetune.extraction.matching).
"""

from __future__ import annotations

import json
import re
from collections import Counter

from finetune.extraction import OVERALL_SENTIMENTS, SENTIMENTS

MISSING = "MISSING"


def text_metrics(predictions: list[str], references: list[str], count_tokens=None) -> dict:
    """BLEU, chrF, ROUGE-1/2/L, exact match (all 0-100) and token reduction (%) if `count_tokens` is given."""
    import sacrebleu
    from rouge_score import rouge_scorer

    _check_lengths(predictions, references)
    out = {
        "bleu": sacrebleu.corpus_bleu(predictions, [references]).score,
        "chrf": sacrebleu.corpus_chrf(predictions, [references]).score,
    }
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    sums = Counter()
    for pred, ref in zip(predictions, references):
        for name, score in scorer.score(ref, pred).items():
            sums[name] += score.fmeasure
    for name in ("rouge1", "rouge2", "rougeL"):
        out[name] = 100 * sums[name] / len(predictions)
    out["exact_match"] = 100 * sum(p.strip() == r.strip() for p, r in zip(predictions, references)) / len(predictions)
    if count_tokens is not None:
        out.update(token_reduction(predictions, references, count_tokens))
    return out


def token_reduction(predictions: list[str], references: list[str], count_tokens) -> dict:
    """Percent fewer tokens in the outputs than in the references (negative: the outputs are longer)."""
    generated = sum(count_tokens(p) for p in predictions)
    reference = sum(count_tokens(r) for r in references)
    return {
        "generated_tokens": generated,
        "reference_tokens": reference,
        "token_reduction_pct": 100 * (reference - generated) / reference if reference else 0.0,
    }


def _check_lengths(predictions, references) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        raise ValueError("No predictions to score: the eval set is empty")


# ---- extraction ------------------------------------------------------------------------------------------------

def parse_strict(text: str):
    """The output as JSON, or None: the whole reply (whitespace aside) must be one JSON object."""
    try:
        obj = json.loads(text.strip())
    except (json.JSONDecodeError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def parse_lenient(text: str):
    """The first JSON object inside the reply (code fences and chatter around it allowed), or None.

    Field scores use this so an unconstrained base model is not scored zero for wrapping good JSON in prose;
    the JSON validity rate uses `parse_strict`.
    """
    obj = parse_strict(text)
    if obj is not None:
        return obj
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            obj, _ = decoder.raw_decode(text[match.start():])
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return obj
    return None


def normalize(value) -> str:
    text = str(value).lower().strip()
    text = re.sub(r"[^\w\s-]", " ", text)
    text = re.sub(r"^(the|a|an|my|our)\s+", "", text.strip())
    return re.sub(r"\s+", " ", text).strip()


def _attributes(obj) -> list[tuple[str, str]]:
    items = obj.get("attributes") if isinstance(obj, dict) else None
    if not isinstance(items, list):
        return []
    found = {(str(a.get("type", "")).upper(), normalize(a.get("value", ""))) for a in items if isinstance(a, dict)}
    return sorted(found)


def _aspects(obj) -> dict[str, str]:
    items = obj.get("aspects") if isinstance(obj, dict) else None
    if not isinstance(items, list):
        return {}
    out = {}
    for a in items:
        if isinstance(a, dict) and "aspect" in a:
            out.setdefault(normalize(a["aspect"]), str(a.get("sentiment", "")).upper())
    return out


def _prf(tp: int, n_pred: int, n_gold: int) -> tuple[float, float, float]:
    p = tp / n_pred if n_pred else (1.0 if not n_gold else 0.0)
    r = tp / n_gold if n_gold else 1.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return 100 * p, 100 * r, 100 * f


def _prf_table(counts: dict[str, Counter]) -> dict[str, dict[str, float]]:
    return {k: dict(zip(("precision", "recall", "f1"), (round(x, 2) for x in _prf(c["tp"], c["pred"], c["gold"]))))
            for k, c in counts.items()}


def _pairs(predicted: list, gold: list, same) -> list[tuple]:
    """Greedy one-to-one pairing, each gold item with the first unpaired prediction that `same` accepts."""
    free, pairs = list(predicted), []
    for g in gold:
        for p in free:
            if same(p, g):
                free.remove(p)
                pairs.append((p, g))
                break
    return pairs


MATCHING = ("exact", "lenient")


def extraction_metrics(predictions: list[str], references: list[str], schema: dict | None = None,
                       matching: str = "exact") -> dict:
    """Score extraction replies against reference JSON strings (each a valid JSON object).

    `matching` decides when a predicted attribute value or aspect names the gold one: "exact" (equal after
    normalize) or "lenient" (finetune.extraction.matching.phrases_match: half the words of the longer phrase, up
    to word endings). An attribute also needs the gold type; an aspect counts for aspect-sentiment F1 when its
    sentiment is the gold one too."""
    if matching not in MATCHING:
        raise ValueError(f"matching must be one of {MATCHING}, got {matching!r}")
    if matching == "lenient":
        from finetune.extraction.matching import phrases_match as same
    else:
        def same(a: str, b: str) -> bool:
            return a == b
    _check_lengths(predictions, references)
    validator = None
    if schema is not None:
        import jsonschema

        validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)(schema)
    n = len(predictions)
    json_valid = schema_valid = exact = 0
    overall_correct = 0
    confusion = {g: dict.fromkeys((*SENTIMENTS, MISSING), 0) for g in SENTIMENTS}
    overall_confusion = {g: dict.fromkeys((*OVERALL_SENTIMENTS, MISSING), 0) for g in OVERALL_SENTIMENTS}
    per_type = {t: Counter() for t in ("INTEREST", "PREFERENCE", "DISLIKE", "BEHAVIOR")}
    per_sentiment = {s: Counter() for s in SENTIMENTS}
    per_aspect: dict[str, Counter] = {}
    attr_all, asp_all = Counter(), Counter()
    for pred_text, ref_text in zip(predictions, references):
        gold = json.loads(ref_text)
        strict = parse_strict(pred_text)
        if strict is not None:
            json_valid += 1
            if validator is not None and validator.is_valid(strict):
                schema_valid += 1
        pred = strict if strict is not None else parse_lenient(pred_text)
        pa, ga = _attributes(pred), _attributes(gold)
        attr_pairs = _pairs(pa, ga, lambda p, g: p[0] == g[0] and same(p[1], g[1]))
        for counts, items in (("pred", pa), ("gold", ga), ("tp", [g for _, g in attr_pairs])):
            for t, _ in items:
                attr_all[counts] += 1
                if t in per_type:
                    per_type[t][counts] += 1
        ps, gs = _aspects(pred), _aspects(gold)
        named = dict(_pairs(list(ps), list(gs), same))  # predicted name -> gold name
        got_for = {g: ps[p] for p, g in named.items()}
        for sentiment in ps.values():
            asp_all["pred"] += 1
            if sentiment in per_sentiment:
                per_sentiment[sentiment]["pred"] += 1
        for name, sentiment in gs.items():
            got = got_for.get(name, MISSING)
            got = got if got in confusion[sentiment] else MISSING
            confusion[sentiment][got] += 1
            asp_all["gold"] += 1
            per_sentiment[sentiment]["gold"] += 1
            counter = per_aspect.setdefault(name, Counter())
            counter["gold"] += 1
            if got == sentiment:
                asp_all["tp"] += 1
                per_sentiment[sentiment]["tp"] += 1
                counter["correct"] += 1
        gold_overall = str(gold.get("sentiment", "")).upper()
        pred_overall = str(pred.get("sentiment", MISSING)).upper() if isinstance(pred, dict) else MISSING
        if gold_overall in overall_confusion:
            overall_confusion[gold_overall][pred_overall if pred_overall in OVERALL_SENTIMENTS else MISSING] += 1
        overall_correct += pred_overall == gold_overall
        exact += (pred is not None and len(attr_pairs) == len(pa) == len(ga) and len(named) == len(ps) == len(gs)
                  and all(got_for[g] == gs[g] for g in got_for) and pred_overall == gold_overall)
    ap, ar, af = _prf(attr_all["tp"], attr_all["pred"], attr_all["gold"])
    sp, sr, sf = _prf(asp_all["tp"], asp_all["pred"], asp_all["gold"])
    overall_counts = {s: Counter(tp=overall_confusion[s][s], gold=sum(overall_confusion[s].values()),
                                 pred=sum(row[s] for row in overall_confusion.values()))
                      for s in OVERALL_SENTIMENTS}
    return {
        "matching": matching,
        "json_validity": 100 * json_valid / n,
        "schema_validity": 100 * schema_valid / n if validator is not None else None,
        "attribute_precision": ap,
        "attribute_recall": ar,
        "attribute_f1": af,
        "aspect_sentiment_accuracy": 100 * asp_all["tp"] / asp_all["gold"] if asp_all["gold"] else None,
        "aspect_precision": sp,
        "aspect_recall": sr,
        "aspect_f1": sf,
        "overall_sentiment_accuracy": 100 * overall_correct / n,
        "extraction_exact_match": 100 * exact / n,
        "attribute_f1_by_type": {t: row["f1"] for t, row in _prf_table(per_type).items()},
        "attribute_prf_by_type": _prf_table(per_type),
        "aspect_prf_by_sentiment": _prf_table(per_sentiment),
        "overall_prf_by_sentiment": _prf_table(overall_counts),
        "aspect_accuracy_by_sentiment": {
            g: round(100 * row[g] / sum(row.values()), 2) if sum(row.values()) else None
            for g, row in confusion.items()
        },
        "aspect_accuracy_by_aspect": {
            name: round(100 * c["correct"] / c["gold"], 2) for name, c in sorted(per_aspect.items())
        },
        "aspect_confusion": confusion,
        "overall_confusion": overall_confusion,
    }


def tool_call_metrics(replies: list[str], examples) -> dict:
    """How well the replies call tools (0-100), each parsed in the model family's own format
    (finetune.tool_call_formats): of the examples whose reference calls, the share that call at all
    (`tool_call_rate`), call the same functions (`tool_name_accuracy`) and with the same arguments
    (`tool_call_exact`, JSON-equal); of those whose reference answers in words though tools are offered, the share
    that call anyway (`false_call_rate`)."""
    from finetune.tool_call_formats import parse_tool_calls

    expected = called = named = exact = 0
    unexpected = false_calls = 0
    for reply, example in zip(replies, examples):
        calls = [{"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}
                 for c in parse_tool_calls(reply, example.offered)[1]]
        if example.reference_calls:
            expected += 1
            called += bool(calls)
            named += sorted(c["name"] for c in calls) == sorted(c["name"] for c in example.reference_calls)
            exact += _canonical(calls) == _canonical(example.reference_calls)
        elif example.tools:
            unexpected += 1
            false_calls += bool(calls)
    out = {}
    if expected:
        out.update(tool_call_rate=100 * called / expected, tool_name_accuracy=100 * named / expected,
                   tool_call_exact=100 * exact / expected, tool_call_examples=expected)
    if unexpected:
        out["false_call_rate"] = 100 * false_calls / unexpected
    return out


def _canonical(calls: list[dict]) -> list[str]:
    """The calls as comparable text, in any order; arguments given as a JSON string are read first."""
    bodies = []
    for c in calls:
        arguments = c.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments or "{}")
            except ValueError:
                pass
        bodies.append(json.dumps({"name": c["name"], "arguments": arguments}, sort_keys=True))
    return sorted(bodies)
