"""lm-evaluation-harness scores tasks through our server: `local-completions` (log-likelihood, from the scored
echo) and `local-chat-completions` (generation). The served log-likelihoods must equal lm-eval's own in-process
`hf` model on the same weights: the server is a faithful scorer, not merely a responsive one.

Run: pytest -m "" -q tests/neural_chat_app/test_server_lm_eval.py
"""

from __future__ import annotations

import json

import pytest

lm_eval = pytest.importorskip("lm_eval")
pytestmark = [pytest.mark.integration, pytest.mark.slow]

QUESTIONS = [
    ("The capital of France is", ["Paris", "Berlin", "Rome"], 0),
    ("Intel Xeon processors with AMX run", ["bfloat16 matrix multiplications", "crowded trails"], 0),
    ("I love hiking but I am not a fan of", ["crowded trails", "the capital"], 0),
    ("def add(a, b):", ["return a + b", "Paris"], 0),
]


def _task_folder(tmp_path):
    data = tmp_path / "capitals.jsonl"
    data.write_text("".join(json.dumps({"q": q, "choices": c, "gold": g}) + "\n" for q, c, g in QUESTIONS))
    (tmp_path / "tiny_mc.yaml").write_text(f"""task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files: {{test: {data}}}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{q}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: gold
target_delimiter: " "
metric_list:
  - metric: acc
""")
    (tmp_path / "tiny_gen.yaml").write_text(f"""task: tiny_gen
dataset_path: json
dataset_kwargs:
  data_files: {{test: {data}}}
test_split: test
output_type: generate_until
doc_to_text: "{{{{q}}}}"
doc_to_target: "{{{{choices[0]}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 8
  do_sample: false
metric_list:
  - metric: exact_match
""")
    return tmp_path


def _evaluate(tasks, folder, model, model_args, **kwargs):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    return simple_evaluate(model=model, model_args=model_args, tasks=tasks,
                           task_manager=TaskManager(include_path=str(folder)), log_samples=True, **kwargs)


def _loglikelihoods(results, task):
    return [[float(r[0][0]) for r in s["resps"]] for s in sorted(results["samples"][task], key=lambda s: s["doc_id"])]


def test_loglikelihood_through_the_server_equals_lm_evals_own(make_server, tiny_backend, tiny_model_dir, tmp_path):
    server = make_server()
    folder = _task_folder(tmp_path)
    served = _evaluate(["tiny_mc"], folder, "local-completions",
                       {"model": "default", "base_url": server.url + "/v1/completions",
                        "tokenizer": str(tiny_model_dir), "tokenizer_backend": "huggingface",
                        "tokenized_requests": True, "num_concurrent": 1, "max_retries": 1})
    local = _evaluate(["tiny_mc"], folder, "hf",
                      {"pretrained": str(tiny_model_dir), "dtype": str(tiny_backend.model.dtype).split(".")[-1]},
                      device="cpu")
    got, expected = _loglikelihoods(served, "tiny_mc"), _loglikelihoods(local, "tiny_mc")
    assert len(got) == len(QUESTIONS)
    # lm-eval's hf model takes log_softmax in the model's dtype; ours in fp32 from the same logits: in bf16 the
    # two differ by bf16's rounding (8 bits of mantissa: 0.4%), in fp32 not at all
    for a, b in zip(got, expected):
        assert a == pytest.approx(b, rel=0.01, abs=0.05), (got, expected)
    assert served["results"]["tiny_mc"]["acc,none"] == local["results"]["tiny_mc"]["acc,none"]
    assert server.state.chatlog.sessions() == []  # scoring traffic is not logged as conversations


def test_generation_through_the_chat_endpoint(make_server, tmp_path):
    server = make_server()
    results = _evaluate(["tiny_gen"], _task_folder(tmp_path), "local-chat-completions",
                        {"model": "default", "base_url": server.url + "/v1/chat/completions", "num_concurrent": 1,
                         "max_retries": 1}, apply_chat_template=True)
    samples = results["samples"]["tiny_gen"]
    assert len(samples) == len(QUESTIONS)
    assert all(isinstance(s["resps"][0][0], str) for s in samples)
    assert "exact_match,none" in results["results"]["tiny_gen"]
