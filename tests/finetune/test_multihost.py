"""Two hosts on this machine train the tiny model together with `python -m finetune launch` (torchrun, c10d
rendezvous, gloo): each host is a network namespace with its own address, joined to the other by a veth pair, so
the ranks find each other and exchange gradients only over that link, as on two machines (the filesystem is
shared, as an NFS output_dir is). Then one host's worker is killed after a checkpoint: torchrun's elastic agents
restart both hosts' workers, which resume from that checkpoint and end as a single-host run with the same global
batch and seed does.

Needs root (or CAP_NET_ADMIN) and iproute2's `ip`; elsewhere the tests skip and say which step failed.
sudo .venv/bin/pytest -m "" tests/finetune/test_multihost.py
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.netns import Host, namespaced_hosts

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def two_hosts():
    with namespaced_hosts(2) as hosts:
        yield hosts


# ---- training across the hosts


def _flags(values: dict) -> list[str]:
    return [item for name, value in values.items() for item in (f"--{name}", str(value))]


def _finetune_args(model_dir, data, out, batch: int, steps: int) -> list[str]:
    # fp32 and no dropout: the 2-host run and the 1-host reference then differ only in the order of float sums
    return _flags({
        "model_name_or_path": model_dir, "train_file": data, "task": "chat", "do_train": True, "output_dir": out,
        "max_steps": steps, "save_steps": 2, "per_device_train_batch_size": batch, "learning_rate": 5e-3,
        "lora_dropout": 0, "precision": "fp32", "seed": 3, "logging_steps": 1, "disable_tqdm": True,
        "report_to": "none",
    })  # fmt: skip


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "GLOO_SOCKET_IFNAME")}
    # LOGLEVEL=INFO: torchrun's agents log each rendezvous round and why they restart (a failed worker, or a node
    # waiting); without it a failed restart leaves only the worker's error, not the sequence that led to it
    return env | {"PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false", "LOGLEVEL": "INFO"}


def _start_host(host: Host, rank: int, master: Host, finetune: list[str], log: Path, restarts: int = 0):
    launch = [sys.executable, "-m", "finetune", "launch", *_flags({
        "nnodes": 2, "node_rank": rank, "master_addr": master.addr, "master_port": 29511, "nproc_per_node": 1,
        "threads_per_proc": 1, "iface": host.iface, "max_restarts": restarts,
    }), "--", *finetune]  # fmt: skip
    with log.open("w") as f:  # a file, not a pipe: nobody reads while it runs
        return subprocess.Popen(
            host.run(launch), env=_env(), cwd=REPO, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )


def _tails(logs, chars: int = 6000) -> str:
    """Every log's end: when one host fails, the cause is often in the other's (its worker or agent went first)."""
    return "\n".join(f"---- {log.name}\n{log.read_text()[-chars:]}" for log in logs if log.is_file())


def _wait(procs, logs, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    for proc, log in zip(procs, logs, strict=True):
        try:
            proc.wait(timeout=max(1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            pytest.fail(f"{log.name} did not finish in {timeout:.0f} s:\n{_tails(logs)}")
        assert proc.returncode == 0, f"{log.name} exited {proc.returncode}:\n{_tails(logs)}"


@contextlib.contextmanager
def _stopped_on_exit(procs):
    try:
        yield
    finally:
        for proc in procs:  # each host's launcher runs in its own session: end it and what it started
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _starts(log: Path) -> list[str]:
    """The '[launch] rank R/W' lines each worker prints when it starts."""
    return re.findall(r"\[launch\] rank (\d+)/(\d+)", log.read_text())


@pytest.mark.integration
@pytest.mark.slow
def test_two_hosts_train_together(two_hosts, tiny_model_dir, chat_file, tmp_path):
    out = tmp_path / "two-hosts"
    logs = [tmp_path / f"host{i}.log" for i in range(2)]
    finetune = _finetune_args(tiny_model_dir, chat_file, out, batch=4, steps=3)
    procs = []
    with _stopped_on_exit(procs):
        for i, host in enumerate(two_hosts):
            procs.append(_start_host(host, i, two_hosts[0], finetune, logs[i]))
        _wait(procs, logs)
    meta = json.loads((out / "training_metadata.json").read_text())
    assert meta["world_size"] == 2 and meta["metrics"]["train_steps"] == 3
    # one rank on each host; the rendezvous, not --node_rank, numbers them
    assert sorted(_starts(logs[0]) + _starts(logs[1])) == [("0", "2"), ("1", "2")]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


def _worker_pid(agent_pid: int) -> int | None:
    """The worker torchrun's agent started (the launcher exec'd into the agent, so the agent has its pid)."""
    for task in Path(f"/proc/{agent_pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                if b"finetune" in Path(f"/proc/{child}/cmdline").read_bytes():
                    return int(child)
    return None


def _complete_checkpoints(out: Path) -> list[int]:
    return sorted(int(p.parent.name.split("-")[1]) for p in out.glob("checkpoint-*/trainer_state.json"))


@pytest.mark.integration
@pytest.mark.slow
def test_killed_host_restarts_both_from_the_checkpoint(two_hosts, tiny_model_dir, chat_file, tmp_path):
    steps = 12
    out, single = tmp_path / "two-hosts", tmp_path / "one-host"
    logs = [tmp_path / f"host{i}.log" for i in range(2)]
    finetune = _finetune_args(tiny_model_dir, chat_file, out, batch=4, steps=steps)
    procs = []
    with _stopped_on_exit(procs):
        for i, host in enumerate(two_hosts):
            procs.append(_start_host(host, i, two_hosts[0], finetune, logs[i], restarts=1))
        deadline = time.time() + 300
        while not _complete_checkpoints(out):
            assert all(p.poll() is None for p in procs), _tails(logs)
            assert time.time() < deadline, "no checkpoint within 300 s"
            time.sleep(0.02)
        victim = _worker_pid(procs[1].pid)
        assert victim is not None, f"no worker under host 1's agent:\n{_tails(logs)}"
        os.kill(victim, signal.SIGSTOP)  # host 0 now waits for it in the next allreduce: the run cannot finish
        saved = _complete_checkpoints(out)
        assert saved[-1] < steps, f"the run reached step {saved[-1]} before the kill; raise max_steps"
        os.kill(victim, signal.SIGKILL)

        reference = [sys.executable, "-m", "finetune", *_finetune_args(tiny_model_dir, chat_file, single, 8, steps)]
        ref_log = tmp_path / "one-host.log"
        with ref_log.open("w") as f:  # the same global batch (8) and seed in one process, while the hosts restart
            procs.append(
                subprocess.Popen(
                    reference,
                    env=_env() | {"OMP_NUM_THREADS": "1"},
                    cwd=REPO,
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        _wait(procs, [*logs, ref_log])

    for log in logs:  # both hosts' workers started twice, and both resumed from a checkpoint
        text = log.read_text()
        assert len(_starts(log)) == 2, _tails(logs)
        resumed = re.findall(r"Resuming the interrupted run from \S*checkpoint-(\d+)", text)
        assert len(resumed) == 1 and int(resumed[0]) >= saved[-1], _tails(logs)
    meta = json.loads((out / "training_metadata.json").read_text())
    assert meta["world_size"] == 2 and meta["metrics"]["train_steps"] == steps
    assert [h["step"] for h in meta["history"] if "loss" in h] == list(range(1, steps + 1))

    # Tolerance 1e-5 absolute (adapter weights reach ~0.15): both runs are fp32 and see the same 8 examples per step
    # (the DDP sampler gives rank r batches r, r+2, ... of one seeded order; the loss is divided by the tokens of
    # all ranks), so they differ only in the order of float sums: each rank sums its 4 examples and gloo adds
    # the two, where one process sums all 8. That is rounding at fp32's ~1e-7 relative (measured: 3e-8 after
    # 12 steps); bf16 would round at ~4e-3 and hide nothing smaller. A run that skipped, repeated or reordered
    # a step moves weights by ~lr = 5e-3, far outside.
    a = load_file(out / "adapter" / "adapter_model.safetensors")
    b = load_file(single / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-5, worst
