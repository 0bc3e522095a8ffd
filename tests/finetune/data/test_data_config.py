"""The YAML config and its dataclasses (finetune/data/config.py, bound by finetune/config_binding.py)."""

from pathlib import Path

import pytest

from finetune.data import ConfigError, DataPipelineConfig

CONFIGS = sorted((Path(__file__).parents[3] / "configs").glob("pipeline*.yaml"))


def test_defaults():
    cfg = DataPipelineConfig()
    assert (cfg.split.train_ratio, cfg.split.validation_ratio, cfg.split.test_ratio) == (0.8, 0.1, 0.1)
    assert cfg.export.format_type == "messages" and cfg.export.min_conversations == 100
    assert cfg.clean.redact == ["url", "email", "phone", "ip", "card"]
    assert not cfg.filter.needs_tokenizer


def test_there_are_shipped_configs():
    assert len(CONFIGS) >= 4


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_parses(path):
    cfg = DataPipelineConfig.from_yaml(path)
    assert cfg.ingest.paths
    assert path.read_text().startswith("#") and "python -m finetune.data prepare --config" in path.read_text()


@pytest.mark.parametrize("data, message", [
    ({"filtr": {}}, "unknown key 'filtr'; did you mean 'filter'?"),
    ({"filter": {"min_turn": 1}}, "unknown key 'filter.min_turn'; did you mean 'min_turns'?"),
    ({"export": {"format_type": "csv"}}, "export.format_type='csv' is not valid; choose one of: messages, chatml"),
    ({"export": {"multi_turn": "all"}}, "export.multi_turn='all' is not valid"),
    ({"filter": {"min_turns": "two"}}, "filter.min_turns must be int, got str 'two'"),
    ({"filter": {"min_turns": True}}, "filter.min_turns must be int, got bool"),
    ({"ingest": {"paths": "a.jsonl"}}, "ingest.paths must be a list"),
    ({"filter": {"min_chars": -1}}, "filter.min_chars must be >= 0"),
    ({"filter": {"min_tokens": 10, "max_tokens": 5}}, "filter.min_tokens=10 is larger than filter.max_tokens=5"),
    ({"filter": {"metadata": ["augmented is true"]}}, "filter.metadata: cannot read 'augmented is true'"),
    ({"filter": {"max_repetition": 1.5}}, "filter.max_repetition must be in (0, 1]"),
    ({"clean": {"redact": ["ssn"]}}, "clean.redact: unknown kind 'ssn'"),
    ({"clean": {"phone_region": "usa"}}, "clean.phone_region must be a 2-letter region code"),
    ({"dedup": {"threshold": 0}}, "dedup.threshold must be in (0, 1]"),
    ({"dedup": {"num_perm": 8}}, "dedup.num_perm must be >= 16"),
    ({"split": {"train_ratio": 0.5}}, "must be 1 with none negative"),
    ({"split": {"train_ratio": 0, "validation_ratio": 0.5, "test_ratio": 0.5}}, "split.train_ratio must be > 0"),
    ({"split": 3}, "split: expected a mapping"),
])
def test_bad_values_name_the_key(data, message):
    with pytest.raises(ConfigError) as e:
        DataPipelineConfig.from_dict(data)
    assert message in str(e.value)


def test_ints_are_accepted_for_floats():
    assert DataPipelineConfig.from_dict({"split": {"train_ratio": 1, "validation_ratio": 0,
                                                   "test_ratio": 0}}).split.train_ratio == 1.0


def test_overrides_are_read_as_yaml_and_checked():
    cfg = DataPipelineConfig.from_dict({"filter": {"min_turns": 1}},
                                       ["filter.min_turns=3", "ingest.paths=[a, b]", "split.group_by=tree_id"])
    assert cfg.filter.min_turns == 3 and cfg.ingest.paths == ["a", "b"] and cfg.split.group_by == "tree_id"
    with pytest.raises(ConfigError, match="unknown key 'filter.nope'"):
        DataPipelineConfig.from_dict({}, ["filter.nope=1"])
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        DataPipelineConfig.from_dict({}, ["filter.min_turns"])


def test_yaml_errors_name_the_file(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("export:\n  format_typ: messages\n")
    with pytest.raises(ConfigError, match=r"p.yaml: unknown key 'export.format_typ'; did you mean 'format_type'"):
        DataPipelineConfig.from_yaml(path)


def test_legacy_sections_map_onto_the_new_fields():
    cfg = DataPipelineConfig.from_dict({
        "data_collection": {"log_file": "conversations.jsonl", "min_conversation_length": 10,
                            "max_conversation_length": 1000, "auto_export": True, "export_interval": 100},
        "data_preparation": {"format_type": "chatml", "max_length": 2048, "train_ratio": 0.7,
                             "validation_ratio": 0.2, "test_ratio": 0.1},
    })
    assert cfg.ingest.paths == ["conversations.jsonl"]
    assert (cfg.filter.min_chars, cfg.filter.max_chars, cfg.filter.max_tokens) == (10, 1000, 2048)
    assert cfg.export.format_type == "chatml"
    assert (cfg.split.train_ratio, cfg.split.validation_ratio) == (0.7, 0.2)


def test_legacy_conflicts_and_unknown_keys_are_errors():
    with pytest.raises(ConfigError, match="data_preparation.train_ratio and split.train_ratio set the same thing"):
        DataPipelineConfig.from_dict({"data_preparation": {"train_ratio": 0.8}, "split": {"train_ratio": 0.8}})
    with pytest.raises(ConfigError, match="unknown key 'data_preparation.lora_r'"):
        DataPipelineConfig.from_dict({"data_preparation": {"lora_r": 16}})
    with pytest.raises(ConfigError, match="unknown key 'training'"):
        DataPipelineConfig.from_dict({"training": {"method": "qlora"}})


def test_round_trip_through_dict():
    cfg = DataPipelineConfig.from_dict({"filter": {"metadata": ["metadata.augmented == true"]}})
    assert DataPipelineConfig.from_dict(cfg.to_dict()) == cfg
