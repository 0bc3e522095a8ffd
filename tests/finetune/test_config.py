"""Configs: NeuralChat's names and defaults, self-validation, CLI and YAML parsing of the same dataclasses.

pytest tests/finetune/test_config.py
"""

from pathlib import Path

import pytest

from finetune import (
    CodeGenerationFinetuningConfig,
    DataArguments,
    FinetuningArguments,
    ModelArguments,
    SummarizationFinetuningConfig,
    TextGenerationFinetuningConfig,
    TrainingArguments,
)
from finetune.__main__ import main, parse_config
from finetune.config_binding import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_neuralchat_field_names_and_defaults():
    d, f = DataArguments(), FinetuningArguments()
    assert (d.max_seq_length, d.max_source_length, d.max_target_length, d.validation_split_percentage) == (
        512, 384, 128, 0)
    assert d.dataset_concatenation is False and d.max_train_samples is None and d.max_eval_samples is None
    assert (f.lora_rank, f.lora_alpha, f.lora_dropout, f.lora_target_modules) == (8, 16, 0.05, None)
    assert (f.peft, f.task, f.device, f.train_on_inputs, f.lora_all_linear) == ("lora", "completion", "auto",
                                                                              False, False)
    assert (f.qlora, f.bits, f.quant_type, f.double_quant, f.full_finetune) == (False, 4, "nf4", True, False)
    assert ModelArguments().model_name_or_path is None


def test_empty_config_is_valid_and_aliases_set_their_task():
    assert TextGenerationFinetuningConfig().finetune_args.task == "completion"
    assert SummarizationFinetuningConfig().finetune_args.task == "summarization"
    assert CodeGenerationFinetuningConfig().finetune_args.task == "code-generation"


@pytest.mark.parametrize("kwargs,message", [
    ({"task": "translate"}, "FinetuningArguments.task='translate' is not valid; choose one of: completion, chat"),
    ({"peft": "prefix"}, "FinetuningArguments.peft='prefix'"),
    ({"bits": 3}, "FinetuningArguments.bits=3"),
    ({"lora_rank": 0}, "FinetuningArguments.lora_rank must be a positive integer"),
    ({"lora_dropout": 1.5}, "FinetuningArguments.lora_dropout"),
    ({"qlora": True, "full_finetune": True}, "exclude each other"),
    ({"do_lm_eval": True}, "do_lm_eval"),
])
def test_finetuning_arguments_name_the_bad_field(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        FinetuningArguments(**kwargs)


@pytest.mark.parametrize("kwargs,message", [
    ({"train_file": "data.txt"}, "DataArguments.train_file='data.txt'"),
    ({"validation_split_percentage": 100}, "validation_split_percentage"),
    ({"max_seq_length": 0}, "DataArguments.max_seq_length"),
])
def test_data_arguments_name_the_bad_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DataArguments(**kwargs)


def test_config_rejects_wrong_types():
    with pytest.raises(TypeError, match="finetune_args must be a FinetuningArguments"):
        TextGenerationFinetuningConfig(finetune_args={"task": "chat"})


def test_training_arguments_accept_neuralchat_era_fields_on_cpu(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), overwrite_output_dir=True, bf16=True,
                             evaluation_strategy="steps")
    assert args.overwrite_output_dir and args.bf16 and args.eval_strategy == "steps"


def test_neuralchat_launch_line_parses():
    config = parse_config(
        "--model_name_or_path smollm2-135m-instruct --bf16 True --train_file data.json --dataset_concatenation "
        "--task completion --do_train --learning_rate 1e-4 --num_train_epochs 3 --output_dir out --peft lora "
        "--lora_target_modules q_proj v_proj --overwrite_output_dir".split())
    assert config.model_args.model_name_or_path == "smollm2-135m-instruct"
    assert config.data_args.dataset_concatenation is True and config.data_args.train_file == "data.json"
    assert config.training_args.bf16 and config.training_args.learning_rate == 1e-4
    assert config.finetune_args.lora_target_modules == ["q_proj", "v_proj"]
    assert config.training_args.overwrite_output_dir


def test_yaml_file_and_flag_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train_file: a.jsonl\ntask: chat\nlora_rank: 4\noutput_dir: o\nlora_target_modules: [q_proj]\n")
    config = parse_config([str(path), "--lora_rank", "16"])
    assert config.finetune_args.task == "chat" and config.finetune_args.lora_rank == 16
    assert config.finetune_args.lora_target_modules == ["q_proj"] and config.data_args.train_file == "a.jsonl"


