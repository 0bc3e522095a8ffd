"""The conversation data pipeline: raw chat logs in, clean seeded train/validation/test splits out.

    from finetune.data import DataPipelineConfig, prepare_dataset
    result = prepare_dataset(DataPipelineConfig.from_yaml("configs/pipeline.yaml"))

or `python -m finetune.data prepare --config configs/pipeline.yaml`. Importing this package loads no
model library: transformers comes in only when a token-length filter needs the tokenizer.
"""

from finetune.config_binding import ConfigError
from finetune.data.config import DataPipelineConfig
from finetune.data.pipeline import NoConversationsError, PrepareResult, SmallDatasetWarning, prepare_dataset

__all__ = [
    "ConfigError",
    "DataPipelineConfig",
    "NoConversationsError",
    "PrepareResult",
    "SmallDatasetWarning",
    "prepare_dataset",
]
