"""`finetune_model`: the whole recipe, top to bottom.

setup (device, precision, threads, output dir) -> tokenizer -> data -> model (+ LoRA / QLoRA) -> transformers
Trainer -> adapter, merged model, tokenizer, training_metadata.json.

Precision on CPU (measured on a 2-core AMX Xeon, SmolLM2-135M LoRA, seq 256, batch 4): fp32 321 tok/s, autocast
bf16 467 tok/s, bf16 weights 472 tok/s, and bf16 weights use the least memory. So a LoRA run keeps the frozen base
weights in bf16, the trainable adapters in fp32 (PEFT upcasts them: bf16's 8-bit mantissa would round away
updates smaller than 1/256 of a weight) and runs the matmuls in bf16 under autocast. A full fine-tune keeps
fp32 master weights for the same reason and also computes under bf16 autocast.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from finetune.callbacks import BarProgressCallback, ThroughputCallback
from finetune.collate import PaddingFreeCollator, kept_positions_loss, pad_packed_rows
from finetune.config import PREFERENCE_TASKS, FinetuningArguments, TextGenerationFinetuningConfig
from finetune.dataset import build_datasets
from finetune.families import chats_are_text, lora_targets, text_lora_targets
from finetune.frozen_weights import compute_frozen_in
from finetune.hardware import (
    compute_summary,
    configure_threads,
    default_device,
    detect_hardware,
    limit_kernel_caches,
    matmul_precision,
    resolve_precision,
)
from finetune.lean_ops import use_lean_ops
from finetune.lora_ops import fuse_lora_forward
from finetune.memory import check_memory, model_config, settings_from_config
from finetune.metadata import check_output_dir, run_fingerprint, write_metadata
from finetune.models import load_model, load_tokenizer, resolve_model_path, storage_dtype
from finetune.packed_attention import stateful_layer_types, use_packed_rows
from finetune.run_folder import ADAPTER_DIR, MERGED_DIR, TRAINING_METADATA_FILE

if TYPE_CHECKING:
    from transformers import TrainerCallback

logger = logging.getLogger(__name__)


@dataclass
class FinetuneResult:
    output_dir: Path
    adapter_dir: Path | None
    merged_dir: Path | None
    metrics: dict


def _device(finetune_args: FinetuningArguments) -> str:
    if finetune_args.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("finetune_args.device='cuda' but no CUDA device is visible. Use device='cpu' or 'auto'.")
    return default_device() if finetune_args.device == "auto" else finetune_args.device


def _precision(config: TextGenerationFinetuningConfig, device: str) -> str:
    args, choice = config.training_args, config.finetune_args.precision
    if choice == "auto":
        # bf16 wherever the hardware runs it faster (on a CPU: finetune.hardware.matmul_precision); the user opts
        # out with precision="fp32", or in with "bf16"
        wants_bf16 = args.bf16 or (device == "cpu" and matmul_precision()[0] == "bf16") or (
            device == "cuda" and torch.cuda.is_bf16_supported())
        return resolve_precision(wants_bf16 and not args.fp16, args.fp16, device)
    return resolve_precision(choice == "bf16", args.fp16, device)


def run_settings(config: TextGenerationFinetuningConfig, device: str, precision: str) -> dict:
    """The training-argument changes every task's run makes: device, precision, gradient checkpointing, early
    stopping, DDP on CPU (the preference tasks apply them to TRL's config too)."""
    args = config.training_args
    changes = {
        "use_cpu": device == "cpu",
        "bf16": precision == "bf16",
        "fp16": precision == "fp16",
        "gradient_checkpointing_kwargs": args.gradient_checkpointing_kwargs or {"use_reentrant": False},
    }
    if config.finetune_args.early_stopping_patience:
        changes |= {"load_best_model_at_end": True, "metric_for_best_model": "eval_loss",
                    "greater_is_better": False}
        if args.eval_strategy == "no":
            changes |= {"eval_strategy": args.save_strategy, "eval_steps": args.save_steps}
    if changes["use_cpu"] and args.ddp_backend is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        changes["ddp_backend"] = "gloo"
    return changes


def _training_args(config: TextGenerationFinetuningConfig, device: str, precision: str, packed_batches: bool):
    args = config.training_args
    changes = run_settings(config, device, precision) | {
        # Our collator already chose the model inputs; the default would drop position ids.
        "remove_unused_columns": False,
        "include_num_input_tokens_seen": True,
    }
    if packed_batches:
        # Eval batches hold a varying number of kept positions, which cannot be concatenated as predictions.
        changes["prediction_loss_only"] = True
    if config.finetune_args.qlora and device == "cuda" and args.optim.startswith("adamw_torch"):
        changes["optim"] = "paged_adamw_8bit"  # QLoRA's optimizer: pages state to CPU on memory spikes
    return dataclasses.replace(args, **changes)


def _load_model_for_training(model_path: str, config: TextGenerationFinetuningConfig, device: str, precision: str,
                             tokenizer):
    model = load_base_model(model_path, config, device, precision, tokenizer)
    fa = config.finetune_args
    if fa.full_finetune:
        return model
    from peft import get_peft_model, prepare_model_for_kbit_training

    if fa.qlora:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=config.training_args.gradient_checkpointing)
    model = get_peft_model(model, lora_config(model, fa))
    adapters_under_autocast(model, precision)
    if stores_frozen_narrower(config, device, precision):
        compute_frozen_in(model, torch.float32)
    if config.training_args.gradient_checkpointing:
        model.enable_input_require_grads()
    return model


