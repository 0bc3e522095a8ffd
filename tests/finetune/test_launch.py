"""`python -m finetune launch`: per-rank core plans, commands for torchrun and mpirun, clear errors, and a real
2-process run on this machine (gloo).

OMP_NUM_THREADS=1 PYTHONPATH=. pytest -q tests/finetune/test_launch.py
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from finetune import launch

REPO = Path(__file__).resolve().parents[2]


def run_launch(argv, capsys):
    code = launch.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


# ---- plans


def test_ranks_share_the_cores_out_without_overlap():
    cpus = list(range(8))
    plans = [launch.rank_plan(r, 4, cpus, {}, "cores") for r in range(4)]
    assert [p["cores"] for p in plans] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert all(p["threads"] == 2 and p["warning"] is None for p in plans)
    assert launch.rank_plan(1, 2, cpus, {}, "cores", threads=3)["threads"] == 3


def test_numa_binding_puts_ranks_on_their_node():
    nodes = {0: [0, 1, 2, 3], 1: [4, 5, 6, 7]}
    plans = [launch.rank_plan(r, 4, list(range(8)), nodes, "numa") for r in range(4)]
    assert [(p["numa_node"], p["cores"]) for p in plans] == [(0, [0, 1]), (0, [2, 3]), (1, [4, 5]), (1, [6, 7])]


def test_more_ranks_than_cores_is_a_warning():
    plan = launch.rank_plan(2, 3, [0, 1], {}, "cores")
    assert plan["cores"] == [0] and plan["threads"] == 1 and "slow" in plan["warning"]
    with pytest.raises(launch.LaunchError, match="outside"):
        launch.rank_plan(3, 3, [0, 1], {}, "cores")


# ---- commands and errors


def test_single_host_dry_run_uses_torchrun_standalone(capsys):
    code, out, _ = run_launch(["--nproc_per_node", "2", "--dry_run", "--", "--do_train", "--output_dir", "o"], capsys)
    assert code == 0 and "launcher torchrun, backend gloo" in out
    cmd = out.strip().splitlines()[-1]
    assert "-m torch.distributed.run --nproc_per_node 2 --standalone -m finetune.launch --worker" in cmd
    assert cmd.endswith("-- --do_train --output_dir o")
    assert "local rank 0:" in out and "local rank 1:" in out


def test_multi_host_torchrun_command(capsys):
    argv = [
        "--nnodes",
        "2",
        "--node_rank",
        "1",
        "--master_addr",
        "10.0.0.1",
        "--nproc_per_node",
        "2",
        "--dry_run",
        "--model_name_or_path",
        "m",
    ]  # finetune flags may also come without --
    code, out, _ = run_launch(argv, capsys)
    cmd = out.strip().splitlines()[-1]
    assert code == 0 and "--standalone" not in cmd
    # c10d rendezvous hosted by host 0 (is_host: torchrun's own guess compares host names); no restarts asked
    assert "--nnodes 2 --rdzv_backend c10d --rdzv_endpoint 10.0.0.1:29500 --rdzv_conf is_host=0" in cmd
    assert "--local_addr" not in cmd and "--max_restarts" not in cmd
    assert cmd.endswith("-- --model_name_or_path m")
    code, out, _ = run_launch([*argv[:3], "0", *argv[4:]], capsys)  # host 0: the rendezvous, at --master_addr
    assert "--rdzv_conf is_host=1 --local_addr 10.0.0.1 " in out.strip().splitlines()[-1]


def test_iface_and_restarts_for_torchrun(monkeypatch, capsys):
    monkeypatch.setattr(launch, "interface_address", lambda name: {"eth1": "10.1.0.2"}[name])
    monkeypatch.delenv(launch.SHARED_STORE_OFF, raising=False)
    argv = [
        "--nnodes",
        "2",
        "--node_rank",
        "1",
        "--master_addr",
        "10.1.0.1",
        "--iface",
        "eth1",
        "--max_restarts",
        "3",
        "--nproc_per_node",
        "1",
        "--dry_run",
        "--",
        "--do_train",
    ]
    code, out, _ = run_launch(argv, capsys)
    assert code == 0
    assert "GLOO_SOCKET_IFNAME=eth1" in out and f"{launch.SHARED_STORE_OFF}=1" in out
    cmd = out.strip().splitlines()[-1]
    assert "--rdzv_conf is_host=0 --local_addr 10.1.0.2 --max_restarts 3 -m finetune.launch" in cmd
    code, out, _ = run_launch([*argv[:-3], "--local_addr", "host-b", "--dry_run"], capsys)
    assert "--local_addr host-b " in out  # given, it wins over the interface's address


def test_iface_address_and_unknown_interface():
    assert launch.interface_address("lo") == "127.0.0.1"
    with pytest.raises(launch.LaunchError, match=r"--iface nosuch0 is not an interface of this host.*: .*lo"):
        launch.interface_address("nosuch0")


def test_mpirun_takes_the_interface(monkeypatch, capsys):
    monkeypatch.setattr(launch.shutil, "which", lambda name: f"/usr/bin/{name}")
    argv = [
        "--launcher",
        "mpirun",
        "--backend",
        "gloo",
        "--nnodes",
        "2",
        "--nproc_per_node",
        "1",
        "--master_addr",
        "10.0.0.1",
        "--iface",
        "eth1",
        "--dry_run",
    ]
    code, out, _ = run_launch(argv, capsys)
    assert code == 0 and "-iface eth1 -genv GLOO_SOCKET_IFNAME eth1 " in out.strip().splitlines()[-1]


def test_mpirun_with_ccl_when_installed(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(launch, "have_ccl", lambda: True)
    monkeypatch.setattr(launch.shutil, "which", lambda name: f"/usr/bin/{name}")
    hosts = tmp_path / "hosts"
    hosts.write_text("node-a\nnode-b\n")
    argv = [
        "--launcher",
        "mpirun",
        "--hostfile",
        str(hosts),
        "--nnodes",
        "2",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "10.0.0.1",
        "--dry_run",
        "--",
        "--do_train",
    ]
    code, out, _ = run_launch(argv, capsys)
    assert code == 0 and "launcher mpirun, backend ccl" in out
    cmd = out.strip().splitlines()[-1]
    assert cmd.startswith(f"mpirun -n 4 -ppn 2 -f {hosts} -genv MASTER_ADDR 10.0.0.1 -genv MASTER_PORT 29500 ")
    assert cmd.endswith("-- --do_train --ddp_backend ccl")


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--backend", "ccl"], "oneccl_bindings_for_pytorch is not importable"),
        (["--launcher", "mpirun", "--backend", "gloo"], "no mpirun on PATH"),
        (["--nnodes", "2"], "--master_addr"),
        (["--nnodes", "2", "--node_rank", "2", "--master_addr", "h"], "--node_rank must be in 0..1"),
        (["--hostfile", "/nonexistent/hosts"], "no such file"),
        (["--max_restarts", "-1"], "--max_restarts must be >= 0"),
    ],
)
def test_missing_backend_or_bad_arguments_are_clear_errors(monkeypatch, capsys, argv, match):
    monkeypatch.setattr(launch, "have_ccl", lambda: False)
    monkeypatch.setattr(launch.shutil, "which", lambda name: None)
    code, _, err = run_launch([*argv, "--dry_run"], capsys)
    assert code == 2 and match in err


def test_mpirun_refuses_restarts(monkeypatch, capsys):
    monkeypatch.setattr(launch.shutil, "which", lambda name: f"/usr/bin/{name}")
    code, _, err = run_launch(["--launcher", "mpirun", "--backend", "gloo", "--max_restarts", "2", "--dry_run"], capsys)
    assert code == 2 and "mpirun does not restart failed ranks; use --launcher torchrun" in err


def test_worker_maps_mpi_ranks_and_sets_threads(monkeypatch):
    seen = {}
    monkeypatch.setattr(launch, "allowed_cpus", lambda: [0, 1, 2, 3])
    monkeypatch.setattr(launch, "physical_cpus", lambda cpus: cpus)
    monkeypatch.setattr(launch, "numa_cpus", lambda: {})
    monkeypatch.setattr(launch.os, "sched_setaffinity", lambda pid, cores: seen.update(cores=sorted(cores)))
    monkeypatch.setattr(launch.os, "execvpe", lambda f, cmd, env: seen.update(cmd=cmd, env=env))
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "KMP_AFFINITY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PMI_RANK", "3")
    monkeypatch.setenv("PMI_SIZE", "4")
    monkeypatch.setenv("MPI_LOCALRANKID", "1")
    monkeypatch.setenv("MPI_LOCALNRANKS", "2")
    launch.main(["--worker", "--bind", "cores", "--", "--do_train"])
    env = seen["env"]
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"]) == ("3", "4", "1", "2")
    assert seen["cores"] == [2, 3] and env["OMP_NUM_THREADS"] == "2"
    assert env["KMP_AFFINITY"] == launch.KMP_AFFINITY
    assert seen["cmd"][-3:] == ["-m", "finetune", "--do_train"]


# ---- a real run


@pytest.mark.integration
@pytest.mark.slow
def test_two_processes_on_this_host(tiny_model_dir, chat_file, tmp_path):
    out = tmp_path / "ddp"
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["PYTHONPATH"] = str(REPO)
    cmd = [
        sys.executable,
        "-m",
        "finetune",
        "launch",
        "--nproc_per_node",
        "2",
        "--",
        "--model_name_or_path",
        str(tiny_model_dir),
        "--train_file",
        str(chat_file),
        "--task",
        "chat",
        "--do_train",
        "--output_dir",
        str(out),
        "--max_steps",
        "3",
        "--per_device_train_batch_size",
        "4",
        "--logging_steps",
        "1",
        "--save_strategy",
        "no",
        "--disable_tqdm",
        "True",
        "--report_to",
        "none",
    ]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    meta = json.loads((out / "training_metadata.json").read_text())
    assert meta["world_size"] == 2 and meta["threads"] == 1 and meta["metrics"]["train_steps"] == 3
    ranks = sorted(
        re.findall(r"\[launch\] rank (\d)/2 local (\d)/2: cores (\[[\d, ]*\]) OMP_NUM_THREADS=1", proc.stderr)
    )
    assert [(r, local) for r, local, _ in ranks] == [("0", "0"), ("1", "1")], proc.stderr[-3000:]
    if len(os.sched_getaffinity(0)) >= 2:  # each rank pinned to its own core
        assert ranks[0][2] != ranks[1][2]
