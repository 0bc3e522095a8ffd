"""Load a model under evaluation and generate replies for many prompts at once, with a progress bar.

Two engines, the fastest one the artifact allows:
- an OpenVINO IR folder (e.g. from `quantize`) runs on openvino-genai's ContinuousBatchingPipeline, which batches
  all prompts itself (measured on a 2-core AMX Xeon: about 3x transformers' generate); constrained decoding via
  StructuredOutputConfig.
- anything else transformers loads (an embedded model name, a Hugging Face folder, a `finetune_model` output
  folder, a .gguf file) runs batched, left-padded `generate` with prompts sorted by length; constrained decoding
  via xgrammar's logits processor (the grammar engine openvino-genai also uses).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from finetune.evaluate.data import EvalError, Example
from finetune.hardware import openvino_cpu_properties
from finetune.models import eos_token_ids
from finetune.run_folder import read_training_metadata, run_weights, training_metadata_file

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """Where a model under evaluation lives and what it says about itself."""

    label: str
    path: str  # a Hugging Face folder, or an OpenVINO IR folder
    is_openvino: bool
    adapter: str | None = None  # a PEFT adapter to merge into `path`
    task: str | None = None  # the task it was fine-tuned for (training_metadata.json), if known
    metadata_file: str | None = None
    trust_remote_code: bool = False  # the folder's own model code may run


def is_openvino_folder(path: Path) -> bool:
    return (path / "openvino_model.xml").is_file() and (path / "openvino_tokenizer.xml").is_file()


def resolve_model(name_or_path: str, label: str | None = None, allow_download: bool = False) -> ModelSpec:
    """Accept what the chatbot loads: an embedded name, an HF or OpenVINO folder, a finetune output folder, a .gguf."""
    from finetune.models import resolve_model_path

    path = Path(name_or_path).expanduser()
    label = label or (path.name if path.exists() else name_or_path)
    metadata = training_metadata_file(path) or training_metadata_file(path.parent)  # a run, or its merged/
    task = read_training_metadata(metadata.parent).get("task") if metadata else None
    if path.is_dir() and is_openvino_folder(path):
        return ModelSpec(label, str(path), True, None, task, str(metadata) if metadata else None)
    adapter = None
    weights = run_weights(path) if path.is_dir() else None
    if weights is not None and weights.merged is not None:
        path = weights.merged
    elif weights is not None:
        adapter = str(weights.adapter)
        base = weights.base_model()
        if not base:
            raise EvalError(f"{adapter} names no base_model_name_or_path, so the model cannot be rebuilt")
        path = Path(base)
    resolved = resolve_model_path(str(path) if path.exists() else name_or_path, allow_download)
    return ModelSpec(label, resolved, False, adapter, task, str(metadata) if metadata else None)


def prompt_ids(tokenizer, example: Example, messages: list[dict] | None = None) -> list[int]:
    from finetune.chat_template import ensure_chat_template, generation_prompt
    from finetune.tool_calls import tool_messages

    messages = messages if messages is not None else example.messages
    if messages is not None:
        ensure_chat_template(tokenizer)
        messages, tools = tool_messages(messages, example.tools, tokenizer)
        text = generation_prompt(tokenizer, messages, **({"tools": tools} if tools else {}))
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(example.prompt)["input_ids"]


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="ex", disable=os.environ.get("FINETUNE_EVAL_NO_BAR") == "1")


class TorchEngine:
    kind = "torch"

    def __init__(self, spec: ModelSpec, dtype: str = "auto"):
        import torch

        from finetune.hardware import detect_hardware
        from finetune.models import load_model, load_tokenizer

        if dtype == "auto":
            dtype = "bfloat16" if detect_hardware().cpu_bf16 else "float32"
        self.dtype = dtype
        model = load_model(spec.path, dtype=getattr(torch, dtype), trust_remote_code=spec.trust_remote_code)
        if spec.adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, spec.adapter).merge_and_unload()
        self.model = model.eval()
        self.tokenizer = load_tokenizer(spec.path, trust_remote_code=spec.trust_remote_code)
        self.eos = eos_token_ids(model.generation_config, self.tokenizer)
        self._schema_constraint = None

    def _constraint(self):
        if self._schema_constraint is None:
            from finetune.evaluate.constrained import SchemaConstraint

            vocab = self.model.config.get_text_config().vocab_size  # a multimodal model's: its language model's
            self._schema_constraint = SchemaConstraint(self.tokenizer, vocab, self.eos)
        return self._schema_constraint

    def generate(self, prompts: list[list[int]], max_new_tokens: int, batch_size: int,
                 schema: dict | None = None, desc: str = "generate", raw: bool = False) -> list[str]:
        """The greedy replies; `raw`: with their special tokens, up to the end of the turn (Gemma 4's and
        Ministral's tool calls are made of special tokens)."""
        import torch

        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        out: list[str | None] = [None] * len(prompts)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos[0]
        with _progress(len(prompts), desc) as bar, torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start: start + batch_size]
                width = max(len(prompts[i]) for i in idx)
                ids = torch.full((len(idx), width), pad, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for row, i in enumerate(idx):
                    ids[row, width - len(prompts[i]):] = torch.tensor(prompts[i])
                    mask[row, width - len(prompts[i]):] = 1
                kwargs = {}
                if schema is not None:
                    kwargs["logits_processor"] = [self._constraint().processor(schema)]  # one per call
                generated = self.model.generate(
                    input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                    temperature=None, top_p=None, top_k=None, eos_token_id=self.eos, pad_token_id=pad, **kwargs)
                for row, i in enumerate(idx):
                    out[i] = _decode(self.tokenizer, generated[row, width:].tolist(), self.eos, raw)
                bar.update(len(idx))
        return out

    def perplexity(self, examples: list[Example], task: str, max_seq_length: int = 1024,
                   batch_size: int = 8) -> float:
        """exp(mean NLL) of the reference tokens, formatted and masked exactly as in training."""
        import torch

        from finetune.chat_template import ensure_chat_template
        from finetune.formatting import IGNORE_INDEX, FormatOptions, tokenize_record

        if task in ("chat", "extraction"):
            ensure_chat_template(self.tokenizer)
        opts = FormatOptions(task=task, max_seq_length=max_seq_length)
        rows = [r for r in (tokenize_record(self.tokenizer, e.record, opts) for e in examples) if r is not None]
        if not rows:
            raise EvalError("No example keeps a reference token within max_seq_length: cannot compute perplexity")
        rows.sort(key=lambda r: -len(r["input_ids"]))
        nll, count = 0.0, 0
        with _progress(len(rows), "perplexity") as bar, torch.inference_mode():
            for start in range(0, len(rows), batch_size):
                batch = rows[start: start + batch_size]
                width = max(len(r["input_ids"]) for r in batch)
                ids = torch.zeros((len(batch), width), dtype=torch.long)
                labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, r in enumerate(batch):
                    n = len(r["input_ids"])
                    ids[row, :n] = torch.tensor(r["input_ids"])
                    labels[row, :n] = torch.tensor(r["labels"])
                    mask[row, :n] = 1
                logits = self.model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
                target = labels[:, 1:]
                loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                         ignore_index=IGNORE_INDEX, reduction="sum")
                nll += loss.item()
                count += int((target != IGNORE_INDEX).sum())
                bar.update(len(batch))
        return float(torch.exp(torch.tensor(nll / count)))

    def close(self) -> None:
        self.model = None