def load_base_model(model_path: str, config: TextGenerationFinetuningConfig, device: str, precision: str,
                    tokenizer):
    """The model to adapt, in the run's precision (frozen LoRA weights in bf16 where it computes in bf16)."""
    fa = config.finetune_args
    kwargs = {"trust_remote_code": config.model_args.trust_remote_code}
    if fa.qlora:
        from transformers import BitsAndBytesConfig

        _require_bitsandbytes()
        compute = torch.bfloat16 if precision == "bf16" else (torch.float16 if precision == "fp16" else torch.float32)
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=fa.bits == 4, load_in_8bit=fa.bits == 8, bnb_4bit_quant_type=fa.quant_type,
            bnb_4bit_use_double_quant=fa.double_quant, bnb_4bit_compute_dtype=compute)
        kwargs["device_map"] = {"": device if device == "cpu" else torch.cuda.current_device()}
        dtype = compute
    elif fa.full_finetune or (precision == "fp32" and not stores_frozen_narrower(config, device, precision)):
        dtype = torch.float32
    else:
        dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    model = load_model(model_path, dtype=dtype, **kwargs)
    chats_are_text(model)
    if _grows_vocabulary(config, tokenizer, model):
        model.resize_token_embeddings(len(tokenizer))
    return model


def stores_frozen_narrower(config: TextGenerationFinetuningConfig, device: str, precision: str) -> bool:
    """Whether a run computing in fp32 keeps its frozen weights in bf16 (half the memory: an 8B model's weights
    are 16 GB, not 32) and widens each to fp32 for its own matmul only: LoRA (not QLoRA) on a CPU."""
    fa = config.finetune_args
    return precision == "fp32" and device == "cpu" and not (fa.full_finetune or fa.qlora)


def check_run_memory(config: TextGenerationFinetuningConfig, model_path: str, device: str, precision: str):
    """The run's memory estimate from the model's config.json alone; stops the run (InsufficientMemoryError,
    with the figures and what to change) before the model is loaded when it would not fit. On a CPU only:
    a GPU run's weights live in the device's memory."""
    if device != "cpu":
        return None
    model = model_config(model_path, config.model_args.trust_remote_code)
    estimate = check_memory(model, settings_from_config(config, precision), where=model_path)
    logger.info("Memory estimate: %s", estimate.render())
    return estimate


def lora_config(model, fa: FinetuningArguments):
    """PEFT's LoraConfig from our lora_* settings."""
    from peft import LoraConfig

    if fa.lora_all_linear:
        targets = "all-linear"
    else:  # the family's default (PEFT's where it has one: q_proj, v_proj for llama), fused names mapped
        targets = lora_targets(model, fa.lora_target_modules)
    targets = text_lora_targets(model, targets)  # a multimodal model's language model only
    return LoraConfig(r=fa.lora_rank, lora_alpha=fa.lora_alpha, lora_dropout=fa.lora_dropout,
                      target_modules=targets, bias="none", task_type="CAUSAL_LM")


