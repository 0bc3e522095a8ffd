"""torchrun with 2 processes trains with DDP (gloo on CPU), one thread each.

pytest tests/finetune/test_distributed.py
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def test_torchrun_two_processes(tiny_model_dir, chat_file, tmp_path):
    out = tmp_path / "ddp"
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["PYTHONPATH"] = str(REPO)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "finetune", "--model_name_or_path", str(tiny_model_dir), "--train_file", str(chat_file),
           "--task", "chat", "--do_train", "--output_dir", str(out), "--max_steps", "6",
           "--per_device_train_batch_size", "4", "--learning_rate", "5e-3", "--logging_steps", "1",
           "--save_steps", "3", "--disable_tqdm", "True", "--report_to", "none"]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    meta = json.loads((out / "training_metadata.json").read_text())
    assert meta["world_size"] == 2
    assert meta["threads"] == 1  # the 2 cores are shared, never oversubscribed
    assert meta["metrics"]["train_steps"] == 6
    # 6 steps x 2 processes x 4 examples: both ranks' tokens are counted
    assert meta["history"][-1]["num_input_tokens_seen"] > 6 * 4 * 20
    assert (out / "merged" / "model.safetensors").is_file()
