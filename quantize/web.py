"""`backend: web`: a model as the folder transformers.js loads in a browser, quantized to 8 or 4 bits.

    <artifact>/config.json, generation_config.json, tokenizer.json, tokenizer_config.json
    <artifact>/onnx/model_quantized.onnx (bits 8) or onnx/model_q4.onnx (bits 4)   transformers.js's dtype names
    <artifact>/vocab_texts.json    each token id's text, for the page's schema-constrained decoding
    <artifact>/page/               the extraction page, served by any static host from the artifact folder

The decoder is exported with torch.onnx (the dynamo exporter: optimum-onnx 0.1 and onnxruntime-genai's builder do
not support transformers 5) around a wrapper whose inputs and outputs carry the names transformers.js feeds:
input_ids, attention_mask, position_ids, past_key_values.{i}.key/value, num_logits_to_keep -> logits,
present.{i}.key/value. num_logits_to_keep (transformers.js feeds 1 while generating, 0 in a plain forward) keeps the
output projection to the last positions: without it the prompt's forward projects every prompt position onto the
vocabulary and the page keeps one row.
8 bits: onnxruntime's dynamic quantization (int8 weights per output channel, activations quantized at run time,
MatMulInteger). 4 bits: onnxruntime's MatMulNBits quantizer (round to nearest or HQQ, blocks of `group_size`;
the output projection optionally at 8 bits or fp32: `head_bits`; named modules at 8 bits: `eight_bit_modules`).
The embedding table stays fp32 in both (a Gather); a tied output projection is exported as its own constant and
quantized (shared, it would be read through a Transpose at every step, in fp32). The quantized file must stay
under protobuf's 2 GB: models up to about 1.5B parameters at 8 bits.
"""

from __future__ import annotations

import ast
import json
import logging
import tempfile
from pathlib import Path
from types import SimpleNamespace

from finetune.extras import install_hint
from quantize.config import QuantizeConfig

logger = logging.getLogger(__name__)

OPSET = 18
ONNX_FILE = {8: "model_quantized.onnx", 4: "model_q4.onnx"}  # transformers.js: dtype q8 and q4
DTYPE = {8: "q8", 4: "q4"}
VOCAB_TEXTS_FILE = "vocab_texts.json"


def import_onnx():
    """(onnx, onnxruntime), or an ImportError that says what to install."""
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401  torch.onnx's exporter needs it
    except ImportError as err:
        raise ImportError(f"backend='web' needs onnx, onnxscript and onnxruntime ({err}). Install them with: "
                          f"{install_hint('onnx', 'onnxscript', 'onnxruntime')}") from err
    return onnx, onnxruntime


def onnx_file(folder: Path) -> Path:
    """The quantized decoder of a web artifact folder."""
    files = [folder / "onnx" / name for name in ONNX_FILE.values() if (folder / "onnx" / name).is_file()]
    if not files:
        raise FileNotFoundError(f"{folder} has no onnx/{' or onnx/'.join(ONNX_FILE.values())}: not a web artifact")
    return files[0]


def _kv_shape(config) -> tuple[int, int, int]:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return text.num_hidden_layers, getattr(text, "num_key_value_heads", None) or heads, head_dim


