"""Training throughput: the plain recipe vs ours, side by side in one invocation, against the matmul limit.

    python -m benchmarks.train                                  # embedded SmolLM2-135M, LoRA, 3 variants
    python -m benchmarks.train --steps 6 --variants plain-bf16,ours
    python -m benchmarks.train --model path/to/tiny --steps 2   # what the test runs
    python -m benchmarks.train --sweep lora_rank=8,16,64 --sweep seq_len=128,256,512,1024 --sweep batch=1,4,8 \
        --sweep method=lora,full --sweep threads=1,2 --sweep processes=1,2     # one setting at a time, `ours`
    python -m benchmarks train --task dpo                      # DPO: TRL's DPOTrainer defaults vs ours
    python -m benchmarks train --shape llama-3.2-1b            # a real architecture and size, random weights
    python -m benchmarks train --shape llama-3.1-8b --steps 2 --seq-len 128

--shape NAME (benchmarks.shapes: the sizes qwen2.5-0.5b, llama-3.2-1b, qwen2.5-1.5b, llama-3.2-3b, llama-3.1-8b;
the families qwen3-0.6b, gemma-3-1b, gemma-2-2b, phi-3-mini, qwen3-4b, mistral-7b) builds that architecture at its
real size with random weights, directly in each side's dtype, and runs plain Trainer + PEFT in the machine's
training precision (plain-bf16; plain-fp32 on a CPU without bf16 instructions) beside ours, each in its own process.
Small defaults (2 timed steps after 1, batch 2, sequences up to 256 tokens); no held-out loss (the
weights are random). A side whose estimated peak (finetune.memory) exceeds the available memory is not started and
its row says so; ours turns on gradient checkpointing by itself when it needs it (--gradient-checkpointing auto).
The shape limit is measured at the run's own token count per step.

Variants (same model, data, LoRA settings, batch, steps and seed; each in its own process so that peak RSS is
its own):
- plain-fp32: transformers Trainer + PEFT LoRA, fp32, batches padded to their longest example (the guides' recipe)
- plain-bf16: the same with bf16=True (autocast)
- ours:       finetune_model's defaults (bf16 frozen weights, fp32 adapters, autocast, padding-free batches with
              one attention call per example, logits only where there is a label), in a process started as
              `python -m finetune` starts: on tcmalloc/jemalloc when the machine has one (finetune.allocator)
- ours-glibc: ours in a process started without the tcmalloc/jemalloc preload, on glibc malloc (what the
              allocator buys)
- ours-fp32:  ours with precision="fp32" (what bf16 buys inside our recipe)
- ours-bf16:  ours with precision="bf16" (on a CPU that trains in fp32 because its bf16 matmuls measured slower:
              what that choice buys)
- ours-qlora: ours with 4-bit NF4 base weights (bitsandbytes): the GPU recipe; it also runs, slowly, on a CPU
- ours-unpadded: ours without rounding each packed row up to a multiple of 8 tokens (finetune.collate
              .pad_packed_rows): what the rounding buys

--task dpo measures preference tuning on the shipped Aurora pairs (examples/data/aurora_preferences.jsonl), LoRA on
the same targets, rank, learning rate, batch and steps for each variant:
- trl:     TRL's DPOTrainer with its default DPOConfig (model loaded by TRL in fp32, bf16 autocast where the CPU has
           bf16 instructions, gradient checkpointing on, batches padded to their longest sequence, the head over
           every position), on glibc malloc
- trl-nogc: the same without gradient checkpointing (what TRL's one default costs)
- ours:    finetune_model(task="dpo"): TRL's DPOTrainer inside our recipe (bf16 frozen weights, padding-free
           forward with one attention call per sequence, the head only over reply tokens, lean ops), on tcmalloc
- ours-padded: ours with TRL's padded forward (what the padding-free forward buys)
- ours-unpadded: ours without rounding each row up to a multiple of 8 tokens (what the rounding buys)
Useful tokens are the non-padding tokens of the trained chosen and rejected sequences; the limit counts 6 x
parameters FLOPs per useful token (the policy's forward and backward through the frozen weights, and the
reference's forward). The held-out reward accuracy and margin are measured the same way for every variant, in fp32,
on aurora_preferences_heldout.jsonl (finetune.evaluate.preference).

--device cuda runs the same variants on a GPU (plain-bf16 then uses the GPU's bf16, ours its CUDA defaults) and
writes the same schema, so `python -m benchmarks report` can put CPU and GPU side by side.

The data are multi-turn chats of varied length (1 to 8 turns, 40 to 500 tokens), the loss is on assistant turns.
Reported: useful (non-padding) tokens/s and all tokens/s over the timed steps (warm-up excluded), peak RSS, and
the held-out loss after training measured the same way for every variant. The limit is the LoRA step at 100% of
the matmul peak measured in this run (before and after the variants; the faster measurement counts, as a shared
host can be busy during one), in the precision the machine trains in (bf16 on AMX / AVX512-BF16, fp32
elsewhere: machine.train_precision): 4 x parameters FLOPs per token (forward, plus backward through the
frozen weights; no weight gradients). The 4096^3 matmul of that peak is faster than the model's own small
layers: the "of shape limit" column measures against the same FLOPs at the GFLOPS of the model's linear shapes
(machine.model_shape_gflops), the limit this model can approach.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.machine import (
    REPO,
    cpu_label,
    energy_joules,
    machine_info,
    markdown_table,
    matmul_peaks,
    model_shape_gflops,
    peak_rss_mb,
    publish,
    train_precision,
)
from benchmarks.shapes import SHAPE_DEFAULTS, SHAPES, prepare_shape, shape_estimates, shape_side_skip

VARIANTS = ("plain-fp32", "plain-bf16", "ours", "ours-glibc", "ours-fp32", "ours-bf16", "ours-qlora",
            "ours-unpadded")
DEFAULT_VARIANTS = "plain-fp32,plain-bf16,ours"
SYSTEM = "You are the support assistant of Aurora Bikes. Answer briefly and precisely."


def chat_dataset(n: int, seed: int) -> list[dict]:
    """Multi-turn support chats of varied length, built from the demo facts."""
    sys.path.insert(0, str(REPO / "examples"))
    from make_demo_data import FACTS

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        messages = [{"role": "system", "content": SYSTEM}]
        for _ in range(rng.choice([1, 1, 2, 2, 3, 4, 6, 8])):
            questions, answer = rng.choice(FACTS)
            extra = " ".join(rng.choice(questions) for _ in range(rng.randint(0, 3)))
            messages += [{"role": "user", "content": f"{rng.choice(questions)} {extra}".strip()},
                         {"role": "assistant", "content": answer}]
        rows.append({"messages": messages})
    return rows


# --- one variant, in its own process --------------------------------------------------------------------------

def _step_meter(device: str):
    from transformers import TrainerCallback

    class StepMeter(TrainerCallback):
        """Wall time (and energy, where readable) at the start and after every step, and the tokens of every step's
        batch on this process: all of them and the non-padding ones. They are counted at the model's input, where
        the plain recipe and ours alike pass them (state.num_input_tokens_seen would sum all DDP ranks)."""

        def __init__(self):
            self.times, self.joules, self.batches = [], [], []
            self._tokens, self._hook = (0, 0), None

        def _mark(self):
            if device == "cuda":
                import torch

                torch.cuda.synchronize()
            self.times.append(time.perf_counter())
            self.joules.append(energy_joules(device))

        def _count(self, module, args, kwargs):
            import torch

            if not torch.is_grad_enabled():  # DPO's reference forward scores the same batch again
                return
            ids, mask = kwargs.get("input_ids", args[0] if args else None), kwargs.get("attention_mask")
            total = int(ids.numel())
            useful = int(mask.sum()) if mask is not None else total
            self._tokens = (self._tokens[0] + total, self._tokens[1] + useful)

        def on_train_begin(self, args, state, control, model=None, **kw):
            self._hook = model.register_forward_pre_hook(self._count, with_kwargs=True)

        def on_step_begin(self, args, state, control, **kw):
            if not self.times:
                self._mark()

        def on_step_end(self, args, state, control, **kw):
            self._mark()
            self.batches.append(self._tokens)
            self._tokens = (0, 0)

        def on_train_end(self, args, state, control, **kw):
            self._hook.remove()

    return StepMeter()


def _plain_trainer(model_path, tokenizer, train, out, args, bf16: bool, callbacks: list):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from finetune.models import RANDOM_WEIGHTS_FILE, load_model

    if (Path(model_path) / RANDOM_WEIGHTS_FILE).is_file():  # a --shape: built, not read (fp32, as from_pretrained)
        model = load_model(model_path, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=args.lora_rank, lora_alpha=2 * args.lora_rank, lora_dropout=0.0,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    training_args = TrainingArguments(
        output_dir=str(out), max_steps=args.warmup + args.steps, per_device_train_batch_size=args.batch,
        learning_rate=2e-4, use_cpu=args.device == "cpu", bf16=bf16, save_strategy="no", report_to="none",
        logging_steps=1, disable_tqdm=True, seed=0)
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    return Trainer(model=model, args=training_args, train_dataset=train, data_collator=collator, callbacks=callbacks)


def _switch_row_padding(variant: str) -> None:
    """ours-unpadded: rows not rounded up to a multiple of 8 tokens (finetune.collate.pad_packed_rows)."""
    if variant == "ours-unpadded":
        import finetune.collate

        finetune.collate.TOKEN_MULTIPLE = 1


def _run_worker(variant: str, model: str, data_path: Path, out: Path, args) -> dict:
    import torch

    from finetune.allocator import loaded_allocator
    from finetune.formatting import FormatOptions
    from finetune.hardware import configure_threads
    from finetune.models import load_tokenizer, resolve_model_path

    rank = int(os.environ.get("RANK", "0"))
    configure_threads(int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    rows = [json.loads(line) for line in data_path.read_text().splitlines()]
    model_path = resolve_model_path(model)
    tokenizer = load_tokenizer(model_path)
    meter = _step_meter(args.device)
    if variant.startswith("plain"):
        from finetune.dataset import tokenize_records
        from finetune.records import Record

        opts = FormatOptions("chat", args.seq_len)
        train, _ = tokenize_records(tokenizer, [Record(r, "bench") for r in rows[args.eval_examples:]], opts)
        trainer = _plain_trainer(model_path, tokenizer, train, out, args, bf16=variant == "plain-bf16",
                                 callbacks=[meter])
        trainer.train()
        if rank == 0:
            trainer.model.save_pretrained(out / "adapter")
    else:
        from finetune import (
            DataArguments,
            FinetuningArguments,
            ModelArguments,
            TextGenerationFinetuningConfig,
            finetune_model,
        )
        from finetune import TrainingArguments as Args

        _switch_row_padding(variant)
        train_file = out / "train.jsonl"
        train_file.write_text("".join(json.dumps(r) + "\n" for r in rows[args.eval_examples:]))
        finetune_model(TextGenerationFinetuningConfig(
            ModelArguments(model_name_or_path=model_path),
            DataArguments(train_file=str(train_file), max_seq_length=args.seq_len),
            Args(output_dir=str(out / "run"), do_train=True, max_steps=args.warmup + args.steps,
                 per_device_train_batch_size=args.batch, learning_rate=2e-4, save_strategy="no",
                 report_to="none", logging_steps=1, disable_tqdm=True, seed=0,
                 gradient_checkpointing=args.gradient_checkpointing == "on"),
            FinetuningArguments(task="chat", lora_rank=args.lora_rank, lora_alpha=2 * args.lora_rank,
                                lora_dropout=0.0, lora_all_linear=True, save_merged_model=False,
                                full_finetune=args.full,
                                precision={"ours-fp32": "fp32", "ours-bf16": "bf16"}.get(variant, "auto"),
                                qlora=variant == "ours-qlora", device=args.device)), callbacks=[meter])
        if rank == 0:
            (out / "adapter").symlink_to(out / "run" / ("merged" if args.full else "adapter"))
    peak_rss = peak_rss_mb()
    random_weights = is_shape(model_path)
    timed = meter.batches[args.warmup: args.warmup + args.steps]
    seconds = meter.times[-1] - meter.times[args.warmup]
    start_j, end_j = meter.joules[args.warmup], meter.joules[-1]
    joules = end_j - start_j if start_j is not None and end_j is not None else None
    return {
        "variant": variant,
        "device": args.device,
        "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
        "threads": torch.get_num_threads(),
        "allocator": loaded_allocator() or "glibc",
        "timed_steps": len(timed),
        "seconds": round(seconds, 3),
        "tokens": sum(t for t, _ in timed),
        "useful_tokens": sum(u for _, u in timed),
        "tokens_per_s": sum(t for t, _ in timed) / seconds,
        "useful_tokens_per_s": sum(u for _, u in timed) / seconds,
        "peak_rss_mb": round(peak_rss),
        "tokens_per_joule": sum(u for _, u in timed) / joules if joules else None,
        "seconds_per_step": round(seconds / len(timed), 3),
        "gradient_checkpointing": args.gradient_checkpointing == "on" and not variant.startswith("plain"),
        "eval_loss": (_held_out_loss(model_path, tokenizer, out / "adapter", rows[: args.eval_examples], args)
                      if rank == 0 and not random_weights else None),
        "parameters": parameter_count(model_path),
    }


def is_shape(model_path: str) -> bool:
    from finetune.models import RANDOM_WEIGHTS_FILE

    return (Path(model_path) / RANDOM_WEIGHTS_FILE).is_file()


def parameter_count(model_path: str) -> int:
    """The parameters a token of text passes through, what the FLOPs limit counts: a multimodal model's language
    model only (its vision tower sees no chat: Gemma 3 4B's 0.42 B of 4.30 B)."""
    from safetensors import safe_open

    from finetune.language_model import language_model_key, text_only
    from finetune.memory import count_parameters, model_config

    config = model_config(model_path)
    if is_shape(model_path):  # no weights on disk: the architecture's own count
        return count_parameters(config if text_only(config) else config.get_text_config())
    total = 0
    for f in Path(model_path).glob("*.safetensors"):
        with safe_open(f, "pt") as st:
            for key in st.keys():
                if not text_only(config) and language_model_key(key) is None:
                    continue
                count = 1
                for size in st.get_slice(key).get_shape():
                    count *= size
                total += count
    return total


def _held_out_loss(model_path, tokenizer, adapter_dir: Path, rows: list[dict], args) -> float:
    """Mean loss on held-out assistant tokens, fp32, the same computation for every variant."""
    import torch
    from peft import PeftModel

    from finetune.collate import PaddingFreeCollator, kept_positions_loss
    from finetune.formatting import FormatOptions, tokenize_record
    from finetune.models import load_model

    if (adapter_dir / "adapter_config.json").is_file():
        model = PeftModel.from_pretrained(load_model(model_path, dtype=torch.float32), adapter_dir).eval()
    else:  # a full fine-tune: the trained model itself
        model = load_model(str(adapter_dir.resolve()), dtype=torch.float32).eval()
    opts = FormatOptions("chat", args.seq_len)
    examples = [e for e in (tokenize_record(tokenizer, r, opts) for r in rows) if e]
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(examples), 4):
            batch = PaddingFreeCollator()(examples[i: i + 4])
            labels = batch.pop("labels")
            loss = kept_positions_loss(model(**batch), labels)
            total += float(loss) * labels.numel()
            count += labels.numel()
    return total / count


