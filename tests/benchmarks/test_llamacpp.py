"""llama.cpp, the outside reference of `benchmarks infer`, decodes a batch of prompts the way it decodes each alone.

Needs llama-cpp-python built with the README's portable flags; it is not a dependency (its default build dies with
SIGILL on these VMs, and building it takes minutes), so where it is missing these tests are skipped and say so.

pytest tests/benchmarks/test_llamacpp.py
"""

import pytest

from benchmarks import infer, llamacpp
from finetune.models import EMBEDDED_MODELS, embedded_gguf_path, load_tokenizer, resolve_model_path

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (README: portable build flags)")
pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def llm():
    return llamacpp.load(str(embedded_gguf_path(EMBEDDED_MODELS["smollm2-135m-instruct"])), threads=1)


@pytest.fixture(scope="module")
def prompts():
    tok = load_tokenizer(resolve_model_path("smollm2-135m-instruct"))
    # 300 + ~250 tokens: the prefill spans two llama_decode calls of 512, one sequence ending in each
    return [infer.prompt_of(tok, 300, 1), "Paris is the capital of France. " * 30 + "The capital of Italy is"]


def test_a_batch_decodes_each_prompt_as_it_would_alone(llm, prompts):
    together, times = llamacpp.generate_batch(llm, prompts, 6, threads=1)
    alone = [llamacpp.generate_batch(llm, [p], 6, threads=1)[0][0] for p in prompts]
    assert together == alone
    assert len(times) == 1 + 6 and times == sorted(times)  # start, after the prefill, then one reading per step
    assert together[0] != together[1]


def test_the_batch_loop_matches_llama_cpp_own_greedy_completion(llm, prompts):
    tokens = llamacpp.generate_batch(llm, prompts[1:], 6, threads=1)[0][0]
    times, input_tokens = llamacpp.generate_one(llm, prompts[1], 6)
    reference = llm.create_completion(prompts[1], max_tokens=6, temperature=0.0,
                                      logit_bias={llm.token_eos(): -1e9})["choices"][0]["text"]
    assert llm.detokenize(tokens).decode("utf-8") == reference
    assert len(times) == 1 + 6 and input_tokens == len(llm.tokenize(prompts[1].encode("utf-8"), special=True))