def export_decoder(source: Path, path: Path) -> None:
    """The fp32 decoder with its KV cache as one ONNX file, inputs and outputs named as transformers.js expects."""
    import torch
    from transformers import DynamicCache

    from finetune.models import load_model

    model = load_model(str(source), dtype=torch.float32).eval()
    config = model.config
    head = model.get_output_embeddings()
    if head is not None and head.weight is model.get_input_embeddings().weight:
        # Untied in the graph: a tied output projection reads the embedding through a Transpose at every step and
        # stays fp32; its own constant is folded and quantized like every other MatMul.
        head.weight = torch.nn.Parameter(head.weight.detach().clone())
    layers, kv_heads, head_dim = _kv_shape(config)

    class Decoder(torch.nn.Module):
        """Flat tensors in and out: the cache is rebuilt from past_key_values.* and returned as present.*."""

        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, position_ids, past):
            cache = DynamicCache(ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(layers)],
                                 config=config)
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             past_key_values=cache, use_cache=True)
            present = [t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
            return (out.logits, *present)

    # batch 2 and a past of 3: with a batch of 1 the exporter would fix the batch dimension to 1.
    batch, past_len, seq = 2, 3, 2
    past = tuple(torch.zeros(batch, kv_heads, past_len, head_dim) for _ in range(2 * layers))
    args = (torch.zeros(batch, seq, dtype=torch.long), torch.ones(batch, past_len + seq, dtype=torch.long),
            torch.arange(past_len, past_len + seq).repeat(batch, 1), past)
    dim = torch.export.Dim
    b, s, p = dim("batch_size"), dim("sequence_length"), dim("past_sequence_length")
    total = dim("total_sequence_length")
    names = [f"{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    with torch.no_grad():
        program = torch.onnx.export(
            Decoder().eval(), args, dynamo=True, opset_version=OPSET, verbose=False,
            input_names=["input_ids", "attention_mask", "position_ids", *(f"past_key_values.{n}" for n in names)],
            output_names=["logits", *(f"present.{n}" for n in names)],
            dynamic_shapes=({0: b, 1: s}, {0: b, 1: total}, {0: b, 1: s}, tuple({0: b, 2: p} for _ in names)),
        )
    # Protobuf caps one file at 2 GB: a larger fp32 graph keeps its weights beside it (this file is temporary).
    program.save(str(path), external_data=sum(p.numel() for p in model.parameters()) * 4 > 1_800_000_000)
    add_logits_to_keep(path)


def _output_projection(graph) -> tuple[int, object]:
    """(position, node) of the MatMul that writes the decoder's `logits`: the output projection."""
    index, head = next((i, n) for i, n in enumerate(graph.node) if "logits" in n.output)
    if head.op_type != "MatMul":
        raise NotImplementedError(f"the exported decoder's logits come from {head.op_type}, not a MatMul: "
                                  "num_logits_to_keep cannot be added in front of it")
    return index, head


def add_logits_to_keep(path: Path) -> None:
    """Give the exported decoder the input num_logits_to_keep (int64 scalar, 0: every position): the output
    projection's input is sliced to the last n positions. torch.export cannot take a slice length from a tensor, so
    the Slice goes into the ONNX graph in front of the MatMul that writes `logits`."""
    onnx, _ = import_onnx()
    from onnx import TensorProto, helper

    model = onnx.load(str(path), load_external_data=False)  # the weights, if external, stay where they are
    graph = model.graph
    index, head = _output_projection(graph)
    graph.input.append(helper.make_tensor_value_info("num_logits_to_keep", TensorProto.INT64, []))
    big = helper.make_tensor("logits_slice_end", TensorProto.INT64, [1], [2**63 - 1])
    axis = helper.make_tensor("logits_slice_axis", TensorProto.INT64, [1], [1])
    graph.initializer.extend([big, axis, helper.make_tensor("logits_slice_dim", TensorProto.INT64, [1], [0])])
    nodes = [helper.make_node("Neg", ["num_logits_to_keep"], ["logits_keep_neg"]),
             helper.make_node("Unsqueeze", ["logits_keep_neg", "logits_slice_dim"], ["logits_slice_start"]),
             helper.make_node("Slice", [head.input[0], "logits_slice_start", "logits_slice_end", "logits_slice_axis"],
                              ["logits_hidden_kept"])]
    head.input[0] = "logits_hidden_kept"
    for offset, node in enumerate(nodes):
        graph.node.insert(index + offset, node)
    onnx.save(model, str(path))


def quantize_decoder(fp32: Path, out: Path, cfg: QuantizeConfig) -> None:
    """8 bits: dynamic int8 (per channel); 4 bits: MatMulNBits in blocks of cfg.group_size, by round to nearest
    (scheme rtn) or HQQ (scheme hqq), with the output projection at cfg.head_bits (8: MatMulNBits bits=8, 32: fp32)
    and the modules named in cfg.eight_bit_modules at 8 bits (round to nearest)."""
    onnx, _ = import_onnx()
    if cfg.bits == 8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(fp32, out, weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"],
                         extra_options={"MatMulConstBOnly": True, "WeightSymmetric": True})
        return
    from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantConfig, MatMulNBitsQuantizer

    model = onnx.load(str(fp32))
    eight = module_matmuls(model.graph, cfg.eight_bit_modules)
    head_name = None
    if cfg.head_bits:
        _, head = _output_projection(model.graph)
        head.name = head_name = head.name or "logits_projection"
    eight = [name for name in eight if name != head_name] + ([head_name] if cfg.head_bits == 8 else [])
    # rtn: onnxruntime's own min/max round to nearest per block (its RTN config runs a copy of Neural Compressor's
    # packer, which fails on blocks narrower than the rows here). hqq: data-free half-quadratic fit of each block's
    # scale and (fp32) zero point.
    algo = HQQWeightOnlyQuantConfig(block_size=cfg.group_size, bits=4) if cfg.scheme == "hqq" else None
    quantizer = MatMulNBitsQuantizer(model, block_size=cfg.group_size, is_symmetric=cfg.sym, bits=4,
                                     nodes_to_exclude=list({*eight, head_name} - {None}), algo_config=algo)
    quantizer.process()
    model = quantizer.model.model
    if eight:
        # The constant MatMuls left are `eight` and an fp32 head (onnxruntime's nodes_to_include adds to the op types
        # quantized, it does not restrict them: the head is excluded by name).
        quantizer = MatMulNBitsQuantizer(model, block_size=cfg.group_size, is_symmetric=cfg.sym, bits=8,
                                         nodes_to_exclude=[head_name] if cfg.head_bits == 32 else [])
        quantizer.process()
    quantizer.model.save_model_to_file(str(out), use_external_data_format=False)


def module_matmuls(graph, names: list[str]) -> list[str]:
    """The MatMul nodes whose module path (torch.onnx's name scopes: [..., 'model.model.layers.0.mlp.down_proj',
    'linear_6']) ends with one of `names`, e.g. 'down_proj' or 'layers.0.mlp.down_proj'. Every name must match."""
    if not names:
        return []
    found: dict[str, list[str]] = {name: [] for name in names}
    for index, node in enumerate(graph.node):
        if node.op_type != "MatMul":
            continue
        scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), None)
        module = ast.literal_eval(scopes)[-2] if scopes else ""
        for name in names:
            if module == name or module.endswith("." + name):
                node.name = node.name or f"matmul_{index}"
                found[name].append(node.name)
    missing = [name for name, nodes in found.items() if not nodes]
    if missing:
        raise ValueError(f"QuantizeConfig.eight_bit_modules: no weight of the exported decoder belongs to a module "
                         f"named {', '.join(map(repr, missing))} (module names end a path such as "
                         "model.layers.0.mlp.down_proj: e.g. q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, "
                         "down_proj)")
    return list(dict.fromkeys(n for nodes in found.values() for n in nodes))