# --- preference tuning (--task dpo) ---------------------------------------------------------------------------

DPO_VARIANTS = ("trl", "trl-nogc", "ours", "ours-padded", "ours-unpadded")
DPO_DATA = REPO / "examples" / "data" / "aurora_preferences.jsonl"
DPO_HELD_OUT = REPO / "examples" / "data" / "aurora_preferences_heldout.jsonl"
DPO_LR = 5e-4


def _run_dpo_worker(variant: str, model: str, data_path: Path, out: Path, args) -> dict:
    import torch

    from finetune.allocator import loaded_allocator
    from finetune.hardware import configure_threads
    from finetune.models import load_tokenizer, resolve_model_path
    from finetune.preference import preference_rows
    from finetune.records import read_records

    configure_threads(1)
    model_path = resolve_model_path(model)
    meter = _step_meter(args.device)
    rows = preference_rows(read_records(data_path))[: args.examples]
    if variant.startswith("trl"):
        from datasets import Dataset
        from peft import LoraConfig
        from trl import DPOConfig, DPOTrainer

        tokenizer = load_tokenizer(model_path)
        config = DPOConfig(output_dir=str(out / "run"), max_steps=args.warmup + args.steps,
                           per_device_train_batch_size=args.batch, max_length=args.seq_len, learning_rate=DPO_LR,
                           use_cpu=args.device == "cpu", save_strategy="no", report_to="none", disable_tqdm=True,
                           include_num_input_tokens_seen="non_padding", seed=0,
                           # TRL's default bf16=True autocast, except where the CPU has no bf16 kernel (see --help)
                           bf16=train_precision(args.device) == "bf16",
                           gradient_checkpointing=variant == "trl")
        trainer = DPOTrainer(model=model_path, args=config, train_dataset=Dataset.from_list(rows),
                             processing_class=tokenizer, callbacks=[meter],
                             peft_config=LoraConfig(r=args.lora_rank, lora_alpha=2 * args.lora_rank, lora_dropout=0.0,
                                                    target_modules="all-linear", task_type="CAUSAL_LM"))
        trainer.train()
        trainer.model.save_pretrained(out / "adapter")
    else:
        import finetune.preference as preference
        from finetune import (
            DataArguments,
            FinetuningArguments,
            ModelArguments,
            TextGenerationFinetuningConfig,
            finetune_model,
        )
        from finetune import TrainingArguments as Args

        if variant == "ours-padded":  # TRL's own padded forward inside our recipe
            preference.use_padding_free_forward = lambda model, outputs: None
        _switch_row_padding(variant)
        finetune_model(TextGenerationFinetuningConfig(
            ModelArguments(model_name_or_path=model_path),
            DataArguments(train_file=str(data_path), max_seq_length=args.seq_len, max_train_samples=args.examples),
            Args(output_dir=str(out / "run"), do_train=True, max_steps=args.warmup + args.steps,
                 per_device_train_batch_size=args.batch, learning_rate=DPO_LR, save_strategy="no",
                 report_to="none", logging_steps=1, disable_tqdm=True, seed=0),
            FinetuningArguments(task="dpo", lora_rank=args.lora_rank, lora_alpha=2 * args.lora_rank,
                                lora_dropout=0.0, lora_all_linear=True, save_merged_model=False,
                                generation_eval=False, device=args.device)), callbacks=[meter])
        (out / "adapter").symlink_to(out / "run" / "adapter")
    peak_rss = peak_rss_mb()
    timed = meter.batches[args.warmup: args.warmup + args.steps]
    seconds = meter.times[-1] - meter.times[args.warmup]
    return {
        "variant": variant,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "allocator": loaded_allocator() or "glibc",
        "timed_steps": len(timed),
        "seconds": round(seconds, 3),
        "tokens": sum(t for t, _ in timed),
        "useful_tokens": sum(u for _, u in timed),
        "tokens_per_s": sum(t for t, _ in timed) / seconds,
        "useful_tokens_per_s": sum(u for _, u in timed) / seconds,
        "peak_rss_mb": round(peak_rss),
        **_held_out_preferences(model_path, out / "adapter", args),
        "parameters": parameter_count(model_path),
    }


