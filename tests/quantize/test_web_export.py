"""backend='web': the tiny llama as a transformers.js folder at 4 and 8 bits, measured with onnxruntime.

Run: OMP_NUM_THREADS=1 PYTHONPATH=. pytest -q -m "" tests/quantize/test_web_export.py
"""

from __future__ import annotations

import json

import pytest

from quantize import QuantizeConfig


def test_web_config_checks_its_fields(tmp_path):
    assert QuantizeConfig(backend="web").tag == "int4-rtn-g64-asym"
    eight = QuantizeConfig(backend="web", bits=8)
    assert (eight.group_size, eight.sym, eight.suffix) == (-1, True, "web")  # dynamic int8 is per channel, symmetric
    with pytest.raises(ValueError, match="per output channel"):
        QuantizeConfig(backend="web", bits=8, group_size=64)
    with pytest.raises(ValueError, match="power of two"):
        QuantizeConfig(backend="web", bits=4, group_size=48)
    with pytest.raises(ValueError, match="valid schemes are"):
        QuantizeConfig(backend="web", scheme="awq")
    assert QuantizeConfig(backend="web", scheme="hqq", group_size=32, head_bits=8).tag == "int4-hqq-g32-asym-head8"
    assert QuantizeConfig(backend="web", head_bits=4).head_bits is None  # 4 is every MatMul's: the plain recipe
    with pytest.raises(ValueError, match="zero point per block"):
        QuantizeConfig(backend="web", scheme="hqq", sym=True)
    with pytest.raises(ValueError, match="use scheme='rtn'"):
        QuantizeConfig(backend="web", scheme="hqq", bits=8)
    with pytest.raises(ValueError, match="4, 8 or 32"):
        QuantizeConfig(backend="web", head_bits=16)
    with pytest.raises(ValueError, match="backend='web' with bits=4 only"):
        QuantizeConfig(backend="web", bits=8, head_bits=32)
    with pytest.raises(ValueError, match="backend='web' with bits=4 only"):
        QuantizeConfig(backend="openvino", head_bits=8)
    mixed = QuantizeConfig(backend="web", group_size=32, eight_bit_modules=["v_proj", "down_proj", "v_proj"])
    assert (mixed.eight_bit_modules, mixed.tag) == (["v_proj", "down_proj"], "int4-rtn-g32-asym-8bit-v_proj-down_proj")
    with pytest.raises(ValueError, match="eight_bit_modules applies to backend='web' with bits=4 only"):
        QuantizeConfig(backend="web", bits=8, eight_bit_modules=["v_proj"])
    with pytest.raises(ValueError, match="must be a list of module names"):
        QuantizeConfig(backend="web", eight_bit_modules="v_proj")
    data = tmp_path / "held.jsonl"
    data.write_text("{}\n")
    with pytest.raises(NotImplementedError, match="quantize.web_page score"):
        QuantizeConfig(backend="web", task_data=str(data), task="extraction")


pytest.importorskip("onnxruntime")


def test_num_logits_to_keep_slices_the_output_projection(tmp_path):
    """0 keeps every position (perplexity), n the last n (what transformers.js feeds while generating: 1)."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from quantize.web import add_logits_to_keep

    weight = np.arange(12, dtype=np.float32).reshape(4, 3)
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "x"], ["hidden"]), helper.make_node("MatMul", ["hidden", "w"], ["logits"])],
        "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "s", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, None, 3])],
        [numpy_helper.from_array(weight, "w")])
    path = tmp_path / "head.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), str(path))
    add_logits_to_keep(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 5, 4)).astype(np.float32)
    full = (x * x) @ weight
    for keep, rows in ((0, full), (1, full[:, -1:]), (2, full[:, -2:]), (9, full)):
        [got] = session.run(None, {"x": x, "num_logits_to_keep": np.array(keep, dtype=np.int64)})
        np.testing.assert_allclose(got, rows, rtol=1e-6)


def _two_matmul_decoder(path):
    """x -> MatMul (64 x 64) -> MatMul (64 x 96) -> logits, with num_logits_to_keep: the export's shape in small."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from quantize.web import add_logits_to_keep

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) / 8, name)
               for name, shape in (("w_body", (64, 64)), ("w_head", (64, 96)))]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w_body"], ["hidden"], name="body"),
         helper.make_node("MatMul", ["hidden", "w_head"], ["logits"], name="head")],
        "decoder", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "s", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, None, 96])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), str(path))
    add_logits_to_keep(path)


