"""The transformers backend: `generate` in a worker thread, text streamed through TextIteratorStreamer."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import torch

from finetune.models import eos_token_ids
from neural_chat_app.config import GenerationConfig
from neural_chat_app.streaming import StreamResult


class _CancelCriteria:
    """A StoppingCriteria that ends generation when the client went away or a stop string was seen."""

    def __init__(self, cancel: threading.Event):
        self.cancel = cancel

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.cancel.is_set(), dtype=torch.bool)


class TorchBackend:
    kind = "torch"

    def __init__(self, model, tokenizer, model_id: str, max_concurrency: int = 1):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_id = model_id
        # On a few CPU cores, two generate() calls at once only share the cores: queue them instead.
        self.max_concurrency = max_concurrency
        self.eos_token_ids = eos_token_ids(model.generation_config, tokenizer)
        self._schema_constraint = None  # compiled response_format grammars, made on first use
        # what one decode step reads (tied weights once): the benchmarks' bandwidth limit
        self.weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())

    @property
    def dtype(self) -> str:
        return str(self.model.dtype).removeprefix("torch.")

    def _generate_kwargs(self, config: GenerationConfig) -> dict:
        kwargs = {
            "max_new_tokens": config.max_new_tokens,
            "repetition_penalty": config.repetition_penalty,
            "num_beams": 1,
            "use_cache": config.use_cache,
            "eos_token_id": self.eos_token_ids,
            "pad_token_id": self.tokenizer.pad_token_id or self.eos_token_ids[0],
        }
        if config.greedy:
            return {**kwargs, "do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        return {
            **kwargs,
            "do_sample": True,
            "temperature": config.temperature,
            "top_p": config.top_p,
            "top_k": config.top_k,
        }

    def _logits_processors(self, config: GenerationConfig) -> dict:
        schema = config.json_schema
        if schema is None:
            return {}
        if self._schema_constraint is None:
            from finetune.evaluate.constrained import SchemaConstraint

            self._schema_constraint = SchemaConstraint(self.tokenizer, self.model.config.vocab_size,
                                                       self.eos_token_ids)
        processors = [self._schema_constraint.processor(schema)]  # a fresh one per call: it keeps state
        if config.greedy:
            return {"logits_processor": processors}
        # transformers runs user processors after its own sampling warpers, and top-k/top-p may keep only
        # tokens the grammar forbids (then nothing is left to sample): mask first, then warp here.
        from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        if config.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(config.temperature))
        if config.top_k > 0:
            processors.append(TopKLogitsWarper(config.top_k))
        if config.top_p < 1.0:
            processors.append(TopPLogitsWarper(config.top_p))
        return {"logits_processor": processors, "temperature": 1.0, "top_k": 0, "top_p": 1.0}

    def stream(
        self, prompt_ids: list[int], config: GenerationConfig, result: StreamResult, cancel: threading.Event
    ) -> Iterator[str]:
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        if config.num_beams > 1:
            raise ValueError("GenerationConfig.num_beams > 1 cannot stream; use num_beams=1")
        input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=self.model.device)
        result.prompt_tokens = len(prompt_ids)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
        outcome: dict = {}
        constraint = self._logits_processors(config)  # before the thread: a bad schema raises here
        if config.seed is not None:
            torch.manual_seed(config.seed)

        def run():
            try:
                with torch.inference_mode():
                    outcome["ids"] = self.model.generate(
                        input_ids=input_ids,
                        attention_mask=torch.ones_like(input_ids),
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([_CancelCriteria(cancel)]),
                        **{**self._generate_kwargs(config), **constraint},
                    )
            except BaseException as err:  # handed to the consumer, which re-raises it
                outcome["error"] = err
                streamer.on_finalized_text("", stream_end=True)

        worker = threading.Thread(target=run, name="generate", daemon=True)
        worker.start()
        try:
            for text in streamer:
                if text:
                    result.mark_token()
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
