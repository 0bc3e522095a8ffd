"""QuantizeConfig: one typed dataclass behind `quantize_model(...)` and `python -m quantize --config FILE.yaml`.

Every field validates itself in `__post_init__` and errors name the field. A YAML file holds the same keys, read
by the one config binder (finetune.config_binding): an unknown key is an error that names it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from finetune.config_binding import bind, check_choice, load_config

Backend = Literal["inc", "openvino", "gguf", "web"]

# The schemes each backend runs. A scheme is the algorithm; `bits`, `group_size` and `sym` complete it.
SCHEMES: dict[str, tuple[str, ...]] = {
    "inc": ("rtn", "gptq", "awq", "autoround"),
    "openvino": ("rtn", "awq", "scale_estimation", "awq_se", "gptq", "gptq_se"),
    "gguf": ("f16", "bf16", "q8_0", "q4_0", "q4_1", "q4_k_m", "q5_k_m", "q6_k"),
    "web": ("rtn", "hqq"),
}
# Schemes that need calibration text.
CALIBRATED = {"gptq", "awq", "autoround", "scale_estimation", "awq_se", "gptq_se"}
# Neural Compressor paths that exist but cannot run properly here: refused with the reason and the alternative.
REFUSED_INC = {
    "smoothquant": "Neural Compressor's SmoothQuant imports Intel Extension for PyTorch, whose last release "
    "(2.8) only runs with torch 2.8 and is archived",
    "static": "static INT8 without IPEX needs a model exported with torch.export, which fails on transformers' "
    "DynamicCache output",
    "dynamic": "dynamic INT8 through PT2E export fails on transformers' DynamicCache in the output",
}
REFUSED_ADVICE = (
    "use weight-only INT8 instead (backend='inc', scheme='rtn', bits=8: perplexity cost ~0), or backend='openvino', "
    "bits=8 for the fast CPU runtime"
)
GGUF_BITS = {"f16": None, "bf16": None, "q8_0": 8, "q4_0": 4, "q4_1": 4, "q4_k_m": 4, "q5_k_m": 5, "q6_k": 6}
GGUF_K_QUANTS = ("q4_k_m", "q5_k_m", "q6_k")  # llama.cpp's k-quants: super-blocks of 256 values


@dataclass
class QuantizeConfig:
    """What to quantize, how, and how to measure the result."""

    model: str | None = None
    """A Hugging Face folder, a `finetune_model` output folder (its merged/ is used) or an embedded model name."""
    allow_download: bool = False
    """A hub id that is not in the Hugging Face cache is downloaded into it (else: an error that says how)."""
    output_dir: str = "quantized"
    """Parent folder: the artifact goes into `<output_dir>/<model>-<scheme...>-<backend>/`."""
    backend: Backend = "openvino"
    """inc (Neural Compressor, eager PyTorch), openvino (NNCF + the fast runtime), gguf (llama.cpp/Ollama),
    web (ONNX for transformers.js in the browser, with the extraction page)."""
    scheme: str = "rtn"
    """The algorithm. inc: rtn gptq awq autoround; openvino: rtn awq scale_estimation awq_se gptq gptq_se;
    gguf: f16 bf16 q8_0 q4_0 q4_1 q4_k_m q5_k_m q6_k; web: rtn hqq (4 bits: onnxruntime's data-free HQQ)."""
    bits: int | None = None
    """4 or 8 (inc/openvino: default 4; gguf: follows the scheme and may be left out)."""
    group_size: int | None = None
    """Input columns sharing one scale; -1 = per output channel. Default 64 (inc/openvino); gguf: blocks of 32."""
    sym: bool | None = None
    """Symmetric quantization (no zero point). Default: symmetric for 8 bits with inc and web (the only form they
    run right), asymmetric otherwise."""
    ratio: float = 1.0
    """OpenVINO INT4 only: share of the layers in INT4; NNCF keeps the most sensitive rest in INT8."""
    all_layers: bool = False
    """OpenVINO INT4 only: also quantize the embedding / output layer to INT4 (default: they stay INT8)."""
    head_bits: int | None = None
    """Web INT4 only: the output projection's bits, 8 (MatMulNBits bits=8, blocks of group_size, round to nearest)
    or 32 (left fp32); None: 4 like every other MatMul."""
    eight_bit_modules: list[str] | None = dataclasses.field(default_factory=list)
    """Web INT4 only: modules whose weights go to 8 bits instead (MatMulNBits bits=8, blocks of group_size), named
    by the end of their path, e.g. [v_proj, down_proj] (every layer's), as llama.cpp's Q4_K_M keeps attention values
    and MLP down projections at more bits. Empty or null: none."""
    calibration_file: str | None = None
    """Local calibration data: `messages` JSONL, JSONL with a "text" field, or a plain text file."""
    num_calibration_samples: int = 128
    """At most this many calibration texts are used."""
    calibration_seq_len: int = 256
    """Calibration texts are cut to this many tokens."""
    autoround_iters: int = 200
    """AutoRound tuning steps per block."""
    eval_file: str | None = None
    """Held-out text for perplexity (same formats as calibration_file); default: a text shipped with quantize/."""
    num_eval_prompts: int = 8
    """Greedy-token agreement is measured over this many prompts."""
    eval_new_tokens: int = 16
    """Greedy tokens generated per prompt for the agreement check."""
    task_data: str | None = None
    """Held-out task records (finetune.evaluate formats): the task metric of source and artifact is recorded."""
    task: str | None = None
    """The finetune.evaluate task for task_data; default: the fine-tune run's task (training_metadata.json)."""
    task_max_examples: int = 50
    """At most this many task examples are scored per model."""
    evaluate: bool = True
    """Measure perplexity, agreement and speed against the source and write them to quantization.json."""
    name: str | None = None
    """Artifact folder name; default derived from the model and scheme."""

    def __post_init__(self):
        check_choice("QuantizeConfig.backend", self.backend, Backend)
        valid = SCHEMES[self.backend]
        if self.backend == "inc" and self.scheme in REFUSED_INC:
            raise NotImplementedError(
                f"QuantizeConfig.scheme={self.scheme!r} is refused: {REFUSED_INC[self.scheme]}. {REFUSED_ADVICE}."
            )
        if self.scheme not in valid:
            raise ValueError(
                f"QuantizeConfig.scheme {self.scheme!r} is unknown for backend {self.backend!r}: valid schemes are "
                f"{valid}" + ("" if self.backend != "inc" else f" (refused: {tuple(REFUSED_INC)})")
            )
        if self.backend == "gguf":
            self._check_gguf()
        else:
            if self.bits is None:
                self.bits = 4
            if isinstance(self.bits, bool) or self.bits not in (4, 8):
                raise ValueError(f"QuantizeConfig.bits must be 4 or 8, got {self.bits!r}")
            if self.group_size is None:
                self.group_size = -1 if (self.backend in ("openvino", "web") and self.bits == 8) else 64
            if self.backend == "openvino" and self.bits == 8 and (self.scheme != "rtn" or self.group_size != -1):
                raise ValueError(
                    "QuantizeConfig: OpenVINO INT8 weight compression is data-free and per channel: use scheme='rtn' "
                    f"and group_size=-1 (got scheme={self.scheme!r}, group_size={self.group_size})"
                )
            if self.backend == "web" and self.bits == 8:
                if self.group_size != -1:
                    raise ValueError(
                        "QuantizeConfig: web INT8 is onnxruntime's dynamic quantization, per output channel: use "
                        f"group_size=-1 (got {self.group_size})"
                    )
            if self.backend == "web" and self.bits == 4 and (
                not isinstance(self.group_size, int) or self.group_size < 16 or self.group_size & (self.group_size - 1)
            ):
                raise ValueError(
                    f"QuantizeConfig.group_size={self.group_size!r}: onnxruntime's MatMulNBits needs a power of two of "
                    "at least 16 (e.g. 32 or 64) for backend='web', bits=4"
                )
        self._resolve_sym()
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int):
            raise TypeError(f"QuantizeConfig.group_size must be an integer, got {self.group_size!r}")
        if self.group_size != -1 and self.group_size < 1:
            raise ValueError(f"QuantizeConfig.group_size must be -1 (per channel) or positive, got {self.group_size}")
        self._check_web_head()
        if not 0.0 < self.ratio <= 1.0:
            raise ValueError(f"QuantizeConfig.ratio must be in (0, 1], got {self.ratio!r}")
        if (self.ratio < 1.0 or self.all_layers) and not (self.backend == "openvino" and self.bits == 4):
            raise ValueError("QuantizeConfig.ratio < 1 and all_layers apply to backend='openvino' with bits=4 only")
        if self.backend == "inc" and self.scheme == "autoround" and not self.sym:
            raise ValueError(
                "QuantizeConfig.sym=False with scheme='autoround': auto-round 0.16 packs asymmetric weights in its "
                "auto_awq format, which does not reload on CPU (its fake-quant modules fail); set sym=True"
            )
        for name in ("num_calibration_samples", "calibration_seq_len", "autoround_iters", "num_eval_prompts",
                     "eval_new_tokens", "task_max_examples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"QuantizeConfig.{name} must be a positive integer, got {value!r}")
        if self.scheme in CALIBRATED and not self.calibration_file:
            raise ValueError(
                f"QuantizeConfig.calibration_file is required: scheme {self.scheme!r} ({self.backend}) calibrates "
                "on local text (messages JSONL, JSONL with 'text', or a .txt file); data-free: scheme='rtn'"
            )
        if self.task_data and self.backend in ("inc", "web"):
            raise NotImplementedError(
                f"QuantizeConfig.task_data with backend={self.backend!r}: finetune.evaluate loads Hugging Face, "
                "OpenVINO and GGUF models, not Neural Compressor's quantized_weight.pt or ONNX; score an openvino or "
                "gguf artifact instead (a web artifact's extraction score: python -m quantize.web_page score)"
            )
        for name in ("calibration_file", "eval_file", "task_data"):
            value = getattr(self, name)
            if value is not None and not Path(value).expanduser().is_file():
                raise FileNotFoundError(f"QuantizeConfig.{name}: no such file {value!r}")

    def _resolve_sym(self) -> None:
        if self.sym is not None and not isinstance(self.sym, bool):
            raise TypeError(f"QuantizeConfig.sym must be true or false, got {self.sym!r}")
        eight_bit_symmetric = {
            # its int8 weights are symmetric (MatMulInteger with zero points of 0)
            "web": "web INT8 is onnxruntime's dynamic quantization, whose int8 weights are symmetric",
            # tests/quantize/test_backends.py: a layer's RTN weights, group 64, come back > 10% off asymmetric
            "inc": "Neural Compressor 3.10 packs asymmetric 8-bit weights wrongly (a layer's weights come back more "
                   "than 10% off, against under 1% symmetric)",
        }
        if self.bits == 8 and self.backend in eight_bit_symmetric:
            if self.sym is False:
                raise ValueError(f"QuantizeConfig.sym=False with backend={self.backend!r} and bits=8 is refused: "
                                 f"{eight_bit_symmetric[self.backend]}. Leave sym unset or true, or use "
                                 "backend='openvino' for asymmetric INT8")
            self.sym = True
        elif self.sym is None:
            self.sym = False

    def _check_web_head(self) -> None:
        if self.backend == "web" and self.scheme == "hqq" and self.bits != 4:
            raise ValueError(
                "QuantizeConfig: scheme='hqq' (backend='web') quantizes to 4 bits; web INT8 is onnxruntime's dynamic "
                "quantization: use scheme='rtn' (and head_bits=null) with bits=8"
            )
        if self.backend == "web" and self.scheme == "hqq" and self.sym:
            raise ValueError("QuantizeConfig.sym=True contradicts scheme 'hqq' (backend='web'): onnxruntime's HQQ "
                             "fits an fp32 zero point per block (asymmetric); set sym=False")
        self._check_eight_bit_modules()
        if self.head_bits is None:
            return
        if isinstance(self.head_bits, bool) or self.head_bits not in (4, 8, 32):
            raise ValueError(f"QuantizeConfig.head_bits must be 4, 8 or 32 (fp32), got {self.head_bits!r}")
        if not (self.backend == "web" and self.bits == 4):
            raise ValueError(
                "QuantizeConfig.head_bits applies to backend='web' with bits=4 only (the output projection of a "
                f"MatMulNBits export); got backend={self.backend!r}, bits={self.bits}"
            )
        if self.head_bits == 4:
            self.head_bits = None  # the same as leaving it out: one artifact name for one recipe

    def _check_eight_bit_modules(self) -> None:
        names = self.eight_bit_modules or []  # null: none
        if isinstance(names, str) or not all(isinstance(n, str) and re.fullmatch(r"[A-Za-z0-9_.]+", n) for n in names):
            raise ValueError("QuantizeConfig.eight_bit_modules must be a list of module names (letters, digits, _ and "
                             f"., e.g. ['v_proj', 'down_proj']), got {names!r}")
        if names and not (self.backend == "web" and self.bits == 4):
            raise ValueError(
                "QuantizeConfig.eight_bit_modules applies to backend='web' with bits=4 only (8-bit MatMulNBits beside "
                f"4-bit ones); got backend={self.backend!r}, bits={self.bits}: leave it empty (eight_bit_modules=[])")
        self.eight_bit_modules = list(dict.fromkeys(names))

    def _check_gguf(self) -> None:
        expected = GGUF_BITS[self.scheme]
        if self.bits is not None and (isinstance(self.bits, bool) or self.bits not in (4, 5, 6, 8)):
            raise ValueError(f"QuantizeConfig.bits must be 4, 5, 6 or 8 for gguf, got {self.bits!r}")
        if self.bits is not None and self.bits != expected:
            raise ValueError(
                f"QuantizeConfig.bits={self.bits} contradicts scheme {self.scheme!r} (gguf): leave bits out or "
                f"set {expected}"
            )
        self.bits = expected
        block = -1 if expected is None else 256 if self.scheme in GGUF_K_QUANTS else 32
        if self.group_size not in (None, block):
            raise ValueError(
                f"QuantizeConfig.group_size={self.group_size}: GGUF {self.scheme} "
                + ("is not quantized" if expected is None else f"uses fixed blocks of {block}") + "; leave it out"
            )
        self.group_size = block
        if self.sym and self.scheme in ("q4_1", "q4_k_m", "q5_k_m"):
            raise ValueError(f"QuantizeConfig.sym=True contradicts scheme {self.scheme!r} (asymmetric blocks)")
        if self.scheme in ("q8_0", "q4_0", "q6_k"):
            self.sym = True

    @property
    def tag(self) -> str:
        """The scheme part of the artifact name, e.g. int4-awq-g64 or q8_0."""
        if self.backend == "gguf":
            return self.scheme
        group = "pc" if self.group_size == -1 else f"g{self.group_size}"
        parts = [f"int{self.bits}", self.scheme.replace("_", "-"), group, "sym" if self.sym else "asym"]
        if self.ratio < 1.0:
            parts.append(f"r{round(self.ratio * 100)}")
        if self.all_layers:
            parts.append("all")
        if self.head_bits is not None:
            parts.append(f"head{self.head_bits}")
        if self.eight_bit_modules:
            parts.append("8bit-" + "-".join(self.eight_bit_modules))
        return "-".join(parts)

    @property
    def suffix(self) -> str:
        return {"inc": "inc", "openvino": "ov", "gguf": "gguf", "web": "web"}[self.backend]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "") -> QuantizeConfig:
        """From a mapping of field names (a YAML file's, or quantization.json's `config`); `where` prefixes keys."""
        return bind(cls, data, where)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Mapping[str, Any] | Iterable = ()) -> QuantizeConfig:
        """The file's keys, then `overrides`: a mapping of fields, or `key=value` texts (the value read as YAML)."""
        if isinstance(overrides, Mapping):
            return load_config(cls, path, values=overrides)
        return load_config(cls, path, overrides)