def _held_out_preferences(model_path: str, adapter_dir: Path, args) -> dict:
    """Held-out reward accuracy and margin of the trained adapter against its base (the adapter switched off),
    fp32, the same computation for every variant."""
    import torch
    from peft import PeftModel

    from finetune.chat_template import ensure_chat_template
    from finetune.evaluate.preference import preference_metrics, reply_logps, tokenize_preference
    from finetune.models import load_model, load_tokenizer
    from finetune.preference import preference_rows
    from finetune.records import read_records

    tokenizer = load_tokenizer(model_path)
    ensure_chat_template(tokenizer)
    rows = preference_rows(read_records(DPO_HELD_OUT))[: args.eval_examples]
    sequences = [s for row in rows for s in tokenize_preference(tokenizer, row, args.seq_len)]
    model = PeftModel.from_pretrained(load_model(model_path, dtype=torch.float32), adapter_dir).eval()
    logps = reply_logps(model, sequences)
    with model.disable_adapter():
        reference = reply_logps(model, sequences)
    metrics = preference_metrics(logps, reference)
    return {"held_out_reward_accuracy": metrics["reward_accuracy"], "held_out_reward_margin": metrics["reward_margin"],
            "held_out_pairs": len(rows)}


def run_dpo(args) -> dict:
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in DPO_VARIANTS]
    if unknown:
        raise SystemExit(f"unknown --task dpo variant(s) {unknown}; choose from {', '.join(DPO_VARIANTS)}")
    payload = {"benchmark": "train-dpo", **_machine(args), "data": str(DPO_DATA.relative_to(REPO)),
               "learning_rate": DPO_LR}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in variants:
            print(f"-- {variant}", flush=True)
            results.append(_run_variant(variant, args, DPO_DATA, Path(tmp) / variant))
    # per useful token: the policy's forward and backward through frozen weights (4 x parameters), the reference's
    # forward (2 x parameters)
    limit = _peak(payload) * 1e9 / (6 * results[0]["parameters"])
    base = next((r for r in results if r["variant"] == "trl"), None)
    for r in results:
        r["fraction_of_limit"] = r["useful_tokens_per_s"] / limit
        if base:
            r["speedup_vs_trl"] = r["useful_tokens_per_s"] / base["useful_tokens_per_s"]
    return {**payload, "limit_tokens_per_s": limit, "results": results}