@pytest.mark.parametrize(("scheme", "head_bits"), [("rtn", None), ("rtn", 8), ("rtn", 32), ("hqq", None), ("hqq", 8)])
def test_four_bit_recipes_write_the_nodes_the_web_runtime_has(tmp_path, scheme, head_bits):
    """Every constant MatMul becomes a MatMulNBits at 4 bits (HQQ: fp32 zero points), the output projection at
    head_bits (8: MatMulNBits bits=8; 32: the plain fp32 MatMul), and onnxruntime runs it close to the fp32 graph."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    from quantize.web import quantize_decoder

    fp32, out = tmp_path / "fp32.onnx", tmp_path / "q4.onnx"
    _two_matmul_decoder(fp32)
    quantize_decoder(fp32, out, QuantizeConfig(backend="web", scheme=scheme, group_size=16, head_bits=head_bits))
    graph = onnx.load(str(out)).graph
    body, head = (next(n for n in graph.node if n.name.startswith(name)) for name in ("body", "head"))
    attrs = {a.name: a.i for a in body.attribute}
    assert (body.op_type, attrs["bits"], attrs["block_size"]) == ("MatMulNBits", 4, 16)
    zero_points = next(t for t in graph.initializer if t.name == body.input[3])
    assert zero_points.data_type == (onnx.TensorProto.FLOAT if scheme == "hqq" else onnx.TensorProto.UINT8)
    if head_bits == 32:
        assert head.op_type == "MatMul" and any(t.name == "w_head" for t in graph.initializer)
    else:
        assert head.op_type == "MatMulNBits"
        assert {a.name: a.i for a in head.attribute}["bits"] == (head_bits or 4)
    assert {n.op_type for n in graph.node} <= {"MatMul", "MatMulNBits", "Neg", "Unsqueeze", "Slice"}

    x = np.random.default_rng(1).standard_normal((1, 5, 64)).astype(np.float32)
    feeds = {"x": x, "num_logits_to_keep": np.array(0, dtype=np.int64)}
    [want] = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).run(None, feeds)
    [got] = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, feeds)
    assert got.shape == want.shape == (1, 5, 96)
    assert np.abs(got - want).mean() < 0.1 * np.abs(want).mean()


@pytest.mark.integration
@pytest.mark.parametrize("bits", [4, 8])
def test_export_writes_the_folder_transformers_js_loads(web_artifacts, bits):
    import onnx

    folder = web_artifacts[bits]
    name = {4: "model_q4.onnx", 8: "model_quantized.onnx"}[bits]
    for file in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", f"onnx/{name}",
                 "vocab_texts.json", "page/index.html"):
        assert (folder / file).is_file(), file
    assert not list((folder / "onnx").glob("*.data")), "one file: the browser fetches no external data"
    graph = onnx.load(str(folder / "onnx" / name), load_external_data=False).graph
    inputs, outputs = [i.name for i in graph.input], [o.name for o in graph.output]
    assert inputs == ["input_ids", "attention_mask", "position_ids", "past_key_values.0.key",
                      "past_key_values.0.value", "past_key_values.1.key", "past_key_values.1.value",
                      "num_logits_to_keep"]
    assert outputs == ["logits", "present.0.key", "present.0.value", "present.1.key", "present.1.value"]
    ops = {n.op_type for n in graph.node}
    assert ("MatMulNBits" if bits == 4 else "MatMulInteger") in ops
    config = json.loads((folder / "config.json").read_text())
    assert config["transformers.js_config"]["dtype"] == {4: "q4", 8: "q8"}[bits]
    assert "chat_template" in json.loads((folder / "tokenizer_config.json").read_text())

    meta = json.loads((folder / "quantization.json").read_text())
    quality = meta["quality"]
    assert meta["backend"] == "web" and meta["versions"]["onnxruntime"]
    assert abs(quality["perplexity_delta_pct"]) < (5 if bits == 4 else 1)
    assert quality["token_agreement"] >= 0.5
    assert meta["speed"]["runtime"].startswith("onnxruntime")
    assert meta["weight_bytes"] == (folder / "onnx" / name).stat().st_size


@pytest.mark.integration
def test_hqq_with_an_eight_bit_head_exports_and_decodes(tiny_model_dir, tmp_path):
    """The recipe of configs/quantize_web_extraction.yaml on the tiny llama: 4-bit HQQ blocks with fp32 zero
    points, the output projection at 8 bits, one file onnxruntime loads and decodes with its cache."""
    import onnx

    from quantize import quantize_model
    from quantize.web import load_web

    folder = quantize_model(model=str(tiny_model_dir), output_dir=str(tmp_path), backend="web", scheme="hqq",
                            group_size=32, head_bits=8, num_eval_prompts=2, eval_new_tokens=6)
    assert folder.name.endswith("int4-hqq-g32-asym-head8-web")
    graph = onnx.load(str(folder / "onnx" / "model_q4.onnx")).graph
    nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
    head = next(n for n in graph.node if "logits" in n.output)
    assert head in nbits and {a.name: a.i for a in head.attribute}["bits"] == 8
    assert {({a.name: a.i for a in n.attribute}["bits"]) for n in nbits if n is not head} == {4}
    constants = {t.name for t in graph.initializer}
    assert not [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in constants]
    meta = json.loads((folder / "quantization.json").read_text())
    assert (meta["scheme"], meta["head_bits"], meta["tag"]) == ("hqq", 8, "int4-hqq-g32-asym-head8")
    assert meta["quality"]["perplexity"] > 0
    decoder = load_web(folder)
    tokens = decoder.greedy([5, 17, 42], 4)
    full, _ = decoder.step([5, 17, 42] + tokens, None, 0)
    assert tokens == [int(t) for t in full[0, 2:-1].argmax(-1)]


@pytest.mark.integration
def test_named_modules_go_to_eight_bits(tiny_model_dir, tmp_path):
    """eight_bit_modules picks weights by their module's name (torch.onnx's name scopes): every layer's v_proj and
    down_proj at 8 bits, the rest at 4, the head at head_bits; a name that matches nothing is refused."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    from quantize.web import export_decoder, quantize_decoder

    fp32, out = tmp_path / "fp32.onnx", tmp_path / "q4.onnx"
    export_decoder(tiny_model_dir, fp32)
    cfg = QuantizeConfig(backend="web", group_size=16, head_bits=32, eight_bit_modules=["v_proj", "mlp.down_proj"])
    quantize_decoder(fp32, out, cfg)
    graph = onnx.load(str(out)).graph
    bits = {n.name: {a.name: a.i for a in n.attribute}["bits"] for n in graph.node if n.op_type == "MatMulNBits"}
    assert sorted(bits.values()) == [4] * 10 + [8] * 4  # 2 layers: q k o gate up at 4, v down at 8
    source = {n.name: n for n in onnx.load(str(fp32)).graph.node}
    for name, b in bits.items():
        scopes = next(p.value for p in source[name.removesuffix("_Q4").removesuffix("_Q8")].metadata_props
                      if p.key == "pkg.torch.onnx.name_scopes")
        assert (b == 8) == ("v_proj" in scopes or "down_proj" in scopes), (name, scopes)
    head = next(n for n in graph.node if "logits" in n.output)
    assert head.op_type == "MatMul"  # head_bits=32 stays fp32 beside the 8-bit modules

    feeds = {i.name: np.zeros([d.dim_value or 1 for d in i.type.tensor_type.shape.dim],
                              dtype=np.float32 if i.type.tensor_type.elem_type == 1 else np.int64)
             for i in graph.input}
    feeds |= {"input_ids": np.array([[5, 17, 42]]), "attention_mask": np.ones((1, 4), dtype=np.int64),
              "position_ids": np.array([[1, 2, 3]]), "num_logits_to_keep": np.array(0, dtype=np.int64)}
    [want, *_] = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).run(None, feeds)
    [got, *_] = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, feeds)
    assert np.abs(got - want).mean() < 0.1 * np.abs(want).mean()

    with pytest.raises(ValueError, match="no weight of the exported decoder belongs to a module named 'wq'"):
        quantize_decoder(fp32, tmp_path / "bad.onnx", QuantizeConfig(backend="web", eight_bit_modules=["wq"]))


