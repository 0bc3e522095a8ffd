"""Fine-tune small chat models on Xeon CPUs in bf16 (AMX), with Intel NeuralChat's API."""

from finetune.config import (
    CodeGenerationFinetuningConfig,
    DataArguments,
    FinetuningArguments,
    ModelArguments,
    SummarizationFinetuningConfig,
    TextGenerationFinetuningConfig,
    TrainingArguments,
)
from finetune.train import FinetuneResult, finetune_model

__all__ = [
    "finetune_model",
    "FinetuneResult",
    "TextGenerationFinetuningConfig",
    "SummarizationFinetuningConfig",
    "CodeGenerationFinetuningConfig",
    "ModelArguments",
    "DataArguments",
    "FinetuningArguments",
    "TrainingArguments",
]
