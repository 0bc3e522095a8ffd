"""`python -m finetune launch`: run `python -m finetune` as several processes, on one host or many, each rank with
its own cores, OpenMP threads and affinity (Intel's recipe for PyTorch DDP on Xeon).

One host, 2 processes (gloo):
    python -m finetune launch --nproc_per_node 2 -- --model_name_or_path ... --do_train --output_dir out
Several hosts with torchrun (c10d rendezvous hosted by host 0 at --master_addr:--master_port): run the same line
on every host, changing only --node_rank; --iface names the network the hosts reach each other on, --max_restarts
lets the job restart every host's workers after a failure, each restart resuming from the last checkpoint in
output_dir (which every host must see: a shared filesystem):
    python -m finetune launch --nnodes 2 --node_rank 0 --master_addr 10.0.0.1 --iface eth1 --max_restarts 3 \\
        --nproc_per_node 2 -- <finetune flags>
Several hosts with MPI and oneCCL (needs oneccl_bind_pt and Intel MPI's mpirun), one line on the first host:
    python -m finetune launch --launcher mpirun --backend ccl --hostfile hosts --nnodes 2 --nproc_per_node 2 \\
        --master_addr 10.0.0.1 -- <finetune flags>
`--dry_run` prints the command and each local rank's cores and threads, and runs nothing.

Every rank starts as `python -m finetune.launch --worker ...`: it takes its slice of this host's physical cores
(one thread per core, hyper-thread siblings left out), binds itself to them (sched_setaffinity; numactl binds
memory too with --bind numa), sets OMP_NUM_THREADS and KMP_AFFINITY, and then execs `python -m finetune`.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import shutil
import socket
import struct
import sys
from pathlib import Path

from finetune.errors import UserError
from finetune.extras import dependency, install_hint
from finetune.hardware import allowed_cpus, numa_cpus, physical_cpus

CCL_MODULE = "oneccl_bindings_for_pytorch"  # the import name of the oneccl-bind-pt package
CCL_HINT = (
    "the ccl backend needs Intel's oneCCL bindings for PyTorch built for this torch version "
    f"(package {dependency(CCL_MODULE).distribution}, module {CCL_MODULE}; {install_hint(CCL_MODULE)}), or use "
    "--backend gloo"
)
KMP_AFFINITY = "granularity=fine,compact,1,0"
SHARED_STORE_OFF = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"
# Where MPI implementations put rank, size and local rank (Intel MPI / MPICH, then Open MPI)
MPI_ENV = {
    "RANK": ("PMI_RANK", "OMPI_COMM_WORLD_RANK"),
    "WORLD_SIZE": ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE"),
    "LOCAL_RANK": ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK"),
    "LOCAL_WORLD_SIZE": ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE"),
}


class LaunchError(UserError):
    """A set-up that cannot launch: the message says what is missing and what to do."""


# ---- this host's CPUs (probed by finetune.hardware)


def rank_plan(
    local_rank: int,
    local_world: int,
    cpus: list[int],
    nodes: dict[int, list[int]],
    bind: str,
    threads: int | None = None,
) -> dict:
    """The cores, threads and NUMA node of one local rank: ranks share the cores out evenly, never oversubscribed
    (with more ranks than cores, each gets one core and cores are reused, with a warning)."""
    if local_world < 1 or not 0 <= local_rank < local_world:
        raise LaunchError(f"local rank {local_rank} is outside 0..{local_world - 1}")
    node = None
    pool = cpus
    if bind == "numa" and len(nodes) > 1:
        node_ids = sorted(nodes)
        node = node_ids[local_rank * len(node_ids) // local_world]
        pool = [c for c in cpus if c in nodes[node]] or cpus
        peers = [r for r in range(local_world) if node_ids[r * len(node_ids) // local_world] == node]
        local_rank, local_world = peers.index(local_rank), len(peers)
    per = len(pool) // local_world
    warning = None
    if per == 0:
        per = 1
        warning = f"{local_world} processes on {len(pool)} cores: cores are shared and the run will be slow"
        mine = [pool[local_rank % len(pool)]]
    else:
        mine = pool[local_rank * per : (local_rank + 1) * per]
    return {"cores": mine, "threads": threads or len(mine), "numa_node": node, "warning": warning}


# ---- the launcher


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m finetune launch",
        allow_abbrev=False,
        description="Run python -m finetune as N processes per host on M hosts (torchrun or mpirun).",
        epilog="Everything after -- is passed to python -m finetune.",
    )
    p.add_argument("--nnodes", type=int, default=1, help="hosts taking part")
    p.add_argument(
        "--node_rank",
        type=int,
        default=0,
        help="this host's index, 0..nnodes-1; host 0 runs torchrun's rendezvous (which numbers the ranks)",
    )
    p.add_argument(
        "--nproc_per_node", type=int, default=None, help="processes per host; default: one per NUMA node (at least 1)"
    )
    p.add_argument("--master_addr", default="127.0.0.1", help="address of host 0, reachable from every host")
    p.add_argument("--master_port", type=int, default=29500, help="the rendezvous port on host 0")
    p.add_argument(
        "--iface",
        default=None,
        help="the network interface the hosts reach each other on (e.g. eth1): sets GLOO_SOCKET_IFNAME for the "
        "ranks and, with torchrun, --local_addr to its IPv4 address; default: gloo picks by the host name",
    )
    p.add_argument(
        "--local_addr",
        default=None,
        help="torchrun, several hosts: this host's address as the others reach it (the ranks' MASTER_ADDR when "
        "this host gets rank 0); default: the --iface address, --master_addr on host 0, else the host name",
    )
    p.add_argument(
        "--max_restarts",
        type=int,
        default=0,
        help="torchrun: after a rank fails, restart every host's ranks up to N times; each restart resumes from "
        "the last complete checkpoint in output_dir (several hosts: on a filesystem they all share)",
    )
    p.add_argument(
        "--launcher",
        choices=["auto", "torchrun", "mpirun"],
        default="auto",
        help="auto: mpirun for the ccl backend, else torchrun",
    )
    p.add_argument(
        "--backend",
        choices=["auto", "gloo", "ccl"],
        default="auto",
        help="torch.distributed backend; auto: ccl when oneccl_bind_pt is installed and the launcher "
        "is mpirun, else gloo",
    )
    p.add_argument("--hostfile", default=None, help="mpirun: a file with one host per line")
    p.add_argument(
        "--bind",
        choices=["cores", "numa", "none"],
        default="cores",
        help="cores: each rank pinned to its own physical cores; numa: also one NUMA node per rank "
        "(memory too, through numactl); none: no pinning",
    )
    p.add_argument("--threads_per_proc", type=int, default=None, help="OMP_NUM_THREADS per rank; default: its cores")
    p.add_argument("--dry_run", action="store_true", help="print the command and the per-rank plan; run nothing")
    return p


def have_ccl() -> bool:
    return importlib.util.find_spec(CCL_MODULE) is not None


def resolve(args) -> tuple[str, str]:
    """(launcher, backend) after 'auto', or LaunchError when what they need is missing."""
    backend, launcher = args.backend, args.launcher
    if backend == "auto":
        backend = "ccl" if launcher == "mpirun" and have_ccl() else "gloo"
    if launcher == "auto":
        launcher = "mpirun" if backend == "ccl" else "torchrun"
    if backend == "ccl" and not have_ccl():
        raise LaunchError(f"--backend ccl: {CCL_MODULE} is not importable: {CCL_HINT}")
    if launcher == "mpirun" and shutil.which("mpirun") is None:
        raise LaunchError(
            "--launcher mpirun: no mpirun on PATH. Install Intel MPI (or source the one oneccl_bind_pt ships: "
            "source $(python -c 'import oneccl_bindings_for_pytorch as m, os; print(os.path.dirname(m.__file__))')"
            "/env/setvars.sh), or use --launcher torchrun"
        )
    if launcher == "torchrun" and importlib.util.find_spec("torch") is None:
        raise LaunchError(f"torchrun comes with torch, which is not installed: {install_hint('torch')}")
    return launcher, backend


def finetune_args(args_after: list[str], backend: str) -> list[str]:
    if backend == "ccl" and not any(a.startswith("--ddp_backend") for a in args_after):
        return [*args_after, "--ddp_backend", "ccl"]
    return args_after


def worker_prefix(args) -> list[str]:
    out = ["-m", "finetune.launch", "--worker", "--bind", args.bind]
    if args.threads_per_proc:
        out += ["--threads_per_proc", str(args.threads_per_proc)]
    return out


def interface_address(name: str) -> str:
    """The IPv4 address of network interface `name` (Linux), or LaunchError naming the interfaces there are."""
    import fcntl

    siocgifaddr = 0x8915
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            packed = fcntl.ioctl(s.fileno(), siocgifaddr, struct.pack("256s", name.encode()[:15]))
        except OSError as err:
            names = [n for _, n in socket.if_nameindex()]
            what = "has no IPv4 address" if name in names else "is not an interface of this host"
            raise LaunchError(f"--iface {name} {what} ({err.strerror}); interfaces here: {', '.join(names)}") from None
    return socket.inet_ntoa(packed[20:24])


def local_address(args) -> str | None:
    """This host's address for torchrun's --local_addr: what the other hosts connect to when it gets rank 0."""
    if args.local_addr:
        return args.local_addr
    if args.iface:
        return interface_address(args.iface)
    return args.master_addr if args.node_rank == 0 else None


def build_command(args, launcher: str, backend: str, rest: list[str]) -> list[str]:
    nproc = args.nproc_per_node
    worker = [*worker_prefix(args), "--", *finetune_args(rest, backend)]
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
        if args.nnodes == 1:
            cmd += ["--standalone"]
        else:
            # c10d: host 0 runs the rendezvous store (is_host, since torchrun's guess compares host names and
            # misses an address on a second network); restarts re-run the rendezvous on every host.
            cmd += [
                "--nnodes",
                str(args.nnodes),
                "--rdzv_backend",
                "c10d",
                "--rdzv_endpoint",
                f"{args.master_addr}:{args.master_port}",
                "--rdzv_conf",
                f"is_host={int(args.node_rank == 0)}",
            ]
            addr = local_address(args)
            if addr:
                cmd += ["--local_addr", addr]
        if args.max_restarts:
            cmd += ["--max_restarts", str(args.max_restarts)]
        return [*cmd, *worker]
    cmd = ["mpirun", "-n", str(nproc * args.nnodes), "-ppn", str(nproc)]
    if args.hostfile:
        cmd += ["-f", args.hostfile]
    if args.iface:  # Intel MPI's option: MPI's (and through it oneCCL's) traffic on that network
        cmd += ["-iface", args.iface, "-genv", "GLOO_SOCKET_IFNAME", args.iface]
    cmd += ["-genv", "MASTER_ADDR", args.master_addr, "-genv", "MASTER_PORT", str(args.master_port)]
    return [*cmd, sys.executable, *worker]


def launch_env(args, launcher: str) -> dict[str, str]:
    """The environment variables the launcher sets for torchrun (or mpirun) and the ranks."""
    env = {}
    if args.iface:
        env["GLOO_SOCKET_IFNAME"] = args.iface  # gloo's connections between ranks go over this interface
    if launcher == "torchrun" and args.max_restarts and SHARED_STORE_OFF not in os.environ:
        # The ranks get a fresh store each restart instead of sharing the agent's: torch 2.13's c10d agent makes
        # that shared store once and keeps it across restarts, so a restarted rank can read the previous round's
        # addresses from it (gloo: "connection refused" on restart, seen in tests/finetune/test_multihost.py;
        # cf. pytorch/pytorch#135712).
        env[SHARED_STORE_OFF] = "1"
    return env


def check_args(args) -> None:
    if args.nnodes < 1:
        raise LaunchError(f"--nnodes must be >= 1, got {args.nnodes}")
    if not 0 <= args.node_rank < args.nnodes:
        raise LaunchError(f"--node_rank must be in 0..{args.nnodes - 1}, got {args.node_rank}")
    if args.nproc_per_node is not None and args.nproc_per_node < 1:
        raise LaunchError(f"--nproc_per_node must be >= 1, got {args.nproc_per_node}")
    if args.threads_per_proc is not None and args.threads_per_proc < 1:
        raise LaunchError(f"--threads_per_proc must be >= 1, got {args.threads_per_proc}")
    if args.max_restarts < 0:
        raise LaunchError(f"--max_restarts must be >= 0, got {args.max_restarts}")
    if args.nnodes > 1 and args.master_addr in ("127.0.0.1", "localhost"):
        raise LaunchError("--nnodes > 1 needs --master_addr: the address of host 0 that every host can reach")
    if args.hostfile and not Path(args.hostfile).is_file():
        raise LaunchError(f"--hostfile {args.hostfile}: no such file")


def launch(argv: list[str]) -> int:
    before, rest = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    args, unknown = build_parser().parse_known_args(before)
    rest = [*unknown, *rest]  # finetune flags given without "--"
    check_args(args)
    if args.nproc_per_node is None:
        args.nproc_per_node = max(1, len(numa_cpus()))
    launcher, backend = resolve(args)
    if launcher == "mpirun" and args.max_restarts:
        raise LaunchError("--max_restarts: mpirun does not restart failed ranks; use --launcher torchrun (gloo)")
    cmd = build_command(args, launcher, backend, rest)
    settings = launch_env(args, launcher)
    if args.dry_run:
        print(f"launcher {launcher}, backend {backend}")
        for name, value in settings.items():
            print(f"{name}={value}")
        cpus, nodes = physical_cpus(allowed_cpus()), numa_cpus()
        for r in range(args.nproc_per_node):
            plan = rank_plan(r, args.nproc_per_node, cpus, nodes, args.bind, args.threads_per_proc)
            print(
                f"local rank {r}: cores {plan['cores']} threads {plan['threads']} numa node {plan['numa_node']}"
                + (f" ({plan['warning']})" if plan["warning"] else "")
            )
        print(shlex.join(cmd))
        return 0
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # each worker sets its own
    os.execvpe(cmd[0], cmd, env | settings)
    return 1  # not reached


# ---- the per-rank worker


def worker(argv: list[str]) -> int:
    before, rest = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(prog="python -m finetune.launch --worker", allow_abbrev=False)
    p.add_argument("--worker", action="store_true")
    p.add_argument("--bind", choices=["cores", "numa", "none"], default="cores")
    p.add_argument("--threads_per_proc", type=int, default=None)
    args = p.parse_args(before)
    env = dict(os.environ)
    for name, sources in MPI_ENV.items():  # under mpirun: the variables torch.distributed's env:// init reads
        if name not in env:
            value = next((env[s] for s in sources if s in env), None)
            if value is not None:
                env[name] = value
    local_rank = int(env.get("LOCAL_RANK", 0))
    local_world = int(env.get("LOCAL_WORLD_SIZE", 1))
    cpus = physical_cpus(allowed_cpus())
    plan = rank_plan(local_rank, local_world, cpus, numa_cpus(), args.bind, args.threads_per_proc)
    env["OMP_NUM_THREADS"] = str(plan["threads"])
    env.setdefault("KMP_AFFINITY", KMP_AFFINITY)  # read by Intel's OpenMP (libiomp5) when it is preloaded
    env.setdefault("KMP_BLOCKTIME", "1")
    cmd = [sys.executable, "-m", "finetune", *rest]
    if args.bind != "none":
        os.sched_setaffinity(0, plan["cores"])
        if plan["numa_node"] is not None and shutil.which("numactl"):
            node = str(plan["numa_node"])
            cmd = ["numactl", f"--cpunodebind={node}", f"--membind={node}", *cmd]
    message = (
        f"[launch] rank {env.get('RANK', 0)}/{env.get('WORLD_SIZE', 1)} local {local_rank}/{local_world}: "
        f"cores {plan['cores']} OMP_NUM_THREADS={plan['threads']} numa node {plan['numa_node']}"
        + (f" WARNING {plan['warning']}" if plan["warning"] else "")
    )
    os.write(2, (message + "\n").encode())  # one write: ranks' lines do not interleave
    os.execvpe(cmd[0], cmd, env)
    return 1  # not reached


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        return worker(argv) if argv[:1] == ["--worker"] else launch(argv)
    except LaunchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