def write_web(source: Path, cfg: QuantizeConfig, out: Path) -> Path:
    """Export, quantize and write the transformers.js folder (and the page) for the model at `source`."""
    import_onnx()
    from transformers import AutoTokenizer, GenerationConfig

    (out / "onnx").mkdir(parents=True, exist_ok=True)
    path = out / "onnx" / ONNX_FILE[cfg.bits]
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        fp32 = Path(tmp) / "model.onnx"
        export_decoder(source, fp32)
        quantize_decoder(fp32, path, cfg)
    config = json.loads((source / "config.json").read_text())
    config.pop("quantization_config", None)
    config["transformers.js_config"] = {"dtype": DTYPE[cfg.bits], "use_external_data_format": False}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    try:
        generation = GenerationConfig.from_pretrained(source)
    except OSError:
        generation = GenerationConfig(bos_token_id=config.get("bos_token_id"), eos_token_id=config.get("eos_token_id"))
    generation.save_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.save_pretrained(out)
    _inline_chat_template(out, tokenizer)
    write_vocab_texts(tokenizer, out / VOCAB_TEXTS_FILE)
    from quantize.web_page import write_page

    write_page(out / "page")
    return path


def _inline_chat_template(out: Path, tokenizer) -> None:
    """transformers.js reads the chat template from tokenizer_config.json; transformers 5 writes it beside it."""
    file = out / "tokenizer_config.json"
    data = json.loads(file.read_text())
    if tokenizer.chat_template and not data.get("chat_template"):
        data["chat_template"] = tokenizer.chat_template
        file.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_vocab_texts(tokenizer, file: Path) -> None:
    """Each token id's decoded text (null for special tokens and for pieces of a multi-byte character, which the
    constrained page never emits): the alphabet of the schema automaton, the same in Python and in the page."""
    special = set(tokenizer.all_special_ids)
    texts = []
    for i in range(len(tokenizer)):
        text = None if i in special else tokenizer.decode([i])
        texts.append(None if text is None or "\ufffd" in text or not text else text)
    file.write_text(json.dumps(texts, ensure_ascii=False))