class OpenVINOEngine:
    kind = "openvino"
    dtype = "openvino"

    def __init__(self, spec: ModelSpec):
        from finetune.extras import require

        ov_genai = require("openvino_genai", f"{spec.path} is an OpenVINO IR folder, which")
        require("openvino_tokenizers", f"{spec.path} is an OpenVINO IR folder, which")  # registers the tokenizer ops
        from transformers import AutoTokenizer, GenerationConfig

        self.ov_genai = ov_genai
        scheduler = ov_genai.SchedulerConfig()
        scheduler.cache_size = 1
        scheduler.max_num_seqs = 32
        scheduler.dynamic_split_fuse = True
        self.pipe = ov_genai.ContinuousBatchingPipeline(spec.path, scheduler, "CPU", openvino_cpu_properties())
        self.tokenizer = AutoTokenizer.from_pretrained(spec.path)
        try:
            hf_config = GenerationConfig.from_pretrained(spec.path)
        except OSError:
            hf_config = None
        self.eos = eos_token_ids(hf_config, self.tokenizer)

    def generate(self, prompts: list[list[int]], max_new_tokens: int, batch_size: int,
                 schema: dict | None = None, desc: str = "generate", raw: bool = False) -> list[str]:
        import numpy as np
        import openvino as ov

        cfg = self.ov_genai.GenerationConfig()
        cfg.max_new_tokens = max_new_tokens
        cfg.do_sample = False
        cfg.stop_token_ids = set(self.eos)
        cfg.eos_token_id = self.eos[0]
        if schema is not None:
            cfg.structured_output_config = self.ov_genai.StructuredOutputConfig(json_schema=json.dumps(schema))
        out: list[str] = []
        chunk = max(batch_size, 1) * 2  # the pipeline batches within a chunk; chunks drive the progress bar
        with _progress(len(prompts), desc) as bar:
            for start in range(0, len(prompts), chunk):
                part = prompts[start: start + chunk]
                tensors = [ov.Tensor(np.array([p], dtype=np.int64)) for p in part]
                results = self.pipe.generate(tensors, [cfg] * len(part))
                for r in results:
                    out.append(_decode(self.tokenizer, list(r.m_generation_ids[0]), self.eos, raw))
                bar.update(len(part))
        return out

    def perplexity(self, examples, task, **kwargs) -> float | None:
        return None  # the pipeline returns no logits for given text; reported as n/a

    def close(self) -> None:
        self.pipe = None


def _decode(tokenizer, ids: list[int], eos: list[int], raw: bool) -> str:
    if not raw:
        return tokenizer.decode(ids, skip_special_tokens=True)
    end = next((n for n, t in enumerate(ids) if t in eos), len(ids))
    return tokenizer.decode(ids[:end], skip_special_tokens=False)


def load_engine(spec: ModelSpec, dtype: str = "auto"):
    if spec.is_openvino:
        return OpenVINOEngine(spec)
    return TorchEngine(spec, dtype)