def adapters_under_autocast(model, precision: str) -> None:
    """PEFT casts each adapter's input up to the fp32 adapter weights, and autocast casts it straight back: two
    copies of every activation per adapted layer for nothing. Autocast alone computes the adapters in bf16 and
    still keeps (and updates) fp32 adapter weights."""
    if precision in ("bf16", "fp16"):
        for module in model.modules():
            if hasattr(module, "cast_input_dtype_enabled"):
                module.cast_input_dtype_enabled = False


def _grows_vocabulary(config: TextGenerationFinetuningConfig, tokenizer, model) -> bool:
    """Whether DataArguments.special_tokens gave the tokenizer ids past the model's embeddings. Only then: a
    tokenizer may hold a few more entries than the model has rows (the embedded SmolLM2's: 49157 for 49152) that
    its data never uses, and resizing for those would change the model for nothing."""
    return bool(config.data_args.special_tokens) and len(tokenizer) > model.get_input_embeddings().num_embeddings


def _require_bitsandbytes() -> None:
    from finetune.extras import require

    require("bitsandbytes", "qlora=True")


def _trainer(model, tokenizer, config, training_args, data, callbacks, packed: bool, per_example_attention=False,
             head=None):
    from transformers import EarlyStoppingCallback, Trainer

    collator_kwargs = {"data_collator": PaddingFreeCollator(boundaries=per_example_attention),
                       "compute_loss_func": functools.partial(kept_positions_loss, head=head,
                                                              head_dtype=autocast_dtype(training_args))}
    if not packed:
        from transformers import DataCollatorForSeq2Seq

        # pad_to_max_length pads every batch to max_seq_length; a model that cannot pack pads to its batch's longest
        padding = "max_length" if config.data_args.pad_to_max_length else "longest"
        collator_kwargs = {"data_collator": DataCollatorForSeq2Seq(
            tokenizer, padding=padding, max_length=config.data_args.max_seq_length, label_pad_token_id=-100)}
    callbacks = list(callbacks)
    if config.finetune_args.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(config.finetune_args.early_stopping_patience))
    trainer = Trainer(model=model, args=training_args, train_dataset=data.train, eval_dataset=data.eval or None,
                      processing_class=tokenizer, callbacks=callbacks, **collator_kwargs)
    use_bar_progress(trainer)
    return trainer


def autocast_dtype(training_args) -> torch.dtype | None:
    """The dtype the Trainer's autocast computes in (None: no autocast, the weights' own)."""
    return torch.bfloat16 if training_args.bf16 else torch.float16 if training_args.fp16 else None


def check_batch(config: TextGenerationFinetuningConfig, n_train: int) -> None:
    args = config.training_args
    world = int(os.environ.get("WORLD_SIZE", "1"))
    batch = args.per_device_train_batch_size * world
    if n_train < batch:
        raise ValueError(
            f"The training set has {n_train} examples, fewer than one batch (per_device_train_batch_size="
            f"{args.per_device_train_batch_size} x {world} process(es) = {batch}). Add data or lower "
            f"per_device_train_batch_size."
        )


def finished_run(output_dir: Path, fingerprint: str) -> FinetuneResult | None:
    """The result of this same run if it already finished in output_dir (its metadata is written last)."""
    path = output_dir / TRAINING_METADATA_FILE
    try:
        metadata = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if metadata.get("fingerprint") != fingerprint:
        return None
    adapter, merged = output_dir / ADAPTER_DIR, output_dir / MERGED_DIR
    return FinetuneResult(output_dir, adapter if adapter.is_dir() else None, merged if merged.is_dir() else None,
                          metadata.get("metrics", {}))


def _last_checkpoint(output_dir: Path) -> str | None:
    """The newest checkpoint that was written completely.

    Trainer writes trainer_state.json last, so a run killed while saving leaves a folder without a readable one:
    skip it and resume from the checkpoint before.
    """
    if not output_dir.is_dir():
        return None
    steps = []
    for path in output_dir.glob("checkpoint-*"):
        suffix = path.name.split("-")[-1]
        if suffix.isdigit():
            steps.append((int(suffix), path))
    for _, path in sorted(steps, reverse=True):
        try:
            json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            logger.warning("Skipping incomplete checkpoint %s", path)
            continue
        return str(path)
    return None


