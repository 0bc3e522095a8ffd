"""Every family users bring through every stage: fine-tune → merged reload → torch and OpenVINO chatbots → server.

Each family is a tiny random model with its published chat template (tests/families.py). The chat data has a
system message and two turns, so Gemma 2's template (no system role), Mistral's (system in the last user turn)
and Phi-3's (end tokens after every turn) are all exercised; the loss of each family against transformers' own is
in tests/finetune/test_lean_ops.py.

pytest -m integration tests/test_families_end_to_end.py
"""

from __future__ import annotations

import json

import pytest

from tests.families import NAMES, chat_rows, save_family
from tests.finetune.conftest import tiny_config, write_jsonl

pytestmark = pytest.mark.integration

QUICK_QUANTIZE = {"num_eval_prompts": 2, "eval_new_tokens": 8, "calibration_seq_len": 32,
                  "num_calibration_samples": 4}


def _completion_rows(count: int = 16) -> list[dict]:
    return [{"instruction": f"Say the number {i}", "input": "", "output": f"The number is {i}."} for i in range(count)]


@pytest.mark.parametrize("family", NAMES)
def test_family_fine_tunes_merges_quantizes_and_serves(family, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune import finetune_model
    from neural_chat_app import GenerationConfig, PipelineConfig, WeightOnlyQuantConfig, build_chatbot
    from quantize import QuantizeConfig, quantize_model

    base = save_family(family, tmp_path / "base")
    chat = write_jsonl(tmp_path / "chat.jsonl", chat_rows())

    # chat data, the family's default LoRA targets
    result = finetune_model(tiny_config(base, chat, tmp_path / "chat-run", task="chat", max_steps=2,
                                        lora_all_linear=False, save_steps=100))
    assert result.merged_dir is not None and result.metrics["train_loss"] == result.metrics["train_loss"]  # not NaN

    # completion data, every linear layer adapted
    completion = write_jsonl(tmp_path / "completion.jsonl", _completion_rows())
    adapted = finetune_model(tiny_config(base, completion, tmp_path / "completion-run", task="completion",
                                         max_steps=2, lora_all_linear=True, save_steps=100, save_merged_model=False))
    targets = json.loads((adapted.adapter_dir / "adapter_config.json").read_text())["target_modules"]
    assert {"o_proj", "down_proj"} <= {name.rsplit(".", 1)[-1] for name in targets}

    # the merged model reloads with plain transformers and generates
    model = AutoModelForCausalLM.from_pretrained(result.merged_dir)
    tokenizer = AutoTokenizer.from_pretrained(result.merged_dir)
    prompt = tokenizer("What is 2 and 2?", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == prompt["input_ids"].shape[1] + 4 or int(out[0, -1]) in model.generation_config.eos_token_id

    greedy = GenerationConfig(do_sample=False, max_new_tokens=6)
    bot = build_chatbot(PipelineConfig(model_name_or_path=str(result.merged_dir), backend="torch"))
    try:
        assert isinstance(bot.predict("What is 2 and 2?", greedy), str)
        torch_reply = bot.predict("What is 2 and 2?", greedy)
    finally:
        bot.close()

    # OpenVINO INT8 (Gemma included): greedy agreement with torch is recorded in quantization.json
    artifact = quantize_model(QuantizeConfig(model=str(result.merged_dir), output_dir=str(tmp_path / "artifacts"),
                                             backend="openvino", bits=8, **QUICK_QUANTIZE))
    quality = json.loads((artifact / "quantization.json").read_text())
    assert 0.0 <= quality["quality"]["token_agreement"] <= 1.0, quality
    ov_bot = build_chatbot(PipelineConfig(model_name_or_path=str(artifact),
                                          optimization_config=WeightOnlyQuantConfig(weight_dtype="int8")))
    try:
        assert ov_bot.backend.kind == "openvino"
        assert isinstance(ov_bot.predict("What is 2 and 2?", greedy), str)
    finally:
        ov_bot.close()
    assert isinstance(torch_reply, str)

    _server_answers(result.merged_dir, tmp_path)


def _server_answers(model_dir, tmp_path) -> None:
    openai = pytest.importorskip("openai")
    from neural_chat_app import PipelineConfig
    from neural_chat_app.loading import load_backend
    from neural_chat_app.server import create_app, load_settings
    from tests.neural_chat_app.conftest import RunningServer

    settings = load_settings(None, model_dirs=[], chat_log={"enabled": True, "path": str(tmp_path / "log.sqlite")})
    backend = load_backend(PipelineConfig(model_name_or_path=str(model_dir)))
    with RunningServer(create_app(settings, backend=backend)) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        reply = client.chat.completions.create(
            model=server.state.models.active.model_id, max_tokens=5, temperature=0,
            messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 and 2?"}])
    assert reply.choices[0].message.role == "assistant"
    assert isinstance(reply.choices[0].message.content, str)
    assert 0 < reply.usage.completion_tokens <= 5


@pytest.mark.parametrize("family", NAMES)
def test_family_exports_to_gguf_through_llama_cpp_s_converter(family, tmp_path):
    """llama.cpp's own converter writes the family's GGUF; transformers reads it back to the same next tokens as
    the source model, our tensor-at-a-time reader to transformers' weights, and the Ollama Modelfile speaks the
    family's chat format with its end-of-turn stop."""
    import torch
    from transformers import AutoModelForCausalLM

    from quantize import QuantizeConfig, quantize_model
    from quantize.ollama import go_template
    from tests.families import FAMILIES, save_gguf_family

    base = save_gguf_family(family, tmp_path / "base")
    path = quantize_model(QuantizeConfig(model=str(base), output_dir=str(tmp_path / "q"), backend="gguf",
                                         scheme="f16", evaluate=False))
    source = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="eager").eval()
    exported = AutoModelForCausalLM.from_pretrained(path, gguf_file="model-f16.gguf",
                                                    attn_implementation="eager").float().eval()
    # Our own reading of GGUF files (a tensor at a time: finetune.gguf_weights) gives transformers' weights.
    from finetune.gguf_weights import load_model

    ours = load_model(path / "model-f16.gguf", torch.float32).state_dict()
    assert all(torch.equal(ours[name], weight) for name, weight in exported.state_dict().items())
    ids = torch.tensor([[5, 6, 7, 8, 9, 10] * 4])
    with torch.no_grad():
        want, got = source(ids).logits, exported(ids).logits
    # F16 weights: the logits agree to rounding, so a near tie may flip; a wrong layout would change them all
    assert (want - got).abs().max() < 0.05, float((want - got).abs().max())
    assert (want.argmax(-1) == got.argmax(-1)).float().mean() >= 0.9

    modelfile = (path / "Modelfile").read_text()
    from transformers import AutoTokenizer

    assert f'TEMPLATE """{go_template(AutoTokenizer.from_pretrained(base))}"""' in modelfile
    end_of_turn = FAMILIES[family][4][0]
    assert f'PARAMETER stop "{end_of_turn}"' in modelfile


@pytest.mark.parametrize("family", NAMES)
def test_llama_cpp_runs_each_family_s_export_as_torch_does(family, tmp_path):
    """Where llama-cpp-python is installed (`python -m benchmarks.llamacpp build`): llama.cpp reads the F16 export
    to the source model's logits, and the k-quant export (llama.cpp's own quantizer) loads and runs."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (README: portable build)")
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from quantize import QuantizeConfig, quantize_model
    from tests.families import save_gguf_family

    base = save_gguf_family(family, tmp_path / "base")
    ids = [5, 6, 7, 8, 9, 10] * 4
    with torch.no_grad():
        source = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="eager")
        want = source(torch.tensor([ids])).logits[0].numpy()
    sizes = {}
    for scheme in ("f16", "q4_k_m"):
        path = quantize_model(QuantizeConfig(model=str(base), output_dir=str(tmp_path / "q"), backend="gguf",
                                             scheme=scheme, evaluate=False))
        gguf_file = path / f"model-{scheme}.gguf"
        sizes[scheme] = gguf_file.stat().st_size
        llm = llama_cpp.Llama(model_path=str(gguf_file), n_ctx=128, logits_all=True, verbose=False, n_threads=1)
        llm.eval(ids)
        got = np.array(llm.scores[: len(ids)])
        assert np.isfinite(got).all()
        if scheme == "f16":
            assert np.abs(want - got).max() < 0.05, float(np.abs(want - got).max())
            assert (want.argmax(-1) == got.argmax(-1)).mean() >= 0.9
    assert sizes["q4_k_m"] < sizes["f16"]

