"""Several LoRA adapters served on one copy of their base, through the official `openai` client, and the admin rule
for loading another full model.

Each adapter's reply must equal what that adapter merged into the base produces, served alone (the full-copy way):
in fp32, where merged and unmerged LoRA agree to rounding.

Run: OMP_NUM_THREADS=1 PYTHONPATH=. pytest -q tests/neural_chat_app/test_server_adapters.py
"""

from __future__ import annotations

import json
import shutil
import threading

import httpx
import pytest

from benchmarks.serve_load import random_lora_adapters
from neural_chat_app.config import GenerationConfig, MixedPrecisionConfig, PipelineConfig

openai = pytest.importorskip("openai")
pytest.importorskip("peft")

FP32 = MixedPrecisionConfig(dtype="float32")
QUESTIONS = ["What is the capital of France?", "Summarize the article.", "def add(a, b):"]
REPLY_TOKENS = 8


@pytest.fixture(scope="module")
def lora(tiny_model_dir, tmp_path_factory):
    """Adapters a and b of the tiny llama (different random weights, large enough to change its greedy replies),
    and c saved as a fine-tune run folder (adapter/ and training_metadata.json) for discovery."""
    root = tmp_path_factory.mktemp("lora")
    a, b, c = random_lora_adapters(tiny_model_dir, root, 3, rank=4, std=0.3, seed=1)
    runs = root / "runs"
    shutil.copytree(c, runs / "tuned-c" / "adapter")
    (runs / "tuned-c" / "training_metadata.json").write_text(json.dumps({"task": "chat"}))
    other = runs / "tuned-other" / "adapter"  # a fine-tune of another model: not an adapter of this base
    shutil.copytree(c, other)
    config = json.loads((other / "adapter_config.json").read_text())
    (other / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "other/base"}))
    return {"a": a, "b": b, "runs": runs}


def _base_backend(tiny_model_dir):
    from neural_chat_app.loading import load_backend

    return load_backend(PipelineConfig(model_name_or_path=str(tiny_model_dir), optimization_config=FP32))


