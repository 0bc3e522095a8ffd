"""Evaluate fine-tuned models against their base on held-out data: the proof that fine-tuning helped.

    from finetune.evaluate import EvalConfig, evaluate_models
    results = evaluate_models(["smollm2-135m-instruct", "runs/extraction"],
                              EvalConfig(task="extraction", data="examples/data/extraction_heldout.jsonl"))

Every model (the first one is the baseline) is scored on the same examples with the same greedy generation
settings: perplexity of the references, BLEU / chrF / ROUGE-1/2/L / exact match / token reduction of the
generated replies and, for `task="extraction"`, JSON and schema validity, attribute precision/recall/F1,
aspect-sentiment accuracy and confusion matrices, with and without constrained decoding. A Markdown report,
PNG plots and the JSON results are written to `output_dir` (by default `<last model>/eval/`).

CLI: python -m finetune.evaluate --task extraction --data examples/data/extraction_heldout.jsonl \
         --models smollm2-135m-instruct runs/extraction --base-few-shot 3
"""

from finetune.evaluate.data import EvalError, load_examples
from finetune.evaluate.run import (
    HEADLINE,
    EvalConfig,
    evaluate_after_training,
    evaluate_models,
    merge_results,
    summary_table,
)

__all__ = ["HEADLINE", "EvalConfig", "EvalError", "evaluate_after_training", "evaluate_models", "load_examples",
           "merge_results", "summary_table"]
