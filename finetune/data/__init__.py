"""The conversation data pipeline: raw chat logs in, clean seeded train/validation/test splits out.

    from finetune.data import DataPipelineConfig, prepare_dataset
    result = prepare_dataset(DataPipelineConfig.from_yaml("configs/pipeline.yaml"))

or `python -m finetune.data prepare --config configs/pipeline.yaml`. Importing this package loads no
model library: transformers comes in only when a token-length filter needs the tokenizer.

Preference data (TRL's DPO `prompt`/`chosen`/`rejected` and KTO `prompt`/`completion`/`label` rows, plain strings
or lists of messages, mixed in a file as you like) goes through the same stages with one more key:

    result = prepare_dataset({"ingest": {"paths": ["feedback.jsonl"]},
                              "export": {"output_dir": "data/prefs", "format_type": "preference"}})
    finetune_model(... train_file=result.splits["train"], task="dpo")  # or "kto"; test for finetune.evaluate

`export.preference_task` (auto, dpo or kto: with kto a pair is written as a good and a bad example, so thumbs and
pairs make one KTO set) and `export.preference_style` (auto, conversational or plain) fix the layout; with auto
the first record kept decides, and records that do not fit go to rejects.jsonl with the reason. The splits are
grouped by prompt: no prompt of the test split is trained on.
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