def test_yaml_unknown_key_is_named(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train_file: a.jsonl\nlora_rnak: 4\n")
    with pytest.raises(ConfigError, match="run.yaml: unknown key 'lora_rnak'; did you mean 'lora_rank'"):
        parse_config([str(path)])
    path.write_text("train_file: a.jsonl\nlora_rank: four\n")
    with pytest.raises(ConfigError, match="run.yaml: lora_rank must be int, got str 'four'"):
        parse_config([str(path)])


def test_key_value_overrides_and_yaml_floats(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train_file: a.jsonl\nlearning_rate: 1e-4\neval_strategy: 'no'\n")  # YAML 1.1: 1e-4 is text
    config = parse_config([str(path), "lora_rank=16", "--max_steps", "3", "lora_target_modules=[q_proj, v_proj]"])
    assert config.training_args.learning_rate == 1e-4 and config.training_args.max_steps == 3
    assert config.finetune_args.lora_rank == 16 and config.finetune_args.lora_target_modules == ["q_proj", "v_proj"]
    assert config.training_args.eval_strategy == "no"


def test_from_dict_reads_the_flat_keys():
    config = SummarizationFinetuningConfig.from_dict({"lora_rank": 4, "max_steps": 2, "train_file": "a.jsonl"})
    assert config.finetune_args.task == "summarization" and config.finetune_args.lora_rank == 4
    assert config.training_args.max_steps == 2 and config.data_args.train_file == "a.jsonl"
    with pytest.raises(ConfigError, match="unknown key 'run.lerning_rate'; did you mean 'learning_rate'"):
        TextGenerationFinetuningConfig.from_dict({"lerning_rate": 1}, "run")


def test_invalid_choice_on_the_command_line_lists_choices(capsys):
    with pytest.raises(SystemExit):
        parse_config(["--task", "translate", "--output_dir", "o"])
    assert "completion" in capsys.readouterr().err


def _finetune_configs() -> list[Path]:
    """Shipped YAMLs whose header runs them with `python -m finetune configs/<name>` (server, pipeline and quantize
    configs have their own tests; a quantize config may name the fine-tune that comes before it)."""
    return [
        p for p in sorted((REPO / "configs").glob("*.yaml")) if f"python -m finetune configs/{p.name}" in p.read_text()
    ]


def test_finetune_configs_are_found():
    assert len(_finetune_configs()) >= 1


@pytest.mark.parametrize("path", _finetune_configs(), ids=lambda p: p.name)
def test_every_shipped_finetune_config_parses(path):
    config = parse_config([str(path)])
    assert config.training_args.output_dir
    if config.data_args.train_file:
        assert (REPO / config.data_args.train_file).is_file(), config.data_args.train_file


def test_cli_reports_bad_data_without_a_traceback(tmp_path, capsys, tiny_model_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": \n')
    code = main(["--model_name_or_path", str(tiny_model_dir), "--train_file", str(bad), "--do_train",
                 "--output_dir", str(tmp_path / "o")])
    assert code == 2
    assert f"{bad}:2: malformed JSON line" in capsys.readouterr().err


@pytest.mark.integration
@pytest.mark.parametrize("path", _finetune_configs(), ids=lambda p: p.name)
def test_every_shipped_finetune_config_trains_on_the_tiny_model(path, tiny_model_dir, tmp_path, monkeypatch):
    from finetune import finetune_model

    monkeypatch.chdir(REPO)
    config = parse_config([str(path), "--model_name_or_path", str(tiny_model_dir), "--max_steps", "2",
                           "--output_dir", str(tmp_path / "out"), "--save_strategy", "no", "--disable_tqdm", "True"])
    result = finetune_model(config)
    assert result.metrics["train_steps"] == 2 and (tmp_path / "out" / "training_metadata.json").is_file()


@pytest.mark.integration
def test_the_console_script_trains_on_the_allocator_python_m_finetune_uses(tiny_model_dir, chat_file, tmp_path):
    import os
    import subprocess
    import sys

    from finetune.allocator import find_allocator

    script = Path(sys.executable).parent / "neuralchat-finetune"
    assert script.is_file(), "scripts/setup.sh installs the project with its console scripts"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("LD_PRELOAD", None)
    proc = subprocess.run([str(script), "--model_name_or_path", str(tiny_model_dir), "--train_file", str(chat_file),
                           "--task", "chat", "--do_train", "--max_steps", "1", "--output_dir", str(tmp_path / "out"),
                           "--save_strategy", "no", "--disable_tqdm", "True", "--report_to", "none"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [x for x in proc.stderr.splitlines() if "Compute: " in x]
    path = find_allocator()
    assert line.endswith(f"allocator {'tcmalloc' if 'tcmalloc' in (path or '') else 'jemalloc'}" if path
                         else "allocator glibc malloc"), line
