"""Fine-tune small chat models on Xeon CPUs in bf16 (AMX), with Intel NeuralChat's API.

Names are imported on first use (PEP 562), so `import finetune.data` does not pay for transformers' Trainer.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING

from finetune.torchvision_guard import hide_mismatched_torchvision

# Before anything imports transformers: a CUDA torchvision beside the CPU torch breaks it (see the module).
hide_mismatched_torchvision()
# PEFT imports bitsandbytes, whose CPU backend warns on every start that the optional `kernels` package (which
# fetches kernels from the Hugging Face hub at run time) is missing; it then uses its own CPU code, which QLoRA on
# a CPU runs on either way. Keep its real errors.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

_EXPORTS = {
    "finetune_model": "finetune.train",
    "FinetuneResult": "finetune.train",
    "TextGenerationFinetuningConfig": "finetune.config",
    "SummarizationFinetuningConfig": "finetune.config",
    "CodeGenerationFinetuningConfig": "finetune.config",
    "ModelArguments": "finetune.config",
    "DataArguments": "finetune.config",
    "FinetuningArguments": "finetune.config",
    "TrainingArguments": "finetune.config",
    "UserError": "finetune.errors",
}

__all__ = list(_EXPORTS)

if TYPE_CHECKING:
    from finetune.config import (  # noqa: F401
        CodeGenerationFinetuningConfig,
        DataArguments,
        FinetuningArguments,
        ModelArguments,
        SummarizationFinetuningConfig,
        TextGenerationFinetuningConfig,
        TrainingArguments,
    )
    from finetune.errors import UserError  # noqa: F401
    from finetune.train import FinetuneResult, finetune_model  # noqa: F401


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'finetune' has no attribute {name!r}")
