"""The OpenVINO backend: openvino-genai's ContinuousBatchingPipeline, driven by one thread.

Concurrent requests share the batch the scheduler builds each step (FACTS.md: 8 streams give about 4x the
tokens/s of one), so the server admits `max_concurrency` requests at once instead of queueing them behind a lock.
The driver thread is the only caller of `step()`; requests are added and cancelled from any thread.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from finetune.models import eos_token_ids
from neural_chat_app.config import GenerationConfig
from neural_chat_app.streaming import StreamResult

logger = logging.getLogger(__name__)
INSTALL_HINT = "pip install openvino-genai openvino-tokenizers"


def _import_genai():
    try:
        import openvino_genai
        import openvino_tokenizers  # noqa: F401  (registers the tokenizer ops the pipeline needs)
    except ImportError as err:
        raise ImportError(
            f"The OpenVINO backend needs openvino-genai ({err}). Install it with: {INSTALL_HINT}"
        ) from err
    return openvino_genai


class OpenVINOBackend:
    kind = "openvino"
    dtype = "openvino"

    def __init__(self, folder: str | Path, model_id: str, max_concurrency: int = 8, cache_size_gb: int = 1):
        ov_genai = _import_genai()
        from transformers import AutoTokenizer

        self.ov_genai = ov_genai
        self.model_id = model_id
        self.max_concurrency = max_concurrency
        scheduler = ov_genai.SchedulerConfig()
        scheduler.cache_size = cache_size_gb  # GB of KV cache shared by all running sequences
        scheduler.max_num_seqs = max_concurrency
        scheduler.dynamic_split_fuse = True
        # Room for several chat prompts in one step (the default 256 splits 8 arriving prompts over two steps):
        # p99 first token at 8 streams 1.03 -> 0.97 s in python -m benchmarks serve on this 2-core machine.
        scheduler.max_num_batched_tokens = 1024
        from finetune.hardware import openvino_cpu_properties

        self.pipe = ov_genai.ContinuousBatchingPipeline(str(folder), scheduler, "CPU", openvino_cpu_properties())
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.eos_token_ids = eos_token_ids(_generation_config(folder), self.tokenizer)
        self._cv = threading.Condition()
        self._active: dict[int, tuple[object, queue.Queue]] = {}
        self._cancelled: set[int] = set()
        self._ids = itertools.count()
        self._closed = False
        self._driver = threading.Thread(target=self._drive, name="openvino-step", daemon=True)
        self._driver.start()

    def _ov_config(self, config: GenerationConfig):
        cfg = self.ov_genai.GenerationConfig()
        cfg.max_new_tokens = config.max_new_tokens
        cfg.repetition_penalty = config.repetition_penalty
        cfg.stop_token_ids = set(self.eos_token_ids)
        cfg.eos_token_id = self.eos_token_ids[0]
        if config.json_schema is not None:
            import json

            schema = json.dumps(config.json_schema)
            cfg.structured_output_config = self.ov_genai.StructuredOutputConfig(json_schema=schema)
        if config.greedy:
            cfg.do_sample = False
        else:
            cfg.do_sample = True
            cfg.temperature = config.temperature
            cfg.top_p = config.top_p
            if config.top_k > 0:
                cfg.top_k = config.top_k
            if config.seed is not None:
                cfg.rng_seed = config.seed
        return cfg

    def _drive(self) -> None:
        while True:
            with self._cv:
                while not self._active and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                for rid in self._cancelled & set(self._active):
                    self._active[rid][0].cancel()
                self._cancelled.clear()
                active = list(self._active.items())
            try:
                self.pipe.step()
            except Exception as err:  # a failed step fails every request in it, never the thread
                logger.exception("OpenVINO step failed")
                with self._cv:
                    for rid, (_, out) in active:
                        out.put(("error", err))
                        self._active.pop(rid, None)
                continue
            for rid, (handle, out) in active:
                if handle.can_read():
                    for output in handle.read().values():
                        out.put(("ids", list(output.generated_ids), output.finish_reason))
                if handle.get_status() != self.ov_genai.GenerationStatus.RUNNING:
                    out.put(("end", None))
                    with self._cv:
                        self._active.pop(rid, None)

    def stream(
        self, prompt_ids: list[int], config: GenerationConfig, result: StreamResult, cancel: threading.Event
    ) -> Iterator[str]:
        import numpy as np
        import openvino as ov

        if config.num_beams > 1:
            raise ValueError("GenerationConfig.num_beams > 1 cannot stream; use num_beams=1")
        result.prompt_tokens = len(prompt_ids)
        rid = next(self._ids)
        out: queue.Queue = queue.Queue()
        tensor = ov.Tensor(np.array([prompt_ids], dtype=np.int64))
        with self._cv:
            handle = self.pipe.add_request(rid, tensor, self._ov_config(config))
            self._active[rid] = (handle, out)
            self._cv.notify()
        ids: list[int] = []
        sent = ""
        finished = False
        try:
            while not finished:
                try:
                    kind, *payload = out.get(timeout=0.1)
                except queue.Empty:
                    if cancel.is_set():
                        return
                    continue
                if kind == "error":
                    result.finish_reason = "error"
                    raise RuntimeError(f"OpenVINO generation failed: {payload[0]}") from payload[0]
                if kind == "end":
                    finished = True
                    continue
                new_ids, reason = payload
                ids += new_ids
                result.completion_tokens = len(ids)
                if reason == self.ov_genai.GenerationFinishReason.LENGTH:
                    result.finish_reason = "length"
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                # An incomplete UTF-8 sequence decodes to U+FFFD: wait for the next token to complete it.
                if len(text) > len(sent) and not text.endswith("\ufffd"):
                    result.mark_token()
                    yield text[len(sent) :]
                    sent = text
                if cancel.is_set():
                    return
        finally:
            result.finished_at = time.perf_counter()
            if not finished:
                with self._cv:
                    self._cancelled.add(rid)
                    self._cv.notify()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._driver.join(timeout=30)


def _generation_config(folder):
    from transformers import GenerationConfig as HFGenerationConfig

    try:
        return HFGenerationConfig.from_pretrained(str(folder))
    except OSError:  # an export without generation_config.json
        return None
