"""The extraction benchmark's verdicts and table: the natural set first with its targets, then the template set's
bar, from real metrics of made-up replies (no model)."""

from __future__ import annotations

import json

from benchmarks import extraction_quality as bench
from finetune.evaluate.metrics import extraction_metrics

GOLD = json.dumps({"attributes": [{"type": "BEHAVIOR", "value": "cycle to work"}],
                   "aspects": [{"aspect": "battery", "sentiment": "POSITIVE"}], "sentiment": "POSITIVE"})
PARAPHRASE = json.dumps({"attributes": [{"type": "BEHAVIOR", "value": "cycling to work"}],
                         "aspects": [{"aspect": "the battery", "sentiment": "POSITIVE"}], "sentiment": "POSITIVE"})
EMPTY = json.dumps({"attributes": [], "aspects": [], "sentiment": "NEUTRAL"})


def _results(tuned_reply: str, matching: str, examples: int = 4) -> dict:
    runs = []
    for label, reply in (("base", EMPTY), ("tuned", tuned_reply)):
        for constrained in (False, True):
            metrics = extraction_metrics([reply] * examples, [GOLD] * examples, {"type": "object"}, matching)
            runs.append({"label": label, "model": label, "constrained": constrained, "few_shot": 0,
                         "backend": "torch", "metrics": metrics})
    return {"examples": examples, "config": {"matching": matching}, "runs": runs, "task": "extraction",
            "models": [{"label": "base", "path": "base"}, {"label": "tuned", "path": "tuned"}]}


def test_lenient_matching_meets_the_natural_targets_that_exact_matching_misses():
    assert all(c["pass"] for c in bench.check_targets(_results(PARAPHRASE, "lenient")))
    exact = {c["check"]: c["pass"] for c in bench.check_targets(_results(PARAPHRASE, "exact"))}
    assert not exact["natural: attribute_f1, tuned, constrained"]  # "cycling" is not "cycle" to the letter
    assert exact["natural: aspect_f1, tuned, constrained"]  # "the battery" normalizes to "battery"
    assert exact["natural: overall_sentiment_accuracy, tuned, constrained"]


def test_the_table_leads_with_the_natural_set_and_states_the_machine():
    payload = {"machine": {"hardware": {"cpu_model": "Test CPU", "usable_cores": 2}, "omp_num_threads": "2",
                           "load_average_1min": 0.1},
               "evaluation": {"natural": _results(PARAPHRASE, "lenient"), "templates": _results(GOLD, "exact")},
               "training": {"wall_seconds": 60, "cpu_seconds": 120, "measured_by": "test"}}
    payload["checks"] = (bench.check_targets(payload["evaluation"]["natural"])
                         + bench.check_bar(payload["evaluation"]["templates"])
                         + bench.check_training(payload["training"]))
    table = bench.render(payload)
    assert "Test CPU" in table
    assert table.index("== natural") < table.index("== templates")
    assert "lenient matching" in table and "BEHAVIOR 100/100/100" in table
    assert "PASS  fine-tuning CPU time (min): 2.0" in table