def _merged_reference(tiny_model_dir, adapter, out):
    """The adapter merged into the base and saved as a fine-tune's merged/, loaded alone as the server would."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from neural_chat_app.loading import load_backend

    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(adapter))
    merged.merge_and_unload().save_pretrained(out / "merged")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out / "merged")
    return load_backend(PipelineConfig(model_name_or_path=str(out), optimization_config=FP32))


def _reply(backend, question: str) -> str:
    from neural_chat_app.generate import generate_stream

    config = GenerationConfig(temperature=0, max_new_tokens=REPLY_TOKENS)
    return "".join(generate_stream(backend, [{"role": "user", "content": question}], config, task="chat"))


@pytest.fixture(scope="module")
def expected(tiny_model_dir, lora, tmp_path_factory):
    """{model: {question: greedy reply}} of the base alone and of each adapter merged into it, served alone."""
    base = _base_backend(tiny_model_dir)
    backends = {"base": base}
    for name in ("a", "b"):
        backends[name] = _merged_reference(tiny_model_dir, lora[name], tmp_path_factory.mktemp(f"merged-{name}"))
    replies = {name: {q: _reply(backend, q) for q in QUESTIONS} for name, backend in backends.items()}
    for backend in backends.values():
        backend.close()
    for q in QUESTIONS[:1]:  # the test means something only if the three models answer differently
        assert len({replies[name][q] for name in replies}) == 3, replies
    return replies


def _client(server, key="unused"):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=120)


def _ask(client, model: str, question: str, stream: bool = False) -> str:
    messages = [{"role": "user", "content": question}]
    reply = client.chat.completions.create(model=model, messages=messages, max_tokens=REPLY_TOKENS, temperature=0,
                                           stream=stream)
    if stream:
        return "".join(chunk.choices[0].delta.content or "" for chunk in reply if chunk.choices)
    return reply.choices[0].message.content


@pytest.fixture
def adapter_server(make_server, tiny_model_dir, lora, tmp_path):
    """make(**settings): a server on a fresh fp32 tiny llama with adapters a and b configured and tuned-c
    discovered in model_dirs (attaching adapters changes the backend: each server has its own)."""

    def make(**overrides):
        overrides.setdefault("adapters", {"a": str(lora["a"]), "b": str(lora["b"])})
        overrides.setdefault("model_dirs", [str(lora["runs"])])
        return make_server(backend=_base_backend(tiny_model_dir), **overrides)

    return make


def test_each_adapter_and_the_base_answer_with_their_own_weights_interleaved(adapter_server, expected):
    server = adapter_server()
    base = server.state.models.active.model_id
    client = _client(server)
    names = {base: "base", "a": "a", "b": "b"}
    for model in [base, "a", "b", "a", base, "b", "b", "a"]:
        for question in QUESTIONS[:2]:
            assert _ask(client, model, question) == expected[names[model]][question], (model, question)
    assert _ask(client, "default", QUESTIONS[0], stream=True) == expected["base"][QUESTIONS[0]]
    assert _ask(client, "b", QUESTIONS[0], stream=True) == expected["b"][QUESTIONS[0]]
    # nothing was switched: the base stays the loaded model, served once
    assert httpx.get(server.url + "/health").json()["model"] == base


def test_concurrent_requests_for_different_adapters_never_see_each_other_s(adapter_server, expected):
    # three generations at once (the torch backend admits one by default): the adapter selection must still hold
    server = adapter_server(limits={"max_concurrent": 3})
    base = server.state.models.active.model_id
    names = {base: "base", "a": "a", "b": "b"}
    jobs = [(model, question, i % 2 == 0) for i, (model, question) in
            enumerate((m, q) for q in QUESTIONS for m in (base, "a", "b") for _ in range(2))]
    got: dict[int, str] = {}
    errors: list[BaseException] = []

    def run(i, model, question, stream):
        try:
            got[i] = _ask(_client(server), model, question, stream)
        except BaseException as err:  # noqa: BLE001  reported by the assert below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i, *job)) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    for i, (model, question, _) in enumerate(jobs):
        assert got[i] == expected[names[model]][question], (model, question)


def test_one_copy_of_the_base_weights_serves_every_adapter(adapter_server, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    server = adapter_server()
    models = server.state.models
    assert set(models.views) == {"a", "b", "tuned-c"}
    base_tensors = {name for name, _ in AutoModelForCausalLM.from_pretrained(tiny_model_dir).named_parameters()}
    # every view streams on the active backend's one model object
    shared = {id(view.base.model) for view in models.views.values()} | {id(models.active.model)}
    assert len(shared) == 1
    served = models.active.model
    plain = [p for name, p in served.named_parameters() if "lora_" not in name]
    assert len({p.data_ptr() for p in plain}) == len(base_tensors)  # one set of base weights, not one per adapter
    lora_bytes = sum(p.numel() * p.element_size() for name, p in served.named_parameters() if "lora_" in name)
    base_bytes = sum(p.numel() * p.element_size() for p in plain)
    assert lora_bytes < base_bytes / 2  # three adapters hold far less than one more copy of the base


def test_models_lists_adapters_with_their_parent(adapter_server):
    server = adapter_server()
    base = server.state.models.active.model_id
    listed = {m["id"]: m for m in httpx.get(server.url + "/v1/models").json()["data"]}
    for name in ("a", "b", "tuned-c"):  # configured, and discovered in model_dirs (a run trained on this base)
        assert listed[name]["parent"] == base and listed[name]["kind"] == "adapter"
    # "loaded" stays the full model's alone (the web page preselects it); an adapter's parent is that model
    assert [m for m in listed if listed[m]["loaded"]] == [base] and listed[base]["parent"] is None
    assert listed["tuned-c"]["metadata"]["task"] == "chat"  # the run's own metadata stays
    # a fine-tune of another model is not served on this base: it stays a model of its own
    assert listed["tuned-other"]["kind"] == "finetuned" and listed["tuned-other"]["parent"] is None
    assert not listed["tuned-other"]["loaded"]
    models = _client(server).models.list()
    assert {"a", "b", "tuned-c"} <= {m.id for m in models.data}


def test_echo_scores_the_prompt_with_the_named_adapter(adapter_server, tiny_model_dir, lora, tmp_path):
    from neural_chat_app.prompts import prompt_ids

    server = adapter_server()
    reference = _merged_reference(tiny_model_dir, lora["a"], tmp_path / "merged-a")
    prompt = "The quick brown fox"
    ids = prompt_ids(reference.tokenizer, [{"role": "user", "content": prompt}], "text")
    want = [t.logprob for t in reference.prompt_logprobs(ids, 0)[1:]]
    reference.close()
    client = _client(server)
    for model, same in (("a", True), ("b", False)):
        reply = client.completions.create(model=model, prompt=prompt, max_tokens=0, echo=True, logprobs=0)
        got = reply.choices[0].logprobs.token_logprobs[1:]
        assert (got == pytest.approx(want, abs=1e-4)) is same, model


def test_an_adapter_of_another_base_is_refused_at_start(make_server, tiny_model_dir, lora):
    other = lora["runs"] / "tuned-other"
    with pytest.raises(ValueError, match=r"adapters\.x: .*other/base"):
        make_server(backend=_base_backend(tiny_model_dir), adapters={"x": str(other)})
    with pytest.raises(ValueError, match=r"adapters\.y: .*holds no LoRA adapter"):
        make_server(backend=_base_backend(tiny_model_dir), adapters={"y": str(tiny_model_dir)})


def test_the_openvino_backend_refuses_adapters_and_says_why(make_server, slow_backend, lora):
    slow_backend.kind = "openvino"  # a backend without add_adapter, as OpenVINOBackend
    with pytest.raises(NotImplementedError, match="openvino-genai's continuous-batching pipeline"):
        make_server(backend=slow_backend, adapters={"a": str(lora["a"])})
    # discovered fine-tunes are not an error there: they stay models of their own
    server = make_server(backend=slow_backend, model_dirs=[str(lora["runs"])])
    listed = {m["id"]: m for m in httpx.get(server.url + "/v1/models").json()["data"]}
    assert listed["tuned-c"]["kind"] == "finetuned" and not server.state.models.views


def _full_model_dir(tmp_path, tiny_model_dir):
    root = tmp_path / "full"
    shutil.copytree(tiny_model_dir, root / "tuned-full" / "merged")
    return root


def test_only_an_admin_key_loads_another_full_model(adapter_server, tiny_model_dir, lora, tmp_path):
    from neural_chat_app.loading import load_backend

    full = _full_model_dir(tmp_path, tiny_model_dir)
    server = adapter_server(api_keys=["user-key"], admin_keys=["admin-key"], loader=load_backend,
                            model_dirs=[str(full), str(lora["runs"])])
    base = server.state.models.active.model_id
    user, admin = _client(server, "user-key"), _client(server, "admin-key")
    assert _ask(user, "a", QUESTIONS[0])  # adapters of the loaded base never need a switch
    assert _ask(user, base, QUESTIONS[0])
    with pytest.raises(openai.PermissionDeniedError) as err:
        _ask(user, "tuned-full", QUESTIONS[0])
    assert "admin key" in str(err.value) and "a, b" in str(err.value)
    headers = {"Authorization": "Bearer user-key"}
    refused = httpx.post(server.url + "/api/models/active", json={"model": "tuned-full"}, headers=headers)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "admin_key_required"
    assert httpx.post(server.url + "/api/models/active", json={"model": "b"}, headers=headers).status_code == 200
    assert httpx.get(server.url + "/health").json()["model"] == base  # nothing was switched
    with pytest.raises(openai.AuthenticationError):
        _client(server, "wrong").models.list()
    assert admin.models.list().data  # an admin key is a key like the others too
    switched = httpx.post(server.url + "/api/models/active", json={"model": "tuned-full"},
                          headers={"Authorization": "Bearer admin-key"}, timeout=120)
    assert switched.status_code == 200 and switched.json()["model"] == "tuned-full"
    assert httpx.get(server.url + "/health").json()["model"] == "tuned-full"
    assert _ask(user, "tuned-full", QUESTIONS[0])  # loaded now: any key may use it
    # the adapters were trained on the model before (not on tuned-full's folder): no longer served
    assert not server.state.models.views
    with pytest.raises(openai.NotFoundError):
        _ask(user, "a", QUESTIONS[0])


def test_without_keys_the_switch_stays_as_it_was(adapter_server, tiny_model_dir, tmp_path):
    from neural_chat_app.loading import load_backend

    server = adapter_server(loader=load_backend, model_dirs=[str(_full_model_dir(tmp_path, tiny_model_dir))])
    assert _ask(_client(server), "tuned-full", QUESTIONS[0])
    assert httpx.get(server.url + "/health").json()["model"] == "tuned-full"
    refusing = adapter_server(allow_model_switch=False, admin_keys=["admin-key"],
                              model_dirs=[str(_full_model_dir(tmp_path / "2", tiny_model_dir))])
    with pytest.raises(openai.NotFoundError):  # allow_model_switch: false holds for admin keys too
        _ask(_client(refusing, "admin-key"), "tuned-full", QUESTIONS[0])


def test_benchmark_spreads_a_level_over_adapters_and_renders_the_rows(adapter_server):
    import time

    from benchmarks import serve_load

    server = adapter_server(chat_log={"enabled": False, "path": "unused.db"})
    level = serve_load.run_level(server.url, ["a", "b"], 2, 4, 4, time.monotonic() + 300)
    assert level["requests"] == 4 and level["errors"] == 0 and level["models"] == ["a", "b"]
    adapters = {"rank": 4, "targets": ["q_proj", "v_proj"], "base_weight_mb": 0.2, "levels": [level],
                "memory": [{"adapters": 0, "rss_mb": 100.0, "peak_rss_mb": 110.0},
                           {"adapters": 2, "rss_mb": 101.5, "peak_rss_mb": 111.0}]}
    table = serve_load.render_adapters(json.loads(json.dumps(adapters)))
    assert "| 2 | 101.5 | 111.0 | 1.5 |" in table and "| 2 | 2 | 4 | 0 |" in table


def test_settings_name_adapters_and_admin_keys(monkeypatch):
    from neural_chat_app.server import load_settings

    monkeypatch.setenv("NEURALCHAT_ADMIN_KEYS", "k1, k2")
    settings = load_settings(None, ["adapters={tuned-a: runs/tuned-a}"])
    assert settings.adapters == {"tuned-a": "runs/tuned-a"} and settings.admin_keys == ["k1", "k2"]
    assert settings.keys_configured and not settings.api_keys  # admin keys alone: every request needs one
    with pytest.raises(ValueError, match=r"adapters\.default: .*name other than"):
        load_settings(None, ["adapters={default: runs/x}"])


@pytest.mark.integration
def test_openvino_genai_still_runs_one_adapter_for_every_request_of_a_step(tiny_model_dir, lora, tmp_path,
                                                                         monkeypatch):
    """Why the OpenVINO backend refuses adapters (adapters.OPENVINO_REFUSAL), checked on the installed
    openvino-genai: its continuous-batching pipeline ignores a request's own GenerationConfig.adapters in
    add_request()/step() (the way the engine runs requests), though generate() applies them. When this fails,
    genai serves per-request adapters: wire them into openvino_engine.py and drop the refusal."""
    ov_genai = pytest.importorskip("openvino_genai")
    pytest.importorskip("optimum.intel")
    import numpy as np
    import openvino as ov
    import openvino_tokenizers  # noqa: F401  (the tokenizer ops the pipeline loads)

    from quantize import openvino as quantize_openvino
    from quantize import projection_fusion

    # unfused: on our fused q/k/v the adapters' q_proj/v_proj tensors match nothing at all
    monkeypatch.setattr(projection_fusion, "fuse_projections_in_folder", lambda folder: 0)
    folder = quantize_openvino.export_openvino(tiny_model_dir, tmp_path / "ov", weight_format="fp32")
    config = json.loads((lora["a"] / "adapter_config.json").read_text())
    adapter = ov_genai.Adapter(str(lora["a"] / "adapter_model.safetensors"))
    scaled = ov_genai.AdapterConfig(adapter, config["lora_alpha"] / config["r"])  # PEFT's scaling
    scheduler = ov_genai.SchedulerConfig()
    scheduler.cache_size = 1
    pipe = ov_genai.ContinuousBatchingPipeline(str(folder), scheduler, "CPU",
                                               {"adapters": scaled, "INFERENCE_PRECISION_HINT": "f32"})
    ids = ov.Tensor(np.array([[5, 17, 42, 99, 7]], dtype=np.int64))

    def settings(adapters):
        cfg = ov_genai.GenerationConfig()
        cfg.max_new_tokens, cfg.do_sample, cfg.ignore_eos = 8, False, True
        cfg.adapters = adapters
        return cfg

    def stepped(adapters) -> list[int]:
        handle = pipe.add_request(0, ids, settings(adapters))
        out = []
        while pipe.has_non_finished_requests():
            pipe.step()
            if handle.can_read():
                for result in handle.read().values():
                    out += list(result.generated_ids)
        return out

    def generated(adapters) -> list[int]:
        return list(pipe.generate([ids], [settings(adapters)])[0].m_generation_ids[0])

    base = generated(ov_genai.AdapterConfig())
    with_adapter = generated(scaled)
    assert with_adapter != base  # the adapter fits this export and generate() applies it
    assert stepped(ov_genai.AdapterConfig()) == with_adapter  # a request without it runs with the last one set
    assert generated(ov_genai.AdapterConfig()) == base
    assert stepped(scaled) == base  # and a request naming it runs without it
