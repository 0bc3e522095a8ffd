"""The transformers backend: `generate` in a worker thread, its tokens detokenized and streamed as they come.

LoRA adapters of the loaded base attach to it (`add_adapter`, one copy of the base weights for all of them); each
call names the adapter it runs with (`adapter`; None: the base alone). neural_chat_app/adapters.py serves each adapter
as a Backend of its own.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from finetune.models import eos_token_ids
from neural_chat_app.config import GenerationConfig
from neural_chat_app.prepacked import unpack_linears, weight_bytes
from neural_chat_app.streaming import Detokenizer, StreamResult

logger = logging.getLogger(__name__)


class _CancelCriteria:
    """A StoppingCriteria that ends generation when the client went away or a stop string was seen."""

    def __init__(self, cancel: threading.Event):
        self.cancel = cancel

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.cancel.is_set(), dtype=torch.bool)


class _TokenStreamer:
    """generate()'s streamer: the new token ids into a queue (the prompt, pushed first, is skipped); None ends."""

    def __init__(self):
        self.queue: queue.Queue = queue.Queue()
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            self.queue.put(token)

    def end(self) -> None:
        self.queue.put(None)


class TorchBackend:
    kind = "torch"
    features = frozenset({"logprobs", "logit_bias", "echo"})

    def __init__(self, model, tokenizer, model_id: str, max_concurrency: int = 1, base_path: Path | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_id = model_id
        # On a few CPU cores, two generate() calls at once only share the cores: queue them instead.
        self.max_concurrency = max_concurrency
        self.eos_token_ids = eos_token_ids(model.generation_config, tokenizer)
        self._schema_constraint = None  # compiled response_format grammars, made on first use
        # what one decode step reads (tied weights once): the benchmarks' bandwidth limit
        self.weight_bytes = weight_bytes(model)
        # the folder of the plain weights served, which LoRA adapters trained on them can attach to; None when the
        # weights are not a plain base (an adapter merged in, quantized)
        self.base_path = base_path
        self.adapters: dict[str, Path] = {}  # attached LoRA adapters by name
        # PEFT's active adapter is a setting of the shared layers, not of one call: calls that select one take turns
        self._adapter_lock = threading.Lock()

    @property
    def dtype(self) -> str:
        """What the model computes in: its weights' dtype, or fp32 where bf16 weights are widened
        (finetune.frozen_weights)."""
        embeddings = self.model.get_input_embeddings()
        return str(getattr(embeddings, "_compute_dtype", self.model.dtype)).removeprefix("torch.")

    def _generate_kwargs(self, config: GenerationConfig) -> dict:
        # generate()'s own processors are neutral: logits.logits_chain applies them, in a known order
        return {
            "max_new_tokens": config.max_new_tokens,
            "num_beams": 1,
            "use_cache": config.use_cache,
            "eos_token_id": self.eos_token_ids,
            "pad_token_id": self.tokenizer.pad_token_id or self.eos_token_ids[0],
            "do_sample": not config.greedy,
            "repetition_penalty": 1.0,
            "temperature": 1.0,
            "top_k": 0,
            "top_p": 1.0,
            "min_p": None,
        }

    def _schema_processor(self, config: GenerationConfig):
        schema = config.json_schema
        if schema is None:
            return None
        if self._schema_constraint is None:
            from finetune.evaluate.constrained import SchemaConstraint

            self._schema_constraint = SchemaConstraint(self.tokenizer, self.model.config.get_text_config().vocab_size,
                                                       self.eos_token_ids)
        return self._schema_constraint.processor(schema)  # a fresh one per call: it keeps state

    def add_adapter(self, name: str, folder: Path) -> None:
        """Attach the LoRA adapter in `folder` (a PEFT adapter folder) as `name`, on this backend's weights: the
        first wraps the model in a PeftModel, the others are loaded into it. Before the backend serves requests."""
        from peft import PeftModel

        from neural_chat_app.adapters import check_shapes

        if self.base_path is None:
            raise ValueError(f"{self.model_id!r} is not served as a plain base model (an adapter merged in, or "
                             f"quantized), so LoRA adapters cannot attach to it: serve the base model itself")
        if name in self.adapters or name == self.model_id:
            raise ValueError(f"the name {name!r} is taken on {self.model_id!r}")
        check_shapes(self.model, folder)
        if unpack_linears(self.model):  # PEFT wraps nn.Linear layers only
            logger.info("Linear weights back in PyTorch's layout for LoRA adapters on %s", self.model_id)
        if isinstance(self.model, PeftModel):
            self.model.load_adapter(str(folder), adapter_name=name, low_cpu_mem_usage=True)
        else:
            self.model = PeftModel.from_pretrained(self.model, str(folder), adapter_name=name,
                                                   low_cpu_mem_usage=True).eval()
        self.adapters[name] = folder

    @contextlib.contextmanager
    def _selected(self, adapter: str | None):
        """Run the body with `adapter` active, or with adapters disabled (None). With adapters attached, one body at
        a time: two generate() calls at once would each switch the other's layers (PEFT's mixed-batch
        `adapter_names` too registers its hooks on the shared layers for the length of a call)."""
        if adapter is not None and adapter not in self.adapters:
            raise ValueError(f"no adapter {adapter!r} is attached to {self.model_id!r}; attached: "
                             f"{', '.join(self.adapters) or 'none'}")
        if not self.adapters:
            yield
            return
        with self._adapter_lock:
            if adapter is None:
                with self.model.disable_adapter():
                    yield
            else:
                self.model.set_adapter(adapter, inference_mode=True)
                yield

    def prompt_logprobs(self, prompt_ids: list[int], top: int, adapter: str | None = None) -> list:
        """`echo`: the prompt's own tokens scored (logits.prompt_logprobs)."""
        from neural_chat_app.logits import prompt_logprobs

        with self._selected(adapter):
            return prompt_logprobs(self.model, prompt_ids, top)

    def stream(
        self, prompt_ids: list[int], config: GenerationConfig, result: StreamResult, cancel: threading.Event,
        adapter: str | None = None,
    ) -> Iterator[str]:
        """The reply to `prompt_ids`, text chunk by chunk; `adapter` names the attached LoRA adapter to run with
        (None: the base model, adapters disabled)."""
        from transformers import LogitsProcessorList, StoppingCriteriaList

        from neural_chat_app.logits import LogprobRecorder, logits_chain

        if config.num_beams > 1:
            raise ValueError("GenerationConfig.num_beams > 1 cannot stream; use num_beams=1")
        if adapter is not None and adapter not in self.adapters:
            raise ValueError(f"no adapter {adapter!r} is attached to {self.model_id!r}")
        input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=self.model.device)
        result.prompt_tokens = len(prompt_ids)
        recorder = LogprobRecorder(config.logprobs) if config.logprobs is not None else None
        if recorder is not None:
            result.tokens = []
        # before the thread: a bad schema or logit_bias raises here
        vocab = self.model.config.get_text_config().vocab_size  # a multimodal model's: its language model's
        chain = logits_chain(config, len(prompt_ids), vocab, self._schema_processor(config), recorder)
        streamer = _TokenStreamer()
        outcome: dict = {}
        if config.seed is not None:
            torch.manual_seed(config.seed)

        def run():
            try:
                with torch.inference_mode(), self._selected(adapter):
                    outcome["ids"] = self.model.generate(
                        input_ids=input_ids,
                        attention_mask=torch.ones_like(input_ids),
                        streamer=streamer,
                        logits_processor=LogitsProcessorList(chain),
                        stopping_criteria=StoppingCriteriaList([_CancelCriteria(cancel)]),
                        **self._generate_kwargs(config),
                    )
            except BaseException as err:  # handed to the consumer, which re-raises it
                outcome["error"] = err
                streamer.end()

        worker = threading.Thread(target=run, name="generate", daemon=True)
        worker.start()
        detokenizer = Detokenizer(self.tokenizer)
        try:
            for step, token in enumerate(iter(streamer.queue.get, None)):
                if recorder is not None:
                    entry = recorder.entry(step, token)
                    entry.offset = result.emitted_chars
                    result.tokens.append(entry)
                text = detokenizer.add(token)
                if text:
                    result.mark_token()
                    result.emitted_chars += len(text)
                    yield text
        finally:
            if worker.is_alive():
                cancel.set()  # the consumer stopped early: let generate() return at the next token
            worker.join()
            result.finished_at = time.perf_counter()
            self._count(outcome, prompt_ids, config, result, cancel)
        if "error" in outcome:
            raise outcome["error"]

    def _count(self, outcome: dict, prompt_ids, config, result: StreamResult, cancel: threading.Event) -> None:
        if "ids" not in outcome:
            result.finish_reason = "error"
            return
        new_ids = outcome["ids"][0, len(prompt_ids) :].tolist()
        result.completion_tokens = len(new_ids)
        ended_by_eos = bool(new_ids) and new_ids[-1] in self.eos_token_ids
        if not cancel.is_set() and not ended_by_eos and len(new_ids) >= config.max_new_tokens:
            result.finish_reason = "length"

    def close(self) -> None:
        self.model = None
