"""The four argument dataclasses of a fine-tuning run, with Intel NeuralChat's field names and defaults.

One source of truth: the Python API builds them directly; a YAML file (or the loop's `finetune:` section) holds
their field names flat and `TextGenerationFinetuningConfig.from_dict` reads it through the config binder;
`python -m finetune` parses flags with transformers' `HfArgumentParser`; `training_metadata.json` records them.
Each field is documented by the string under it, which is also its `--help`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args

import torch
import transformers

from finetune.config_binding import check_choice, field_values, type_hints, unknown_key

Task = Literal["completion", "chat", "summarization", "code-generation", "extraction", "dpo", "kto"]
TASKS: tuple[str, ...] = get_args(Task)
PREFERENCE_TASKS: tuple[str, ...] = ("dpo", "kto")
"""Tasks trained on preferences through TRL's trainers (finetune/preference.py), not on target replies."""


def _check_positive(obj, name: str, allow_none: bool = True) -> None:
    value = getattr(obj, name)
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{type(obj).__name__}.{name} must be a positive integer, got {value!r}")


@dataclass
class ModelArguments:
    """Which model and tokenizer to fine-tune."""

    model_name_or_path: str | None = None
    """Embedded model name (default: smollm2-135m-instruct), a Hugging Face model folder, a .gguf file, or a hub
    id (read from the Hugging Face cache; downloaded into it with --allow_download)."""
    config_name: str | None = None
    """Config name or path if not the model's."""
    tokenizer_name: str | None = None
    """Tokenizer name or path if not the model's."""
    cache_dir: str | None = None
    """Where hub downloads are stored."""
    use_fast_tokenizer: bool = True
    """Use a fast (tokenizers-backed) tokenizer."""
    model_revision: str = "main"
    """Hub revision (branch, tag or commit)."""
    use_auth_token: bool = False
    """Use the stored hub token (private models)."""
    trust_remote_code: bool = False
    """Allow model code from the model's repo."""
    allow_download: bool = False
    """Download a hub id that is not in the Hugging Face cache yet (needs network)."""


@dataclass
class DataArguments:
    """What data to train and evaluate on, and how it is cut into sequences."""

    dataset_name: str | None = None
    """A datasets-library dataset name or folder."""
    dataset_config_name: str | None = None
    """The dataset's configuration name."""
    train_file: str | None = None
    """Training data: .json, .jsonl or .csv."""
    validation_file: str | None = None
    """Evaluation data: .json, .jsonl or .csv."""
    max_seq_length: int | None = 512
    """Longer sequences are truncated."""
    validation_split_percentage: int | None = 0
    """Percent of the train set held out for evaluation when no validation_file."""
    overwrite_cache: bool = False
    """Recompute the tokenized dataset."""
    pad_to_max_length: bool = False
    """Pad every sequence to max_seq_length."""
    max_train_samples: int | None = None
    """Use at most this many train examples."""
    max_eval_samples: int | None = None
    """Use at most this many eval examples."""
    keep_in_memory: bool = False
    """Keep the loaded dataset in memory."""
    dataset_seed: int = 42
    """Seed for the train/validation split."""
    dataset_cache_directory: str | None = None
    """Where processed data is cached."""
    dataset_concatenation: bool = False
    """Pack several examples into each max_seq_length row (no padding, attention kept within each example)."""
    special_tokens: list[str] | None = None
    """Tokens to add to the tokenizer."""
    max_source_length: int | None = 384
    """Summarization: source token limit."""
    max_target_length: int | None = 128
    """Summarization: target token limit."""
    num_beams: int | None = 4
    """Beams for generation during evaluation."""
    eval_dataset_size: int = 500
    """Size of the validation set when split."""
    streaming: bool = False
    """Stream the dataset (datasets-library datasets)."""
    preprocessing_num_workers: int | None = None
    """Processes for tokenization."""
    prompt_column: str | None = None
    """Column holding the prompt/source (summarization: default 'article')."""
    response_column: str | None = None
    """Column holding the target (summarization: default 'highlights')."""

    def __post_init__(self):
        for name in ("max_seq_length", "max_source_length", "max_target_length", "max_train_samples",
                     "max_eval_samples"):
            _check_positive(self, name)
        pct = self.validation_split_percentage
        if pct is not None and not 0 <= pct < 100:
            raise ValueError(f"DataArguments.validation_split_percentage must be in [0, 100), got {pct}")
        for name in ("train_file", "validation_file"):
            path = getattr(self, name)
            if path is not None and not str(path).endswith((".json", ".jsonl", ".csv")):
                raise ValueError(f"DataArguments.{name}={path!r}: expected a .json, .jsonl or .csv file")
        if self.dataset_concatenation and self.pad_to_max_length:
            raise ValueError("DataArguments.dataset_concatenation packs examples into rows without padding and "
                             "pad_to_max_length pads each example: set one of them")


