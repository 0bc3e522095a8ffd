"""Measured quality and speed of an artifact against its source model.

- perplexity on held-out text (one token stream cut into windows, same token ids for both models);
- greedy-token agreement: for N chat prompts, the share of the first K greedy tokens equal to the source's,
  position by position, and the mean length of the identical prefix;
- speed: first-token latency (prompt of ~50 tokens, one new token) and decode tokens/s, after a warmup.
Token ids come from the source tokenizer for every runtime, so differences are the weights' alone.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from finetune.chat_template import generation_prompt

QUESTIONS = [
    "What is the capital of France?",
    "Give me three tips for staying focused while studying.",
    "Explain in one sentence what a CPU does.",
    "Write a short poem about the sea.",
    "How do I reverse a list in Python?",
    "What is the difference between weather and climate?",
    "Summarize the plot of Romeo and Juliet in two sentences.",
    "Why is the sky blue?",
    "Suggest a name for a bakery.",
    "How many legs does a spider have?",
    "What should I pack for a weekend hiking trip?",
    "Translate 'good morning' into Spanish.",
    "What is 12 times 7?",
    "Describe a cat to someone who has never seen one.",
    "What are the benefits of regular exercise?",
    "How does a bicycle stay upright?",
]
WINDOW = 256


@dataclass
class Runner:
    """A loaded model behind one interface: logits for token ids, and greedy generation."""

    model: object
    kind: str  # "torch" | "openvino" | "onnx"

    def logits(self, ids):
        import torch

        with torch.no_grad():
            out = self.model(input_ids=ids, attention_mask=torch.ones_like(ids))
        return out.logits.float()

    def greedy(self, ids, new_tokens: int) -> list[int]:
        import torch

        with torch.no_grad():
            out = self.model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                min_new_tokens=new_tokens, do_sample=False,
            )
        return out[0, ids.shape[1]:].tolist()


def load_runner(path: str | Path, backend: str | None, threads: int | None = None, dtype: str = "fp32") -> Runner:
    """Load a source folder (backend None) or an artifact folder of `backend` for evaluation; the source and a GGUF
    artifact (dequantized) in `dtype`, fp32 or bf16."""
    import torch

    path = Path(path)
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    if backend is None:
        from finetune.models import load_model

        return Runner(load_model(str(path), dtype=torch_dtype).eval(), "torch")
    if backend == "inc":
        from quantize.inc import load_inc

        return Runner(load_inc(path), "torch")
    if backend == "gguf":
        from quantize.gguf_export import load_gguf

        return Runner(load_gguf(path, torch_dtype)[0], "torch")
    if backend == "web":
        from quantize.web import load_web

        return Runner(load_web(path, threads), "onnx")
    if backend == "openvino":
        from quantize.openvino import import_exporters

        OVModelForCausalLM = import_exporters()[0]
        from finetune.hardware import openvino_cpu_properties

        # The thread budget of OMP_NUM_THREADS (never INFERENCE_NUM_THREADS=1: see openvino_cpu_properties).
        ov_config = {**openvino_cpu_properties(), "CACHE_DIR": ""}
        if threads and threads > 1:
            ov_config["INFERENCE_NUM_THREADS"] = threads
        return Runner(_with_cache_position(OVModelForCausalLM.from_pretrained(path, ov_config=ov_config)), "openvino")
    raise ValueError(f"unknown backend {backend!r}")


def _with_cache_position(model):
    """The OpenVINO model with `cache_position` handed to its generation step when transformers 5's generate passes
    none. optimum-intel 2.2's Phi-3 model (longrope: Phi-3.5, Phi-4-mini) reads it to recompute the cache once a
    sequence outgrows the original context, and fails on None at that point."""
    import inspect

    import torch

    prepare = model.prepare_inputs_for_generation
    if "cache_position" not in inspect.signature(prepare).parameters:
        return model

    def prepare_with_position(input_ids, past_key_values=None, cache_position=None, **kwargs):
        if cache_position is None and past_key_values:
            cache_position = torch.arange(model._get_past_length(past_key_values), input_ids.shape[1])
        return prepare(input_ids, past_key_values=past_key_values, cache_position=cache_position, **kwargs)

    model.prepare_inputs_for_generation = prepare_with_position
    return model


def eval_ids(tokenizer, texts: list[str]):
    import torch

    ids = tokenizer("\n\n".join(texts), return_tensors="pt").input_ids[0]
    if ids.numel() < 2:
        raise ValueError("the evaluation text has fewer than 2 tokens")
    return [ids[i : i + WINDOW].unsqueeze(0) for i in range(0, ids.numel() - 1, WINDOW) if ids[i:].numel() > 1] or [
        torch.as_tensor(ids).unsqueeze(0)
    ]


def perplexity(runner: Runner, windows: list) -> float:
    import torch

    nll, count = 0.0, 0
    for ids in windows:
        logits = runner.logits(ids)[0, :-1]
        nll += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
        count += ids.shape[1] - 1
    return math.exp(nll / count)


def prompt_ids(tokenizer, count: int) -> list:
    prompts = []
    for i in range(count):
        messages = [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)] + (" " * (i // len(QUESTIONS)))}]
        if getattr(tokenizer, "chat_template", None):
            text = generation_prompt(tokenizer, messages)
        else:
            text = messages[0]["content"]
        prompts.append(tokenizer(text, return_tensors="pt").input_ids)
    return prompts


def agreement(reference: list[list[int]], candidate: list[list[int]]) -> dict:
    """Position-wise share of equal tokens and the mean identical-prefix length over prompts."""
    equal = total = 0
    prefixes = []
    for ref, cand in zip(reference, candidate, strict=True):
        equal += sum(a == b for a, b in zip(ref, cand))
        total += len(ref)
        prefix = 0
        for a, b in zip(ref, cand):
            if a != b:
                break
            prefix += 1
        prefixes.append(prefix)
    return {"token_agreement": round(equal / max(total, 1), 4), "mean_identical_prefix": statistics.mean(prefixes)}


def measure_speed(runner: Runner, tokenizer, new_tokens: int = 32, repeats: int = 3) -> dict:
    """First-token latency (ms) and decode tokens/s for a ~50-token prompt, median of `repeats` after a warmup."""
    text = ("The history of computing is long and full of small steps that changed the world. " * 6).strip()
    ids = tokenizer(text, return_tensors="pt").input_ids[:, :50]
    runner.greedy(ids, 2)  # warmup
    first, full = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        runner.greedy(ids, 1)
        first.append(time.perf_counter() - start)
        start = time.perf_counter()
        runner.greedy(ids, new_tokens)
        full.append(time.perf_counter() - start)
    first_s, full_s = statistics.median(first), statistics.median(full)
    decode = (new_tokens - 1) / max(full_s - first_s, 1e-9)
    return {"first_token_ms": round(first_s * 1000, 1), "decode_tokens_per_s": round(decode, 1),
            "prompt_tokens": int(ids.shape[1]), "new_tokens": new_tokens}


def reference_outputs(runner: Runner, windows: list, prompts: list, new_tokens: int) -> dict:
    return {"perplexity": perplexity(runner, windows), "greedy": [runner.greedy(p, new_tokens) for p in prompts]}


def evaluate(runner: Runner, reference: dict, windows: list, prompts: list, new_tokens: int) -> dict:
    """Quality of `runner` against the precomputed `reference` (see reference_outputs)."""
    ppl = perplexity(runner, windows)
    greedy = [runner.greedy(p, new_tokens) for p in prompts]
    return {
        "perplexity": round(ppl, 4),
        "source_perplexity": round(reference["perplexity"], 4),
        "perplexity_delta_pct": round(100 * (ppl / reference["perplexity"] - 1), 2),
        "eval_tokens": sum(w.shape[1] - 1 for w in windows),
        "num_prompts": len(prompts),
        "greedy_new_tokens": new_tokens,
        **agreement(reference["greedy"], greedy),
    }
