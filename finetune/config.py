"""The four argument dataclasses of a fine-tuning run, with Intel NeuralChat's field names and defaults.

One source of truth: the Python API builds them directly, `python -m finetune` parses them from flags or a YAML
file with transformers' `HfArgumentParser`, and `training_metadata.json` records them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal, get_args

import torch
import transformers

Task = Literal["completion", "chat", "summarization", "code-generation", "extraction"]
TASKS: tuple[str, ...] = get_args(Task)


def _check_choice(obj, name: str, choices: tuple) -> None:
    value = getattr(obj, name)
    if value not in choices:
        allowed = ", ".join(map(str, choices))
        raise ValueError(f"{type(obj).__name__}.{name}={value!r} is not valid; choose one of: {allowed}")


def _check_positive(obj, name: str, allow_none: bool = True) -> None:
    value = getattr(obj, name)
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{type(obj).__name__}.{name} must be a positive integer, got {value!r}")


@dataclass
class ModelArguments:
    """Which model and tokenizer to fine-tune."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Embedded model name (default: smollm2-135m-instruct), a Hugging Face model folder, "
                          "a .gguf file, or a hub id (read from the Hugging Face cache; downloaded into it with "
                          "--allow_download)."},
    )
    config_name: str | None = field(default=None, metadata={"help": "Config name or path if not the model's."})
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer name or path if not the model's."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where hub downloads are stored."})
    use_fast_tokenizer: bool = field(default=True, metadata={"help": "Use a fast (tokenizers-backed) tokenizer."})
    model_revision: str = field(default="main", metadata={"help": "Hub revision (branch, tag or commit)."})
    use_auth_token: bool = field(default=False, metadata={"help": "Use the stored hub token (private models)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the model's repo."})
    allow_download: bool = field(
        default=False, metadata={"help": "Download a hub id that is not in the Hugging Face cache yet (needs network)."}
    )


@dataclass
class DataArguments:
    """What data to train and evaluate on, and how it is cut into sequences."""

    dataset_name: str | None = field(default=None, metadata={"help": "A datasets-library dataset name or folder."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset's configuration name."})
    train_file: str | None = field(default=None, metadata={"help": "Training data: .json, .jsonl or .csv."})
    validation_file: str | None = field(default=None, metadata={"help": "Evaluation data: .json, .jsonl or .csv."})
    max_seq_length: int | None = field(default=512, metadata={"help": "Longer sequences are truncated."})
    validation_split_percentage: int | None = field(
        default=0, metadata={"help": "Percent of the train set held out for evaluation when no validation_file."}
    )
    overwrite_cache: bool = field(default=False, metadata={"help": "Recompute the tokenized dataset."})
    pad_to_max_length: bool = field(default=False, metadata={"help": "Pad every sequence to max_seq_length."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use at most this many train examples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use at most this many eval examples."})
    keep_in_memory: bool = field(default=False, metadata={"help": "Keep the loaded dataset in memory."})
    dataset_seed: int = field(default=42, metadata={"help": "Seed for the train/validation split."})
    dataset_cache_directory: str | None = field(default=None, metadata={"help": "Where processed data is cached."})
    dataset_concatenation: bool = field(
        default=False,
        metadata={"help": "Pack several examples into each max_seq_length row (no padding, attention kept "
                          "within each example)."},
    )
    special_tokens: list[str] | None = field(default=None, metadata={"help": "Tokens to add to the tokenizer."})
    max_source_length: int | None = field(default=384, metadata={"help": "Summarization: source token limit."})
    max_target_length: int | None = field(default=128, metadata={"help": "Summarization: target token limit."})
    num_beams: int | None = field(default=4, metadata={"help": "Beams for generation during evaluation."})
    eval_dataset_size: int = field(default=500, metadata={"help": "Size of the validation set when split."})
    streaming: bool = field(default=False, metadata={"help": "Stream the dataset (datasets-library datasets)."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for tokenization."})
    prompt_column: str | None = field(
        default=None, metadata={"help": "Column holding the prompt/source (summarization: default 'article')."}
    )
    response_column: str | None = field(
        default=None, metadata={"help": "Column holding the target (summarization: default 'highlights')."}
    )

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


@dataclass
class FinetuningArguments:
    """How the model is adapted: LoRA or full fine-tuning, QLoRA, the task, precision."""

    lora_rank: int = field(default=8, metadata={"help": "Rank of the LoRA matrices."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (scale = alpha / rank)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "Module names to adapt (default: the attention projections)."}
    )
    lora_all_linear: bool = field(default=False, metadata={"help": "Adapt every linear layer but the output head."})
    peft: Literal["lora"] = field(default="lora", metadata={"help": "Adapter method."})
    train_on_inputs: bool = field(default=False, metadata={"help": "Also compute the loss on prompt tokens."})
    device: Literal["auto", "cpu", "cuda"] = field(default="auto", metadata={"help": "Where to train."})
    task: Task = field(default="completion", metadata={"help": "The data format and prompt of the task."})
    do_lm_eval: bool = field(default=False, metadata={"help": "Not supported: lm-eval tasks download data sets."})
    lm_eval_tasks: list[str] | None = field(default=None, metadata={"help": "Unused; kept for NeuralChat scripts."})
    qlora: bool = field(default=False, metadata={"help": "4-bit base weights (bitsandbytes) plus LoRA."})
    double_quant: bool = field(default=True, metadata={"help": "QLoRA: quantize the quantization constants."})
    quant_type: Literal["nf4", "fp4"] = field(default="nf4", metadata={"help": "QLoRA 4-bit data type."})
    bits: Literal[4, 8] = field(default=4, metadata={"help": "QLoRA: bits of the frozen base weights."})
    full_finetune: bool = field(default=False, metadata={"help": "Train every weight instead of LoRA adapters."})
    precision: Literal["auto", "bf16", "fp32"] = field(
        default="auto",
        metadata={"help": "auto: bf16 where the CPU has AMX/AVX512-BF16 (or training_args.bf16 on GPU), else fp32."},
    )
    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "Stop after this many evaluations without eval-loss improvement."}
    )
    save_merged_model: bool = field(default=True, metadata={"help": "Also write the adapter merged into the model."})
    generation_eval: bool = field(
        default=True,
        metadata={"help": "With do_eval, also compare base and tuned generations on the held-out set "
                          "(finetune.evaluate: BLEU/ROUGE/..., extraction metrics) in output_dir/eval/."},
    )

    def __post_init__(self):
        _check_choice(self, "task", TASKS)
        _check_choice(self, "peft", ("lora",))
        _check_choice(self, "device", ("auto", "cpu", "cuda"))
        _check_choice(self, "quant_type", ("nf4", "fp4"))
        _check_choice(self, "bits", (4, 8))
        _check_choice(self, "precision", ("auto", "bf16", "fp32"))
        _check_positive(self, "lora_rank", allow_none=False)
        _check_positive(self, "early_stopping_patience")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"FinetuningArguments.lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.qlora and self.full_finetune:
            raise ValueError("FinetuningArguments: qlora=True and full_finetune=True exclude each other: QLoRA "
                             "freezes 4-bit base weights and trains LoRA adapters. Choose one.")
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

    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Start afresh even if output_dir holds another run's files."}
    )
    evaluation_strategy: str | None = field(default=None, metadata={"help": "Old name of eval_strategy."})

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
