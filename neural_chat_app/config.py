"""The configuration dataclasses of NeuralChat's API, rebuilt small: each validates itself and names the bad field.

The names and defaults follow Intel NeuralChat (intel-extension-for-transformers) so its notebooks run with only
the imports changed; device knobs it mixed into GenerationConfig (HPU graphs, IPEX) are left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from finetune.config_binding import check_choice, type_hints

# completion: NeuralChat's, an instruction answered (the chat template's user turn, or the Alpaca prompt of
# finetune's completion task where the model has no template); text: the text continued as given (/v1/completions)
Task = Literal["", "completion", "chat", "summarization", "text"]
Backend = Literal["auto", "torch", "openvino"]
Device = Literal["auto", "cpu", "cuda", "gpu", "xpu", "hpu"]
QUANTIZE_ISSUE = "issue 5 (`quantize`: INT8/INT4 through Neural Compressor and OpenVINO)"


def check_range(owner: str, name: str, value: Any, low: float, high: float | None = None, kind=(int, float)) -> None:
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(f"{owner}.{name} must be a number, got {type(value).__name__} {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{owner}.{name} must be in {bound}, got {value!r}")


@dataclass
class GenerationConfig:
    """Sampling settings for one reply; NeuralChat's names and defaults."""

    temperature: float = 0.1
    top_k: int = 40
    top_p: float = 0.75
    repetition_penalty: float = 1.1
    num_beams: int = 1
    max_new_tokens: int = 256
    do_sample: bool = True
    num_return_sequences: int = 1
    use_cache: bool = True
    return_stats: bool = False
    """Append a latency / throughput table at the end of the stream."""
    task: Task = ""
    """The reply's task; the empty string follows the pipeline's task."""
    stop: list[str] = field(default_factory=list)
    """Extra stop strings; the model's end-of-turn always stops."""
    seed: int | None = None
    response_format: dict | None = None
    """A JSON Schema (or OpenAI's {"type": "json_schema", ...}) the reply must match: see structured.py."""
    presence_penalty: float = 0.0
    """OpenAI's: subtracted from the logit of every token already in the reply (-2 to 2)."""
    frequency_penalty: float = 0.0
    """OpenAI's: subtracted once per earlier occurrence in the reply (-2 to 2)."""
    logit_bias: dict[int, float] | None = None
    """Token id -> a bias added to its logit (-100 to 100)."""
    logprobs: int | None = None
    """Record each reply token's log-probability and this many most likely alternatives (0-20); None: none."""
    thinking: bool | None = None
    """A thinking model's reasoning (Qwen 3, Qwen 3.5, Gemma 4): True or False switches it through the chat
    template's enable_thinking; None: the model's default. Off, such a model answers at once, without the
    reasoning tokens it writes first. The reasoning is kept apart from the answer (neural_chat_app.reasoning)."""

    def __post_init__(self):
        name = "GenerationConfig"
        check_range(name, "temperature", self.temperature, 0.0, 2.0)
        check_range(name, "top_k", self.top_k, 0, kind=int)
        check_range(name, "top_p", self.top_p, 0.0, 1.0)
        check_range(name, "repetition_penalty", self.repetition_penalty, 0.0)
        check_range(name, "num_beams", self.num_beams, 1, kind=int)
        check_range(name, "max_new_tokens", self.max_new_tokens, 1, kind=int)
        if self.num_return_sequences != 1:
            raise ValueError("GenerationConfig.num_return_sequences must be 1: one reply per request is supported")
        check_choice(f"{name}.task", self.task, Task)
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"GenerationConfig.stop must be a list of non-empty strings, got {self.stop!r}")
        check_range(name, "presence_penalty", self.presence_penalty, -2.0, 2.0)
        check_range(name, "frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        if self.logprobs is not None:
            check_range(name, "logprobs", self.logprobs, 0, 20, kind=int)
        if self.logit_bias:
            for token, bias in self.logit_bias.items():
                check_range(f"{name}.logit_bias", str(token), bias, -100.0, 100.0)
                if isinstance(token, bool) or not isinstance(token, int) or token < 0:
                    raise ValueError(f"{name}.logit_bias keys must be token ids (integers >= 0), got {token!r}")
        if self.thinking is not None and not isinstance(self.thinking, bool):
            raise TypeError(f"GenerationConfig.thinking must be True, False or None, got {self.thinking!r}")
        if self.response_format is not None:
            from neural_chat_app.structured import json_schema_of

            json_schema_of(self.response_format)  # raises on a malformed one

    @property
    def json_schema(self) -> dict | None:
        """The schema constrained decoding enforces, or None for free text."""
        from neural_chat_app.structured import json_schema_of

        return json_schema_of(self.response_format)

    @property
    def greedy(self) -> bool:
        # OpenAI clients send temperature=0 or top_p=0 to ask for deterministic output.
        return not self.do_sample or self.temperature == 0.0 or self.top_p == 0.0


@dataclass
class MixedPrecisionConfig:
    """bf16 inference: native on CPUs with AMX or AVX512-BF16; elsewhere it computes in fp32 with a warning, its
    weights in fp32 where they fit and in bf16, widened a layer at a time, where they do not
    (neural_chat_app.memory)."""

    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"

    def __post_init__(self):
        check_choice("MixedPrecisionConfig.dtype", self.dtype, type_hints(MixedPrecisionConfig)["dtype"])


@dataclass
class WeightOnlyQuantConfig:
    """INT8/INT4 weight-only quantization, served through `quantize` artifacts (see loading.load_weight_only).

    For an artifact folder only weight_dtype must agree with it; for a plain model the other fields say how
    to quantize it (data-free RTN; GPTQ/AWQ/AutoRound need `quantize_model` with calibration data).
    """

    weight_dtype: Literal["int8", "int4"] = "int4"
    compute_dtype: Literal["fp32", "bf16"] = "bf16"
    group_size: int = 128
    scheme: Literal["sym", "asym"] = "sym"
    algorithm: Literal["RTN", "GPTQ", "AWQ", "AutoRound"] = "RTN"

    def __post_init__(self):
        name = "WeightOnlyQuantConfig"
        if self.weight_dtype == "int4_fullrange":  # NeuralChat's spelling
            self.weight_dtype = "int4"
        for key in ("weight_dtype", "compute_dtype", "scheme", "algorithm"):  # the choices: their Literal
            check_choice(f"{name}.{key}", getattr(self, key), type_hints(WeightOnlyQuantConfig)[key])
        if self.group_size != -1:
            check_range(name, "group_size", self.group_size, 1, kind=int)


@dataclass
class LoadingModelConfig:
    """How to load the weights: a PEFT adapter on top of the base model, remote code."""

    peft_path: str | None = None
    trust_remote_code: bool = False
    use_cache: bool = True
    allow_download: bool = False
    """A hub id not in the Hugging Face cache is downloaded (else a clear error)."""

    def __post_init__(self):
        if self.peft_path is not None and not isinstance(self.peft_path, str):
            raise TypeError(f"LoadingModelConfig.peft_path must be a path string, got {self.peft_path!r}")


@dataclass
class PipelineConfig:
    """What `build_chatbot` builds: NeuralChat's fields plus the backend choice."""

    model_name_or_path: str | None = None
    """None: the embedded SmolLM2-135M-Instruct."""
    tokenizer_name_or_path: str | None = None
    device: Device = "auto"
    task: Task = ""
    plugins: dict = field(default_factory=dict)
    """{"retrieval": {"enable": True, "args": {...}}}: see plugins/."""
    loading_config: LoadingModelConfig = field(default_factory=LoadingModelConfig)
    optimization_config: Any = None
    """MixedPrecisionConfig (default on CPU) | WeightOnlyQuantConfig | transformers.BitsAndBytesConfig."""
    backend: Backend = "auto"
    system_prompt: str | None = None

    def __post_init__(self):
        name = "PipelineConfig"
        check_choice(f"{name}.device", self.device, Device)
        check_choice(f"{name}.task", self.task, Task)
        check_choice(f"{name}.backend", self.backend, Backend)
        if self.loading_config is None:
            self.loading_config = LoadingModelConfig()
        if not isinstance(self.loading_config, LoadingModelConfig):
            raise TypeError(f"{name}.loading_config must be a LoadingModelConfig, got {self.loading_config!r}")
        if not isinstance(self.plugins, dict):
            raise TypeError(f"{name}.plugins must be a dict of plugin settings, got {self.plugins!r}")
        from neural_chat_app.plugins import check_plugins

        check_plugins(self.plugins, f"{name}.plugins")  # raises naming the unknown plugin or argument
        if self.optimization_config is None:
            self.optimization_config = MixedPrecisionConfig()
        opt = self.optimization_config
        if not isinstance(opt, (MixedPrecisionConfig, WeightOnlyQuantConfig)) and type(opt).__name__ != (
            "BitsAndBytesConfig"
        ):
            raise TypeError(
                f"{name}.optimization_config must be MixedPrecisionConfig, WeightOnlyQuantConfig or "
                f"transformers.BitsAndBytesConfig, got {type(opt).__name__}"
            )