def render_dpo(payload: dict) -> str:
    hw = payload["machine"]["hardware"]
    precision = payload.get("train_precision", "bf16")
    head = (f"DPO model={payload['model']} data={payload['data']} seq_len<={payload['seq_len']} "
            f"batch={payload['batch']} pairs, timed steps={payload['steps']} LoRA r={payload['lora_rank']} | "
            f"{cpu_label(payload['machine'])}, {hw['usable_cores']} cores, load average "
            f"{payload['machine']['load_average_1min']:.1f} | matmul {precision} {_peak(payload):.0f} GFLOPS -> "
            f"DPO limit {payload['limit_tokens_per_s']:.0f} tok/s")
    columns = [("variant", "variant"), ("allocator", "malloc"), ("useful_tokens_per_s", "useful tok/s"),
               ("tokens_per_s", "padded tok/s"), ("speedup_vs_trl", "x trl"), ("fraction_of_limit", "of limit"),
               ("peak_rss_mb", "peak RSS MB"), ("held_out_reward_accuracy", "held-out reward acc %"),
               ("held_out_reward_margin", "held-out margin (nats)")]
    return head + "\n" + markdown_table(payload["results"], columns)


# --- the driver ---------------------------------------------------------------------------------------------

SWEEPS = {"lora_rank": int, "seq_len": int, "batch": int, "method": str, "threads": int, "processes": int}


