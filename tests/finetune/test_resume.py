"""A run killed mid-training resumes from its last complete checkpoint and ends as an uninterrupted run does.

pytest tests/finetune/test_resume.py
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]

# The real CLI, with each step slowed down (a callback of finetune_model) so the test can kill it between two
# checkpoints.
SLOW_CLI = """
import functools, sys, time
import finetune.train as train  # first: finetune hides a mismatched torchvision before transformers loads
from transformers import TrainerCallback

class Slow(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        time.sleep(0.3)

train.finetune_model = functools.partial(train.finetune_model, callbacks=[Slow()])
from finetune.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def _args(model_dir, data, out):
    return ["--model_name_or_path", str(model_dir), "--train_file", str(data), "--task", "chat", "--do_train",
            "--output_dir", str(out), "--max_steps", "16", "--save_steps", "4", "--per_device_train_batch_size",
            "4", "--learning_rate", "5e-3", "--lora_dropout", "0", "--logging_steps", "1", "--seed", "3",
            "--disable_tqdm", "True", "--report_to", "none", "--do_eval", "--validation_split_percentage", "10",
            "--generation_eval", "False"]


def _run(argv, **kw):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, *argv], env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def test_killed_run_resumes_from_last_checkpoint(tiny_model_dir, chat_file, tmp_path):
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    proc = _run(["-c", SLOW_CLI, *_args(tiny_model_dir, chat_file, killed)])
    clean = _run(["-m", "finetune", *_args(tiny_model_dir, chat_file, straight)])  # the reference, on the other core
    deadline = time.time() + 120
    while not (killed / "checkpoint-8" / "trainer_state.json").is_file():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "no checkpoint within 120 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "training_metadata.json").exists()

    resumed = _run(["-m", "finetune", *_args(tiny_model_dir, chat_file, killed)])
    log = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, log
    assert "Resuming the interrupted run from" in log
    meta = json.loads((killed / "training_metadata.json").read_text())
    assert meta["metrics"]["train_steps"] == 16
    assert meta["metrics"]["eval_loss"] < meta["metrics"]["eval_loss_before"]  # measured before the kill
    logged_steps = [h["step"] for h in meta["history"] if "loss" in h]
    assert logged_steps == list(range(1, 17))  # steps 1-8 from the checkpoint, then 9-16: no restart
    assert all("tokens_per_s" in h for h in meta["history"] if "loss" in h)

    assert clean.communicate(timeout=300)[0] and clean.returncode == 0
    again = _run(["-m", "finetune", *_args(tiny_model_dir, chat_file, killed)])
    assert "already holds this finished run" in again.communicate(timeout=300)[0] and again.returncode == 0

    a = load_file(killed / "adapter" / "adapter_model.safetensors")
    b = load_file(straight / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] - b[key]).abs().max() < 1e-4, key
