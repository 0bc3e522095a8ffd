"""The transformers backend: `generate` in a worker thread, its tokens detokenized and streamed as they come."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator

import torch

from finetune.models import eos_token_ids
from neural_chat_app.config import GenerationConfig
from neural_chat_app.streaming import Detokenizer, StreamResult


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

            self._schema_constraint = SchemaConstraint(self.tokenizer, self.model.config.vocab_size,
                                                       self.eos_token_ids)
        return self._schema_constraint.processor(schema)  # a fresh one per call: it keeps state

    def prompt_logprobs(self, prompt_ids: list[int], top: int) -> list:
        """`echo`: the prompt's own tokens scored (logits.prompt_logprobs)."""
        from neural_chat_app.logits import prompt_logprobs

        return prompt_logprobs(self.model, prompt_ids, top)

    def stream(
        self, prompt_ids: list[int], config: GenerationConfig, result: StreamResult, cancel: threading.Event
    ) -> Iterator[str]:
        from transformers import LogitsProcessorList, StoppingCriteriaList

        from neural_chat_app.logits import LogprobRecorder, logits_chain

        if config.num_beams > 1:
            raise ValueError("GenerationConfig.num_beams > 1 cannot stream; use num_beams=1")
        input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=self.model.device)
        result.prompt_tokens = len(prompt_ids)
        recorder = LogprobRecorder(config.logprobs) if config.logprobs is not None else None
        if recorder is not None:
            result.tokens = []
        # before the thread: a bad schema or logit_bias raises here
        chain = logits_chain(config, len(prompt_ids), self.model.config.vocab_size, self._schema_processor(config),
                             recorder)
        streamer = _TokenStreamer()
        outcome: dict = {}
        if config.seed is not None:
            torch.manual_seed(config.seed)

        def run():
            try:
                with torch.inference_mode():
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