def _run_variant(variant: str, args, data: Path, out: Path, threads: int | None = None, processes: int = 1) -> dict:
    """One variant in its own process (or `processes` DDP processes under torchrun); its result row."""
    out.mkdir(parents=True)
    worker = ["-m", "benchmarks.train", "--worker", variant, "--data", str(data), "--out", str(out),
              *_passthrough(args), "--task", args.task, "--examples", str(args.examples)]
    if processes > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               *worker]
    else:
        cmd = [sys.executable, *worker]
    env = _variant_env(variant, {**os.environ, "PYTHONPATH": str(REPO)})
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    elif processes > 1:
        env.pop("OMP_NUM_THREADS", None)  # each rank takes its share of the cores (finetune.hardware)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"variant {variant} failed:\n{proc.stderr[-4000:]}")
    ranks = [json.loads(p.read_text()) for p in sorted(out.glob("result-*.json"))]
    row = dict(ranks[0])
    if len(ranks) > 1:  # DDP: tokens of all ranks over the slowest rank's time
        seconds = max(r["seconds"] for r in ranks)
        for key in ("tokens", "useful_tokens"):
            row[key] = sum(r[key] for r in ranks)
        row |= {"seconds": seconds, "tokens_per_s": row["tokens"] / seconds,
                "useful_tokens_per_s": row["useful_tokens"] / seconds,
                "peak_rss_mb": sum(r["peak_rss_mb"] for r in ranks), "processes": len(ranks),
                "useful_tokens_per_rank": [r["useful_tokens"] for r in ranks]}
    return row