@dataclass
class FinetuningArguments:
    """How the model is adapted: LoRA or full fine-tuning, QLoRA, the task, precision."""

    lora_rank: int = 8
    """Rank of the LoRA matrices."""
    lora_alpha: int = 16
    """LoRA scaling numerator (scale = alpha / rank)."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA input."""
    lora_target_modules: list[str] | None = None
    """Module names to adapt (default: the attention projections)."""
    lora_all_linear: bool = False
    """Adapt every linear layer but the output head."""
    peft: Literal["lora"] = "lora"
    """Adapter method."""
    train_on_inputs: bool = False
    """Also compute the loss on prompt tokens."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train."""
    task: Task = "completion"
    """The data format and prompt of the task; dpo and kto tune on preferences (prompt/chosen/rejected, or
    prompt/completion/label) through TRL's DPOTrainer and KTOTrainer."""
    do_lm_eval: bool = False
    """Not supported: lm-eval tasks download data sets."""
    lm_eval_tasks: list[str] | None = None
    """Unused; kept for NeuralChat scripts."""
    qlora: bool = False
    """4-bit base weights (bitsandbytes) plus LoRA."""
    double_quant: bool = True
    """QLoRA: quantize the quantization constants."""
    quant_type: Literal["nf4", "fp4"] = "nf4"
    """QLoRA 4-bit data type."""
    bits: Literal[4, 8] = 4
    """QLoRA: bits of the frozen base weights."""
    full_finetune: bool = False
    """Train every weight instead of LoRA adapters."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """auto: bf16 on a CPU with AMX, on AVX512-BF16 without AMX whichever of bf16 and fp32 measures faster there
    (finetune.hardware.matmul_precision), else fp32; bf16 on a GPU that has it."""
    early_stopping_patience: int | None = None
    """Stop after this many evaluations without eval-loss improvement."""
    save_merged_model: bool = True
    """Also write the adapter merged into the model."""
    generation_eval: bool = True
    """With do_eval, also compare base and tuned generations on the held-out set (finetune.evaluate:
    BLEU/ROUGE/..., extraction metrics; for dpo/kto the reward accuracy and margin) in output_dir/eval/."""
    beta: float = 0.1
    """dpo/kto: how strongly the tuned model is held to the base model (TRL's beta); higher stays closer."""
    desirable_weight: float = 1.0
    """kto: loss weight of the examples labelled true (raise it when they are fewer than the false ones)."""
    undesirable_weight: float = 1.0
    """kto: loss weight of the examples labelled false."""
    precompute_ref_log_probs: bool = False
    """dpo/kto: score the whole train set with the base model once before training instead of once per step."""

    def __post_init__(self):
        for name in ("task", "peft", "device", "quant_type", "bits", "precision"):  # the choices: their Literal
            check_choice(f"FinetuningArguments.{name}", getattr(self, name), type_hints(FinetuningArguments)[name])
        _check_positive(self, "lora_rank", allow_none=False)
        _check_positive(self, "early_stopping_patience")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"FinetuningArguments.lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.qlora and self.full_finetune:
            raise ValueError("FinetuningArguments: qlora=True and full_finetune=True exclude each other: QLoRA "
                             "freezes 4-bit base weights and trains LoRA adapters. Choose one.")
        for name in ("beta", "desirable_weight", "undesirable_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"FinetuningArguments.{name} must be a positive number, got {value!r}")
        if self.task in PREFERENCE_TASKS and (self.qlora or self.full_finetune):
            raise ValueError(f"FinetuningArguments: task={self.task!r} trains LoRA adapters only (the reference is "
                             f"the base model with the adapter switched off); set qlora=False and "
                             f"full_finetune=False.")
        if self.do_lm_eval:
            raise ValueError("FinetuningArguments.do_lm_eval=True is not supported: lm-evaluation-harness tasks "
                             "download data sets at run time. Set do_eval=True in the training arguments to "
                             "evaluate on your held-out split.")


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    """transformers' TrainingArguments, accepting what NeuralChat-era scripts pass.

    transformers 5 dropped `overwrite_output_dir` and renamed `evaluation_strategy`, and it refuses `bf16=True`
    on a machine without a GPU unless `use_cpu=True`; NeuralChat notebooks for Xeon pass all three. A plain
    transformers.TrainingArguments works too wherever transformers accepts it.
    """

    overwrite_output_dir: bool = False
    """Start afresh even if output_dir holds another run's files."""
    evaluation_strategy: str | None = None
    """Old name of eval_strategy."""

    def __post_init__(self):
        if self.evaluation_strategy is not None:
            self.eval_strategy = self.evaluation_strategy
        if (self.bf16 or self.fp16) and not torch.cuda.is_available():
            self.use_cpu = True
        super().__post_init__()


def _default_training_args() -> TrainingArguments:
    return TrainingArguments(output_dir="finetuned_model", report_to="none")


@dataclass
class TextGenerationFinetuningConfig:
    """Everything `finetune_model` needs. Built with no arguments it fine-tunes the embedded model."""

    model_args: ModelArguments = field(default_factory=ModelArguments)
    data_args: DataArguments = field(default_factory=DataArguments)
    training_args: TrainingArguments = field(default_factory=_default_training_args)
    finetune_args: FinetuningArguments = field(default_factory=FinetuningArguments)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "") -> TextGenerationFinetuningConfig:
        """From the flat mapping a `python -m finetune` YAML holds: each key a field of one of the four dataclasses
        (`lora_rank`, `train_file`, `learning_rate`, ...). An unknown key or a wrong type is refused by name."""
        sections = split_sections(values, where)
        sections["finetune_args"].setdefault("task", cls.__dataclass_fields__["finetune_args"].default_factory().task)
        return cls(**{name: SECTIONS[name](**kwargs) for name, kwargs in sections.items()})

    def __post_init__(self):
        expected = {"model_args": ModelArguments, "data_args": DataArguments,
                    "training_args": transformers.TrainingArguments,
                    "finetune_args": FinetuningArguments}
        for f in fields(self):
            if not isinstance(getattr(self, f.name), expected[f.name]):
                raise TypeError(f"{type(self).__name__}.{f.name} must be a {expected[f.name].__name__}, "
                                f"got {type(getattr(self, f.name)).__name__}")


@dataclass
class SummarizationFinetuningConfig(TextGenerationFinetuningConfig):
    """A TextGenerationFinetuningConfig whose task defaults to summarization."""

    finetune_args: FinetuningArguments = field(default_factory=lambda: FinetuningArguments(task="summarization"))


@dataclass
class CodeGenerationFinetuningConfig(TextGenerationFinetuningConfig):
    """A TextGenerationFinetuningConfig whose task defaults to code generation."""

    finetune_args: FinetuningArguments = field(default_factory=lambda: FinetuningArguments(task="code-generation"))


SECTIONS: dict[str, type] = {"model_args": ModelArguments, "data_args": DataArguments,
                             "training_args": TrainingArguments, "finetune_args": FinetuningArguments}


def split_sections(values: Mapping[str, Any], where: str = "") -> dict[str, dict[str, Any]]:
    """Flat fine-tuning keys -> {section: keyword arguments}, each checked and converted by the config binder."""
    owner = {f.name: name for name, cls in SECTIONS.items() for f in fields(cls) if f.init}
    grouped: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for key, value in values.items():
        if key not in owner:
            raise unknown_key(where, key, owner, see="python -m finetune --help")
        grouped[owner[key]][key] = value
    return {name: field_values(SECTIONS[name], grouped[name], where) for name in SECTIONS}