@pytest.mark.integration
def test_cached_decoding_equals_full_recomputation(web_artifacts):
    """The KV cache the export wires (present.* fed back as past_key_values.*) gives the logits of a full pass."""
    import numpy as np

    from quantize.web import load_web

    decoder = load_web(web_artifacts[4])
    prompt = [5, 17, 42, 99, 7]
    tokens = decoder.greedy(prompt, 6)
    full, _ = decoder.step(prompt + tokens, None, 0)
    assert tokens == [int(t) for t in full[0, len(prompt) - 1 : -1].argmax(-1)]
    cached, past = decoder.step(prompt, None, 0)
    step, _ = decoder.step(tokens[:1], past, len(prompt))
    np.testing.assert_allclose(step[0, -1], full[0, len(prompt)], atol=1e-4)
    last, _ = decoder.step(prompt, None, 0, keep=1)  # what greedy decoding and transformers.js ask for
    assert last.shape[1] == 1 and cached.shape[1] == len(prompt)
    np.testing.assert_allclose(last[0, -1], cached[0, -1], atol=1e-5)


@pytest.mark.integration
def test_vocab_texts_decode_like_the_tokenizer(web_artifacts):
    from transformers import AutoTokenizer

    folder = web_artifacts[4]
    texts = json.loads((folder / "vocab_texts.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert len(texts) == len(tokenizer)
    assert texts[tokenizer.eos_token_id] is None  # special tokens are not text
    ids = tokenizer('{"attributes": [], "sentiment": "MIXED"}').input_ids
    assert "".join(texts[i] for i in ids) == '{"attributes": [], "sentiment": "MIXED"}'


@pytest.mark.integration
def test_score_command_prints_the_python_path_metrics(web_artifacts, capsys, tmp_path):
    from quantize.web_page import main

    out = tmp_path / "scores" / "score.json"
    assert main(["score", str(web_artifacts[4]), "--max-examples", "2", "--max-new-tokens", "12",
                 "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["where"] == "score" and printed["examples"] == 2 and printed["constrained"]
    assert printed["json_validity"] is not None and "schema_validity" in printed
    saved = json.loads(out.read_text())  # the same scores, with the machine and every reply beside its reference
    assert {k: saved[k] for k in printed} == printed
    assert saved["machine"]["hardware"] and saved["device"] == "onnxruntime" and saved["seconds"] > 0
    assert [r["where"].rsplit("/", 1)[-1] for r in saved["replies"]] == ["extraction_heldout.jsonl:1",
                                                                          "extraction_heldout.jsonl:2"]
    assert all(r["reference"].startswith("{") and isinstance(r["output"], str) for r in saved["replies"])