def _variant_env(variant: str, env: dict) -> dict:
    """The environment of a variant's process. ours runs on the allocator `python -m finetune` runs on; ours-glibc
    on glibc malloc, even when `env` preloads an allocator already; the plain recipe keeps `env` as it is."""
    from finetune.allocator import CANDIDATES, allocator_env

    if variant == "ours-glibc":  # "system" also keeps any allocator_env/re-exec further down from adding one
        env = {**env, "NEURALCHAT_ALLOCATOR": "system"}
        kept = [p for p in env.pop("LD_PRELOAD", "").replace(" ", ":").split(":")
                if p and not any(kind in os.path.basename(p) for kind in CANDIDATES)]
        return {**env, "LD_PRELOAD": ":".join(kept)} if kept else env
    return allocator_env(env) if variant.startswith("ours") else env


def _limits(gflops: float, params: int) -> dict:
    """Tokens/s at 100% of `gflops`: 4 x parameters FLOPs per token for LoRA, 6 x for full."""
    return {"lora": gflops * 1e9 / (4 * params), "full": gflops * 1e9 / (6 * params)}


def _variants(args) -> list[str]:
    variants = args.variants.split(",")
    if args.variants == DEFAULT_VARIANTS and train_precision(args.device) == "fp32":
        # bf16 autocast without bf16 instructions measures the missing kernel, not a recipe a user would run here
        print("-- plain-bf16 left out: this CPU trains in fp32 (no AMX / AVX512-BF16)", flush=True)
        variants.remove("plain-bf16")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    return variants


def _machine(args) -> dict:
    """What every payload starts with: the settings, the machine and its matmul peaks measured in this run, in the
    precision this machine trains in (the GFLOPS at the model's own shapes on the CPU only: None with --device
    cuda)."""
    precision = train_precision(args.device)
    peak, sizes, shapes = _measure_limits(args, precision)
    return {"device": args.device, "model": getattr(args, "shape", None) or args.model, "seq_len": args.seq_len,
            "batch": args.batch,
            "steps": args.steps, "warmup": args.warmup, "lora_rank": args.lora_rank, "examples": args.examples,
            "train_precision": precision, "matmul_gflops": peak, "matmul_size": sizes,
            "model_shape_gflops": shapes, "machine": machine_info()}


def _measure_limits(args, precision: str) -> tuple[dict, dict, float | None]:
    from finetune.models import resolve_model_path

    peak, sizes = matmul_peaks(device=args.device)
    tokens = args.batch * args.seq_len if getattr(args, "shape", None) else 1024  # a shape: its own step's tokens
    shapes = (model_shape_gflops(resolve_model_path(args.model), precision=precision, tokens=tokens)
              if args.device == "cpu" else None)
    return peak, sizes, shapes


def _remeasure_limits(payload: dict, args) -> None:
    """Measure the matmul peaks again after the variants and keep the faster of the two measurements. On a shared
    host one measurement can catch it busy and understate the limit, overstating every fraction of it (2-core AMX
    Xeon, 2026-12-05: 1,235 to 2,045 GFLOPS at the llama-3.2-1b shapes from one run to the next)."""
    peak, _, shapes = _measure_limits(args, payload["train_precision"])
    payload["limits_measured"] = [{"matmul_gflops": payload["matmul_gflops"],
                                   "model_shape_gflops": payload["model_shape_gflops"]},
                                  {"matmul_gflops": peak, "model_shape_gflops": shapes}]
    payload["matmul_gflops"] = {k: max(v, peak[k]) for k, v in payload["matmul_gflops"].items()}
    if shapes and payload["model_shape_gflops"]:
        payload["model_shape_gflops"] = max(payload["model_shape_gflops"], shapes)


def _peak(payload: dict) -> float:
    """The matmul peak the limits are measured against: the training precision's (bf16 in results before it)."""
    return payload["matmul_gflops"][payload.get("train_precision", "bf16")]


def shape_gflops(payload: dict) -> float | None:
    return payload.get("model_shape_gflops", payload.get("model_shape_gflops_bf16"))


def limit_fraction(row: dict) -> float:
    """A row's fraction of the matmul limit (named fraction_of_bf16_limit in results before fp32 machines)."""
    return row.get("fraction_of_limit", row.get("fraction_of_bf16_limit"))


def _write_chats(folder: str, n: int) -> Path:
    data = Path(folder) / "chats.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in chat_dataset(n, seed=0)))
    return data