@functools.cache
def _load_storages_mapped_to_cpu_index() -> None:
    """Let torch.load put storages on `cpu:<n>` (as CPU storages). In a multi-process CPU run accelerate names each
    rank's device cpu:<local rank> and Trainer loads the optimizer state with map_location=that device, which
    torch.load refuses ("don't know how to restore data location ... (tagged with cpu:0)"): no DDP run on CPU
    (torchrun, python -m finetune launch, an elastic restart) could resume without this."""
    torch.serialization.register_package(
        19, lambda storage: None, lambda storage, location: storage if location.startswith("cpu:") else None)


def resume_point(config: TextGenerationFinetuningConfig, output_dir: Path, fingerprint: str
                 ) -> tuple[str | None, FinetuneResult | None]:
    """Claim output_dir for this run; return the checkpoint to resume from (None: start afresh), or the finished
    result when output_dir already holds this run complete."""
    args = config.training_args
    resume = args.resume_from_checkpoint
    same_run = check_output_dir(output_dir, fingerprint, getattr(args, "overwrite_output_dir", False))
    if same_run and args.do_train and resume is None:
        finished = finished_run(output_dir, fingerprint)
        if finished is not None:
            logger.warning("%s already holds this finished run; returning it (overwrite_output_dir retrains)",
                           output_dir)
            return None, finished
        resume = _last_checkpoint(output_dir)
        if resume:
            logger.warning("Resuming the interrupted run from %s", resume)
    elif resume in ("True", "true", True):
        resume = _last_checkpoint(output_dir)
    if resume and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _load_storages_mapped_to_cpu_index()
    return resume, None


def use_bar_progress(trainer) -> None:
    """The stock progress bar, with loss and tokens/s on the bar (where the bar is shown at all)."""
    from transformers.trainer_callback import ProgressCallback

    if trainer.args.disable_tqdm is False:
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(BarProgressCallback)


def save_adapter(trainer, tokenizer, config, output_dir: Path) -> tuple[Path | None, Path | None]:
    """(adapter folder, merged folder) written from the trained model (rank 0 only): the adapter of a LoRA run, the
    whole model of a full fine-tune (its merged folder). The merge of an adapter waits for save_merged, once the
    trained model is gone."""
    if config.finetune_args.full_finetune:
        merged_dir = output_dir / MERGED_DIR
        trainer.save_model(str(merged_dir))
        tokenizer.save_pretrained(merged_dir)
        return None, merged_dir
    adapter_dir = output_dir / ADAPTER_DIR
    trainer.model.save_pretrained(adapter_dir)
    tokenizer.save_pretrained(adapter_dir)
    return adapter_dir, None


def merge_dtype(parameters: int) -> torch.dtype:
    """fp32 up to FP32_STORAGE_MAX_PARAMETERS and where it fits in memory, else bf16: the merge loads the base in
    this dtype, adds the adapter's delta (computed in fp32 either way) and writes the folder in it."""
    from finetune.memory import GIB, available_gib

    dtype = storage_dtype(parameters)
    limit = available_gib()[0]
    if dtype == torch.float32 and limit is not None and parameters * 4 / GIB + 1 > limit:
        logger.warning("The merged model is written in bf16: fp32 (%.1f GiB) does not fit the %.1f GiB available",
                       parameters * 4 / GIB, limit)
        return torch.bfloat16
    return dtype


