"""Neural Compressor 3.x weight-only quantization (RTN, GPTQ, AWQ, AutoRound), saved and loaded with INC's own
save/load.

INC is the algorithm, not the fast runtime: its weight-only modules dequantize on the fly in eager PyTorch
(measured on a 2-core AMX Xeon). Serve INC artifacts through the torch backend, or use backend="openvino" for speed.
The paths that need IPEX or torch.export (SmoothQuant, static/dynamic INT8) are refused in QuantizeConfig.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from finetune.extras import require
from quantize.config import QuantizeConfig

logger = logging.getLogger(__name__)
INC_FILES = ("qconfig.json", "quantized_weight.pt")


def import_inc():
    """Neural Compressor's quantization module, or an ImportError that says what to install."""
    return require("neural_compressor.torch.quantization", "backend='inc'")


def _inc_config(q, cfg: QuantizeConfig, num_blocks: int, seq_len: int, autoround_dir: Path):
    common = {"bits": cfg.bits, "group_size": cfg.group_size, "use_sym": cfg.sym}
    if cfg.scheme == "rtn":
        return q.RTNConfig(**common, use_layer_wise=False)
    if cfg.scheme == "gptq":
        return q.GPTQConfig(**common, use_layer_wise=False)
    if cfg.scheme == "awq":
        return q.AWQConfig(**common)
    require("auto_round", "scheme='autoround'")
    return q.AutoRoundConfig(
        **common, iters=cfg.autoround_iters, nsamples=num_blocks, seqlen=seq_len, batch_size=min(8, num_blocks),
        device_map="cpu", amp=False, output_dir=str(autoround_dir), export_format="auto_round",
    )


def quantize_inc(source: Path, cfg: QuantizeConfig, out: Path, blocks: list) -> None:
    """Quantize the model at `source` with Neural Compressor and save it (plus config and tokenizer) into `out`.

    `blocks` are [1, seq] token tensors of calibration data (empty for RTN).
    """
    q = import_inc()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    seq_len = max((b.shape[1] for b in blocks), default=1)
    inc_config = _inc_config(q, cfg, len(blocks), seq_len, out / "_autoround")
    if cfg.scheme == "rtn":
        with torch.no_grad():
            qmodel = q.convert(q.prepare(model, inc_config))
    else:
        example = {"example_inputs": blocks[0]} if cfg.scheme == "awq" else {}
        prepared = q.prepare(model, inc_config, **example)
        with torch.no_grad():  # calibration forwards; AutoRound's convert then tunes with gradients
            for block in blocks:
                prepared(block)
        qmodel = q.convert(prepared)
    if cfg.scheme == "autoround":
        saved = Path(getattr(qmodel, "name_or_path", out / "_autoround"))
        for item in saved.iterdir():
            shutil.move(str(item), out / item.name)
        shutil.rmtree(out / "_autoround", ignore_errors=True)
    else:
        q.save(qmodel, str(out))
        model.config.save_pretrained(out)
        if model.generation_config is not None:
            model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)


def is_inc_folder(path: Path) -> bool:
    return all((path / name).is_file() for name in INC_FILES)


def load_inc(path: str | Path):
    """The quantized torch model saved in `path` by quantize_inc (INC's load, or transformers' for AutoRound)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    if is_inc_folder(path):
        q = import_inc()
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=torch.float32)
        model = q.load(str(path), original_model=skeleton)
        # INC 3.10's load rebuilds only the quantized modules: the skeleton's embeddings and norms stay at their
        # random init. The saved file holds them; copy every tensor whose name and shape match.
        saved = torch.load(path / "quantized_weight.pt", map_location="cpu", weights_only=False)
        own = model.state_dict()
        model.load_state_dict({k: v for k, v in saved.items() if k in own and own[k].shape == v.shape}, strict=False)
        if (path / "generation_config.json").is_file():
            from transformers import GenerationConfig

            model.generation_config = GenerationConfig.from_pretrained(path)
    else:  # AutoRound: an auto_round-format Hugging Face folder
        require("auto_round", f"Loading the AutoRound model {path}")
        model = AutoModelForCausalLM.from_pretrained(path)  # auto_round's CPU kernels run in float16
    return model.eval()
