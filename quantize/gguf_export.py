"""Export a Hugging Face llama-architecture folder to GGUF (F16, Q8_0, Q4_0, Q4_1) plus an Ollama Modelfile.

Written with the `gguf` package (llama.cpp's own Python library, on PyPI): GGUFWriter for the file and
`gguf.quants.quantize` for the Q8_0/Q4 blocks. The layout follows llama.cpp's convert_hf_to_gguf.py for llama:
q/k projections are permuted to GGUF's rotary layout (transformers' GGUF loader permutes them back), norms stay
F32, the tokenizer is stored as a byte-level BPE ("gpt2") vocabulary with its merges and chat template.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from quantize.config import QuantizeConfig

INSTALL_HINT = "pip install gguf==0.19.0"
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)
CHATML_OLLAMA_TEMPLATE = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""


def _import_gguf():
    try:
        import gguf
    except ImportError as err:
        raise ImportError(f"backend='gguf' needs the gguf package ({err}). Install it with: {INSTALL_HINT}") from err
    return gguf


def _permute(weights, n_head: int):
    """HF rotary layout to GGUF's (interleaved halves), as llama.cpp's converter does for llama q/k weights."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def gguf_file_name(cfg: QuantizeConfig) -> str:
    return f"model-{cfg.scheme}.gguf"


def _tensor_type(gguf, name: str, array, scheme: str):
    """The GGML type for one tensor: 1-D (norms) F32; 2-D by scheme, F16 where rows do not fill 32-blocks."""
    if array.ndim == 1:
        return gguf.GGMLQuantizationType.F32
    qtype = {
        "f16": gguf.GGMLQuantizationType.F16,
        "q8_0": gguf.GGMLQuantizationType.Q8_0,
        "q4_0": gguf.GGMLQuantizationType.Q4_0,
        "q4_1": gguf.GGMLQuantizationType.Q4_1,
    }[scheme]
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if array.shape[-1] % block:
        raise ValueError(
            f"{name}: rows of {array.shape[-1]} values do not fill GGUF {scheme} blocks of {block}; use scheme='f16'"
        )
    return qtype


def _add_tokenizer(writer, tokenizer, config) -> None:
    data = json.loads(tokenizer.backend_tokenizer.to_str())
    model = data["model"]
    if model.get("type") != "BPE":
        raise NotImplementedError(f"GGUF export writes byte-level BPE tokenizers only, got {model.get('type')}")
    vocab_size = config.vocab_size
    tokens = [""] * vocab_size
    for token, index in tokenizer.get_vocab().items():
        if index < vocab_size:
            tokens[index] = token
    specials = {t["id"] for t in data.get("added_tokens", []) if t.get("special")}
    types = []
    for index, token in enumerate(tokens):
        if not token:
            tokens[index] = f"[PAD{index}]"
            types.append(5)  # unused
        else:
            types.append(3 if index in specials else 1)  # control : normal
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm" if len(tokens) == 49152 else "default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for setter, token in (
        (writer.add_bos_token_id, tokenizer.bos_token_id),
        (writer.add_eos_token_id, tokenizer.eos_token_id),
        (writer.add_unk_token_id, tokenizer.unk_token_id),
        (writer.add_pad_token_id, tokenizer.pad_token_id),
    ):
        if token is not None:
            setter(token)
    writer.add_add_bos_token(False)
    writer.add_add_space_prefix(False)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def write_gguf(source: Path, cfg: QuantizeConfig, out: Path) -> Path:
    """Write `out/model-<scheme>.gguf` and `out/Modelfile` for the llama-architecture model at `source`."""
    gguf = _import_gguf()
    import numpy as np
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(source)
    if not set(config.architectures or []) & set(SUPPORTED_ARCHITECTURES):
        raise NotImplementedError(
            f"GGUF export supports {SUPPORTED_ARCHITECTURES}, {source} is {config.architectures}: use llama.cpp's "
            "convert_hf_to_gguf.py for other architectures"
        )
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    path = out / gguf_file_name(cfg)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(source.parent.name if source.name == "merged" else source.name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(getattr(config, "rope_theta", None) or config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type({"f16": 1, "q8_0": 7, "q4_0": 2, "q4_1": 3}[cfg.scheme])
    _add_tokenizer(writer, tokenizer, config)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    state = model.state_dict()
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    for hf_name, tensor in state.items():
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise NotImplementedError(f"GGUF export: no GGUF name for tensor {hf_name}")
        array = tensor.float().numpy()
        if hf_name.endswith("q_proj.weight"):
            array = _permute(array, config.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            array = _permute(array, config.num_key_value_heads)
        qtype = _tensor_type(gguf, hf_name, array, cfg.scheme)
        if qtype == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))
        elif qtype == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float16))
        else:
            writer.add_tensor(name, gguf.quants.quantize(np.ascontiguousarray(array), qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    (out / "Modelfile").write_text(modelfile(path.name, tokenizer))
    tokenizer.save_pretrained(out)  # the exact HF tokenizer, for serving the folder through transformers
    return path


def default_system_prompt(chat_template: str | None) -> str | None:
    """The system prompt a ChatML template inserts when the conversation has none (SmolLM2's has one)."""
    if not chat_template:
        return None
    found = re.search(r"<\|im_start\|>system\\n(.+?)<\|im_end\|>", chat_template.replace("\n", "\\n"))
    return found.group(1).replace("\\n", "\n") if found else None


def modelfile(gguf_name: str, tokenizer) -> str:
    """An Ollama Modelfile: the GGUF, the ChatML template, its stop tokens, the default system prompt."""
    template = tokenizer.chat_template or ""
    if template and "<|im_start|>" not in template:
        raise NotImplementedError("The Ollama Modelfile is written for ChatML chat templates only")
    lines = [f"FROM ./{gguf_name}", "", f'TEMPLATE """{CHATML_OLLAMA_TEMPLATE}"""', ""]
    system = default_system_prompt(template)
    if system:
        lines += [f'SYSTEM """{system}"""', ""]
    stops = ["<|im_end|>", "<|im_start|>"]
    if tokenizer.eos_token and tokenizer.eos_token not in stops:
        stops.append(tokenizer.eos_token)
    if "<|endoftext|>" in tokenizer.get_vocab() and "<|endoftext|>" not in stops:
        stops.append("<|endoftext|>")
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    return "\n".join(lines) + "\n"


def load_gguf(folder: str | Path):
    """The model and tokenizer of a GGUF artifact folder, dequantized to float by transformers (`gguf_file=`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {folder}")
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=files[0].name)
    if (folder / "tokenizer.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(folder)
    else:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=files[0].name)
    return model.float().eval(), tokenizer