def save_merged(model_path: str, adapter_dir: Path, tokenizer, config, output_dir: Path) -> Path | None:
    """The adapter merged into its base (FinetuningArguments.save_merged_model) as a model folder that loads with
    plain transformers. Call it once the trained model is released: it loads the base again (the trained one holds
    the run's modifications), 16 GB for an 8B model in bf16 beside which a second copy would not fit 24 GB."""
    if not config.finetune_args.save_merged_model:
        return None
    from peft import PeftModel

    from finetune.memory import count_parameters

    trust = config.model_args.trust_remote_code
    dtype = merge_dtype(count_parameters(model_config(model_path, trust)))
    # In bf16 (a model above 2B parameters, stored in bf16 as published) PEFT computes each delta in fp32 on a CPU
    # and adds it to the weight in bf16: a delta below half a bf16 step of its weight is lost, as it would be when a
    # fp32 merge is loaded in bf16. Smaller models keep the fp32 merge.
    base = load_model(model_path, dtype=dtype, trust_remote_code=trust)
    if _grows_vocabulary(config, tokenizer, base):  # the adapter holds the resized embeddings
        base.resize_token_embeddings(len(tokenizer))
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged_dir = output_dir / MERGED_DIR
    merged.save_pretrained(merged_dir)
    tokenizer.save_pretrained(merged_dir)
    logger.info("Merged the adapter into %s (%s)", merged_dir, str(dtype).removeprefix("torch."))
    return merged_dir


def run_setup(config: TextGenerationFinetuningConfig) -> tuple:
    """What every fine-tune (SFT or preference) starts with: (device, precision, threads, model path, tokenizer)."""
    limit_kernel_caches()
    device = _device(config.finetune_args)
    precision = _precision(config, device)
    threads = configure_threads(int(os.environ.get("LOCAL_WORLD_SIZE", "1"))) if device == "cpu" else None
    model_path = resolve_model_path(config.model_args.model_name_or_path, config.model_args.allow_download)
    precision = _fp32_if_it_fits(config, device, precision, model_path)
    tokenizer = load_tokenizer(config.model_args.tokenizer_name or model_path, config.model_args.allow_download,
                               config.model_args.trust_remote_code)
    return device, precision, threads, model_path, tokenizer


def _fp32_if_it_fits(config: TextGenerationFinetuningConfig, device: str, precision: str, model_path: str) -> str:
    """fp32 chosen because it measured faster (a CPU with bf16 instructions, precision="auto"), or bf16 where only
    bf16 fits in memory with the run's settings: at 8B on the Emerald Rapids guest fp32 needed its frozen weights
    kept in bf16 and gradient checkpointing, and trained at 4.53 useful tok/s against 5.1 in bf16 without."""
    if device != "cpu" or precision != "fp32" or config.finetune_args.precision != "auto" \
            or not detect_hardware().cpu_bf16:
        return precision
    from finetune.memory import available_gib, estimate_memory

    try:
        model = model_config(model_path, config.model_args.trust_remote_code)
    except (OSError, ValueError):
        return precision
    limit, _ = available_gib()
    needs = {p: estimate_memory(model, settings_from_config(config, p)).total_gib for p in ("fp32", "bf16")}
    if limit is not None and needs["fp32"] > limit >= needs["bf16"]:
        logger.info("Training in bf16, not fp32: fp32 measured faster here, but only bf16 fits in memory (about "
                    "%.1f GiB against %.1f in fp32, %.1f available)", needs["bf16"], needs["fp32"], limit)
        return "bf16"
    return precision