class OnnxDecoder:
    """An exported decoder in onnxruntime, with the two calls quality.Runner makes on a transformers model:
    `model(input_ids=, attention_mask=)` -> .logits and `model.generate(...)` (greedy, KV cache)."""

    def __init__(self, folder: str | Path, threads: int | None = None):
        _, ort = import_onnx()
        folder = Path(folder)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(onnx_file(folder)), options, providers=["CPUExecutionProvider"])
        self.past_names = [i.name for i in self.session.get_inputs() if i.name.startswith("past_key_values.")]
        shape = next(i.shape for i in self.session.get_inputs() if i.name.startswith("past_key_values."))
        self.kv_heads, self.head_dim = int(shape[1]), int(shape[3])
        self.eos = set(_ids(json.loads((folder / "generation_config.json").read_text()).get("eos_token_id")))
        self.keeps_logits = any(i.name == "num_logits_to_keep" for i in self.session.get_inputs())

    def step(self, ids, past: list | None, start: int, keep: int = 0):
        """Logits [1, len(ids), vocab] (the last `keep` positions only, where the export has num_logits_to_keep)
        and the new cache, for token ids `ids` after `start` cached positions."""
        import numpy as np

        ids = np.asarray(ids, dtype=np.int64).reshape(1, -1)
        feeds = {"input_ids": ids, "attention_mask": np.ones((1, start + ids.shape[1]), dtype=np.int64),
                 "position_ids": np.arange(start, start + ids.shape[1], dtype=np.int64)[None]}
        if past is None:
            past = [np.zeros((1, self.kv_heads, 0, self.head_dim), dtype=np.float32)] * len(self.past_names)
        feeds.update(zip(self.past_names, past))
        if self.keeps_logits:
            feeds["num_logits_to_keep"] = np.array(keep, dtype=np.int64)
        logits, *present = self.session.run(None, feeds)
        return logits, present

    def __call__(self, input_ids, attention_mask=None):
        import torch

        logits, _ = self.step(input_ids[0].tolist(), None, 0)
        return SimpleNamespace(logits=torch.from_numpy(logits))

    def greedy(self, prompt: list[int], new_tokens: int, allowed=None, stop_at_eos: bool = False,
               clock: list | None = None) -> list[int]:
        """Greedy tokens after `prompt`; `allowed(generated)` -> a boolean mask over the vocabulary (None: any).
        `clock`: gets time.perf_counter() as each token's logits arrive (where the page times its tokens)."""
        import time

        import numpy as np

        logits, past = self.step(prompt, None, 0, keep=1)
        out: list[int] = []
        for _ in range(new_tokens):
            if clock is not None:
                clock.append(time.perf_counter())
            row = logits[0, -1]
            mask = allowed(out) if allowed is not None else None
            if mask is not None:
                row = np.where(mask, row, -np.inf)
            token = int(row.argmax())
            out.append(token)
            if stop_at_eos and token in self.eos:
                break
            logits, past = self.step([token], past, len(prompt) + len(out) - 1, keep=1)
        return out

    def generate(self, input_ids, attention_mask=None, max_new_tokens: int = 16, **_):
        import torch

        prompt = input_ids[0].tolist()
        return torch.tensor([prompt + self.greedy(prompt, max_new_tokens)])


def _ids(value) -> list[int]:
    return [] if value is None else [value] if isinstance(value, int) else list(value)


def load_web(folder: str | Path, threads: int | None = None) -> OnnxDecoder:
    return OnnxDecoder(folder, threads)