def run(args) -> dict:
    variants = _variants(args)
    payload = {"benchmark": "train", **_machine(args), "shape": getattr(args, "shape", None),
               "gradient_checkpointing": args.gradient_checkpointing}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data = _write_chats(tmp, args.examples)
        for variant in variants:
            print(f"-- {variant}", flush=True)
            skip = shape_side_skip(variant, args) if args.shape else None
            if skip:
                print(f"   not started: {skip}", flush=True)
                results.append({"variant": variant, "skipped": skip})
                continue
            results.append(_run_variant(variant, args, data, Path(tmp) / variant))
    if args.shape:
        payload["load_average_after"] = list(os.getloadavg())  # the machine is shared: how busy it was
        payload["memory_estimate"] = shape_estimates(args)
    _remeasure_limits(payload, args)
    ran = [r for r in results if "skipped" not in r]
    params = ran[0]["parameters"] if ran else parameter_count(args.model)
    for r in results:
        r.setdefault("parameters", params)
    results, skipped = ran, [r for r in results if "skipped" in r]
    limits = _limits(_peak(payload), params)
    shapes = payload["model_shape_gflops"]
    shape_limit = _limits(shapes, params)["lora"] if shapes else None
    base = next((r for r in results if r["variant"] == "plain-fp32"), None)
    plain = next((r for r in results if r["variant"].startswith("plain")), None)
    for r in results:
        r["fraction_of_limit"] = r["useful_tokens_per_s"] / limits["lora"]
        r["fraction_of_model_shape_limit"] = r["useful_tokens_per_s"] / shape_limit if shape_limit else None
        if base:
            r["speedup_vs_plain_fp32"] = r["useful_tokens_per_s"] / base["useful_tokens_per_s"]
            if r["eval_loss"] is not None:
                r["eval_loss_vs_plain_fp32"] = r["eval_loss"] / base["eval_loss"] - 1
        if plain:
            r["speedup_vs_plain"] = r["useful_tokens_per_s"] / plain["useful_tokens_per_s"]
    return {**payload, "limit_tokens_per_s": limits["lora"], "model_shape_limit_tokens_per_s": shape_limit,
            "results": results + skipped}


def parse_sweep(text: str) -> tuple[str, list]:
    """"seq_len=128,256,512" -> ("seq_len", [128, 256, 512]), with a clear error for anything else."""
    name, _, values = text.partition("=")
    name = name.strip().replace("-", "_")
    if name not in SWEEPS or not values:
        raise SystemExit(f"--sweep {text!r}: expected NAME=V1,V2,... with NAME one of {', '.join(SWEEPS)}")
    try:
        parsed = [SWEEPS[name](v.strip()) for v in values.split(",") if v.strip()]
    except ValueError as e:
        raise SystemExit(f"--sweep {text!r}: {e}") from e
    if name == "method" and not set(parsed) <= {"lora", "full"}:
        raise SystemExit(f"--sweep {text!r}: method is lora or full")
    return name, parsed