def finetune_model(config: TextGenerationFinetuningConfig | None = None,
                   callbacks: Sequence[TrainerCallback | type[TrainerCallback]] = ()) -> FinetuneResult:
    """Fine-tune a causal LM as `config` says; return where the adapter and merged model were written.

    `callbacks` are transformers TrainerCallbacks (instances or classes) added to the Trainer next to the
    recipe's own, e.g. to time each step (benchmarks/train.py) or to stop early on a condition of your own.
    """
    config = config or TextGenerationFinetuningConfig()
    if config.finetune_args.task in PREFERENCE_TASKS:
        from finetune.preference import finetune_preference

        return finetune_preference(config, callbacks)
    fa, data_args = config.finetune_args, config.data_args
    device, precision, threads, model_path, tokenizer = run_setup(config)
    if data_args.special_tokens:
        tokenizer.add_special_tokens({"additional_special_tokens": data_args.special_tokens})

    args = config.training_args
    check_run_memory(config, model_path, device, precision)
    data = build_datasets(tokenizer, data_args, fa.task, fa.train_on_inputs, need_eval=args.do_eval)
    check_batch(config, len(data.train))
    output_dir = Path(args.output_dir)
    fingerprint = run_fingerprint(config, model_path, data.data_hash)
    resume, finished = resume_point(config, output_dir, fingerprint)
    if finished is not None:
        return finished

    training_args = _training_args(config, device, precision, packed_batches=not data_args.pad_to_max_length)
    logger.info("Fine-tuning %s on %s: task=%s, %s, %s, %d train / %d eval examples", model_path, device, fa.task,
                precision, "full" if fa.full_finetune else ("qlora" if fa.qlora else "lora"),
                len(data.train), len(data.eval))
    logger.info("Compute: %s", compute_summary(device, precision, threads, training=True))
    from transformers import set_seed

    set_seed(args.seed)  # before the adapters are initialised, so one seed gives one run
    model = _load_model_for_training(model_path, config, device, precision, tokenizer)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    rows = use_packed_rows(base) if not data_args.pad_to_max_length else None
    if rows is None and not data_args.pad_to_max_length:
        stateful = f"{type(base).__name__} has layers ({', '.join(sorted(stateful_layer_types(base)))})"
        if data_args.dataset_concatenation:
            raise ValueError(f"DataArguments.dataset_concatenation: {stateful} whose state runs along the row and "
                             "that cannot be split at example boundaries, so packed examples would read each other: "
                             "leave dataset_concatenation off (its examples are then padded)")
        logger.info("%s whose state runs along the sequence and that cannot be split at example boundaries: its "
                    "examples are padded, not packed", stateful)
    packed = rows is not None
    per_example_attention, undo_packed_rows = rows or (False, lambda: None)
    head, undo_lean_ops = use_lean_ops(base, head_in_loss=packed)  # the loss applies the head, chunk by chunk
    undo_row_padding = pad_packed_rows(base.get_decoder(), precision)
    undo_fused_lora = fuse_lora_forward(model)
    throughput = ThroughputCallback()
    trainer = _trainer(model, tokenizer, config, training_args, data, [throughput, *callbacks],
                       packed, per_example_attention, head)

    metrics: dict = {}
    before_file = output_dir / "eval_before.json"
    if args.do_eval and data.eval:
        if resume and before_file.is_file():  # measured before the interruption, on the untouched model
            metrics["eval_loss_before"] = json.loads(before_file.read_text())["eval_loss"]
        elif not resume:
            metrics["eval_loss_before"] = trainer.evaluate()["eval_loss"]
            if trainer.is_world_process_zero():
                before_file.write_text(json.dumps({"eval_loss": metrics["eval_loss_before"]}))
    started = time.perf_counter()
    if args.do_train:
        train_out = trainer.train(resume_from_checkpoint=resume)
        metrics |= {"train_loss": train_out.training_loss, "train_steps": trainer.state.global_step,
                    "train_seconds": round(time.perf_counter() - started, 2)}
        metrics["train_tokens_per_s"] = throughput.tokens_per_s
    if args.do_eval and data.eval:
        metrics["eval_loss"] = trainer.evaluate()["eval_loss"]
        metrics["eval_perplexity"] = float(torch.exp(torch.tensor(metrics["eval_loss"])))

    undo_fused_lora()
    undo_lean_ops()
    undo_row_padding()
    undo_packed_rows()
    adapter_dir = merged_dir = None
    if args.do_train and trainer.is_world_process_zero():
        adapter_dir, merged_dir = save_adapter(trainer, tokenizer, config, output_dir)
        log_history = trainer.state.log_history
        # Release the trained model (and what refers to it) before the merge loads the base again.
        del trainer, model, base, head, undo_fused_lora, undo_lean_ops, undo_row_padding, undo_packed_rows
        gc.collect()
        if adapter_dir is not None:
            merged_dir = save_merged(model_path, adapter_dir, tokenizer, config, output_dir)
        write_metadata(output_dir, config, fingerprint, metrics, log_history,
                       {**data.counts, "sha256": data.data_hash}, device,
                       precision, threads, model_path)
        if args.do_eval and data.eval and fa.generation_eval:
            from finetune.evaluate import evaluate_after_training

            evaluate_after_training(output_dir, config)
    return FinetuneResult(output_dir, adapter_dir, merged_dir, metrics)