def run_sweeps(args) -> dict:
    """Each --sweep varies one setting of the `ours` recipe (or --variants), all else as given."""
    sweeps = [parse_sweep(text) for text in args.sweep]
    variants = _variants(args)
    payload = {"benchmark": "train-sweep", **_machine(args)}
    shapes = payload["model_shape_gflops"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = _write_chats(tmp, args.examples)
        for name, values in sweeps:
            for value in values:
                point = argparse.Namespace(**vars(args))
                threads, processes = None, 1
                if name == "threads":
                    threads = value
                elif name == "processes":
                    processes = value
                elif name == "method":
                    point.full = value == "full"
                else:
                    setattr(point, name, value)
                for variant in variants:
                    if point.full and not variant.startswith("ours"):
                        continue  # the plain recipe is LoRA only
                    print(f"-- {name}={value} {variant}", flush=True)
                    row = _run_variant(variant, point, data, Path(tmp) / f"{name}-{value}-{variant}",
                                       threads=threads, processes=processes)
                    method = "full" if point.full else "lora"
                    limit = _limits(_peak(payload), row["parameters"])[method]
                    shape_limit = _limits(shapes, row["parameters"])[method] if shapes else None
                    rows.append({"sweep": name, "value": value, **row, "limit_tokens_per_s": limit,
                                 "fraction_of_limit": row["useful_tokens_per_s"] / limit,
                                 "model_shape_limit_tokens_per_s": shape_limit,
                                 "fraction_of_model_shape_limit": (row["useful_tokens_per_s"] / shape_limit
                                                                   if shape_limit else None)})
    return {**payload, "results": rows}


def render_sweeps(payload: dict) -> str:
    hw = payload["machine"]["hardware"]
    precision = payload.get("train_precision", "bf16")
    head = (f"model={payload['model']} defaults: seq_len<={payload['seq_len']} batch={payload['batch']} "
            f"LoRA r={payload['lora_rank']}, timed steps={payload['steps']} | {cpu_label(payload['machine'])}, "
            f"{hw['usable_cores']} cores | matmul {precision} {_peak(payload):.0f} GFLOPS"
            f"{_shape_gflops_text(payload)}")
    rows = [{**r, "fraction": limit_fraction(r)} for r in payload["results"]]
    columns = [("sweep", "sweep"), ("value", "value"), ("variant", "variant"), ("threads", "threads/process"),
               ("useful_tokens_per_s", "useful tok/s"), ("limit_tokens_per_s", "limit tok/s"),
               ("fraction", "of limit"), ("fraction_of_model_shape_limit", "of shape limit"),
               ("peak_rss_mb", "peak RSS MB"),
               ("eval_loss", "held-out loss")]
    return head + "\n" + markdown_table(rows, columns)


def _passthrough(args) -> list[str]:
    return ["--device", args.device, "--model", args.model, "--steps", str(args.steps), "--warmup", str(args.warmup),
            "--batch", str(args.batch), "--seq-len", str(args.seq_len), "--lora-rank", str(args.lora_rank),
            "--eval-examples", str(args.eval_examples), *(["--full"] if args.full else []),
            "--gradient-checkpointing", args.gradient_checkpointing]


def _shape_gflops_text(payload: dict) -> str:
    """The head line's note of the GFLOPS at the model's shapes (absent from older results and GPU runs)."""
    shapes = shape_gflops(payload)
    return f", {shapes:.0f} GFLOPS at the model's shapes" if shapes else ""


def render(payload: dict) -> str:
    hw = payload["machine"]["hardware"]
    precision = payload.get("train_precision", "bf16")
    shape_limit = payload.get("model_shape_limit_tokens_per_s")
    limit = payload.get("limit_tokens_per_s", payload.get("bf16_limit_tokens_per_s"))
    head = (f"model={payload['model']} seq_len<={payload['seq_len']} batch={payload['batch']} "
            f"timed steps={payload['steps']} LoRA r={payload['lora_rank']} | {cpu_label(payload['machine'])}, "
            f"{hw['usable_cores']} cores | matmul bf16 {payload['matmul_gflops']['bf16']:.0f} GFLOPS, "
            f"fp32 {payload['matmul_gflops']['fp32']:.0f} GFLOPS -> LoRA limit in {precision} {limit:.0f} tok/s"
            + (f" | {precision} at the model's shapes {shape_gflops(payload):.0f} GFLOPS -> shape limit "
               f"{shape_limit:.0f} tok/s" if shape_limit else ""))
    rows = [{**r, "fraction": limit_fraction(r)} for r in payload["results"]]
    if payload.get("shape"):
        from benchmarks.shapes import render_shape

        return render_shape(payload, head, rows)
    columns = [("variant", "variant"), ("allocator", "malloc"), ("useful_tokens_per_s", "useful tok/s"),
               ("tokens_per_s", "all tok/s"),
               ("speedup_vs_plain_fp32", "x plain-fp32"), ("fraction", f"of {precision} limit"),
               ("fraction_of_model_shape_limit", "of shape limit"), ("peak_rss_mb", "peak RSS MB"),
               ("eval_loss", "held-out loss"), ("eval_loss_vs_plain_fp32", "loss vs plain-fp32")]
    return head + "\n" + markdown_table(rows, columns)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--variants", default=DEFAULT_VARIANTS)
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--examples", type=int, default=400)
    p.add_argument("--eval-examples", type=int, default=40)
    p.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA (ours variants)")
    p.add_argument("--sweep", action="append", default=[], metavar="NAME=V1,V2",
                   help=f"vary one setting of --variants (default ours), repeatable; NAME: {', '.join(SWEEPS)}; "
                        "e.g. --sweep seq_len=128,256,512,1024 --sweep threads=1,2 --sweep processes=1,2")
    p.add_argument("--task", default="chat", choices=["chat", "dpo"],
                   help="chat: SFT on multi-turn chats; dpo: preference tuning on the shipped Aurora pairs")
    p.add_argument("--shape", choices=sorted(SHAPES),
                   help="a real architecture and size with random weights (benchmarks.shapes), ours vs plain")
    p.add_argument("--gradient-checkpointing", default="auto", choices=["auto", "on", "off"],
                   help="ours: auto turns it on when the memory estimate needs it (--shape)")
    p.add_argument("--worker", choices=VARIANTS + DPO_VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    if p.parse_known_args(argv)[0].shape:  # small defaults: a step of an 8B model takes minutes on 2 cores
        p.set_defaults(**SHAPE_DEFAULTS)
    args = p.parse_args(argv)
    if args.worker:
        worker = _run_dpo_worker if args.task == "dpo" else _run_worker
        result = worker(args.worker, args.model, args.data, args.out, args)
        (args.out / f"result-{os.environ.get('RANK', '0')}.json").write_text(json.dumps(result))
        return 0
    if args.task == "dpo":
        if args.sweep or args.full or args.device != "cpu":
            raise SystemExit("--task dpo measures LoRA on the CPU: drop --sweep, --full and --device")
        if args.variants == DEFAULT_VARIANTS:
            args.variants = "trl,ours"
        payload = run_dpo(args)
        publish("train-dpo", payload, render_dpo(payload))
        return 0
    if args.sweep:
        if args.variants == DEFAULT_VARIANTS:
            args.variants = "ours"
        payload = run_sweeps(args)
        name = "train-sweep" if args.device == "cpu" else f"train-sweep-{args.device}"
        publish(name, payload, render_sweeps(payload))
        return 0
    if args.shape:
        prepare_shape(args)
    payload = run(args)
    name = f"train-{args.shape}" if args.shape else "train"
    publish(name if args.device == "cpu" else f"{name}-{args.device}", payload, render(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
