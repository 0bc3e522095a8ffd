"""The OpenVINO backend: openvino-genai's ContinuousBatchingPipeline, stepped in an engine process of its own.

Concurrent requests share the batch the scheduler builds each step (measured on a 2-core AMX Xeon: 8 streams give
about 4x the tokens/s of one), so the server admits `max_concurrency` requests at once instead of queueing them
behind a lock.
The pipeline lives in a subprocess (openvino_engine.py says why: `step()` holds the GIL); here one reader
thread routes the engine's output to the request that asked for it.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

from finetune.extras import require
from finetune.models import eos_token_ids
from neural_chat_app.config import GenerationConfig
from neural_chat_app.streaming import Detokenizer, StreamResult

logger = logging.getLogger(__name__)


def _import_genai():
    openvino_genai = require("openvino_genai", "The OpenVINO backend")
    require("openvino_tokenizers", "The OpenVINO backend")  # registers the tokenizer ops the pipeline needs
    return openvino_genai


class OpenVINOBackend:
    kind = "openvino"
    features = frozenset()  # token log-probabilities and logit bias: not through openvino-genai here
    dtype = "openvino"

    def __init__(self, folder: str | Path, model_id: str, max_concurrency: int = 8, cache_size_gb: int = 1,
                 prefix_caching: bool = True):
        _import_genai()  # fail here, with the install hint, rather than in the engine process
        from transformers import AutoTokenizer

        from finetune.hardware import detect_hardware, openvino_cpu_properties
        from quantize.projection_fusion import is_fused

        self.model_id = model_id
        self.max_concurrency = max_concurrency
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.eos_token_ids = eos_token_ids(_generation_config(folder), self.tokenizer)
        if not is_fused(folder):
            logger.info("%s was exported without q/k/v fusion; `python -m quantize.projection_fusion %s` fuses it "
                        "in place (same outputs, faster decoding)", folder, folder)
        scheduler = {
            "cache_size": cache_size_gb,  # GB of KV cache shared by all running sequences
            "max_num_seqs": max_concurrency,
            "dynamic_split_fuse": True,
            # Room for several chat prompts in one step (the default 256 splits 8 arriving prompts over two
            # steps): p99 first token at 8 streams 1.03 -> 0.97 s in python -m benchmarks serve on 2 cores.
            "max_num_batched_tokens": 1024,
            # Each chat turn sends the whole conversation again: its KV blocks from the turn before are reused
            # and only the new tokens are prefilled (genai's SchedulerConfig leaves this off).
            "enable_prefix_caching": prefix_caching,
        }
        self._launch_args = (str(folder), scheduler, openvino_cpu_properties(), list(self.eos_token_ids))
        self._launch_lock = threading.Lock()
        self._ids = itertools.count()
        self._engine = _Engine.launch(*self._launch_args)
        # A backend dropped without close() (a notebook cell run again) still stops its engine process.
        self._stop = weakref.finalize(self, self._engine.stop)
        # after the launch, which names a folder OpenVINO cannot load; the serve benchmark's bandwidth limit
        self.weight_bytes = streamed_weight_bytes(folder, detect_hardware().cpu_bf16)

    def _live_engine(self) -> _Engine:
        """The engine; a new one if the last has died (killed for memory, say): the server need not restart."""
        with self._launch_lock:
            if self._engine.dead():
                logger.warning("The OpenVINO engine for %s had exited (exit code %s): starting a new one",
                               self.model_id, self._engine.process.poll())
                self._stop()
                self._engine = _Engine.launch(*self._launch_args)
                self._stop = weakref.finalize(self, self._engine.stop)
            return self._engine

    def stream(
        self, prompt_ids: list[int], config: GenerationConfig, result: StreamResult, cancel: threading.Event
    ) -> Iterator[str]:
        if config.num_beams > 1:
            raise ValueError("GenerationConfig.num_beams > 1 cannot stream; use num_beams=1")
        result.prompt_tokens = len(prompt_ids)
        rid = next(self._ids)
        out: queue.Queue = queue.Queue()
        engine = self._live_engine()
        with engine.lock:
            if engine.exited:  # it died since _live_engine looked: the reader has already failed the others
                raise RuntimeError(f"OpenVINO generation failed: {engine.exited}")
            engine.queues[rid] = out
        ids: list[int] = []
        detokenizer = Detokenizer(self.tokenizer)
        finished = False
        try:
            try:
                engine.send(("add", rid, list(prompt_ids), config))
            except OSError as err:  # it died after _live_engine looked, and the reader has not said so yet
                finished = True
                raise RuntimeError(f"OpenVINO generation failed: {engine.exit_message()}") from err
            while not finished:
                try:
                    kind, _, *payload = out.get(timeout=0.1)
                except queue.Empty:
                    if cancel.is_set():
                        return
                    continue
                if kind == "error":
                    result.finish_reason = "error"
                    finished = True
                    raise RuntimeError(f"OpenVINO generation failed: {payload[0]}")
                if kind == "end":
                    finished = True
                    continue
                new_ids, reason = payload
                ids += new_ids
                result.completion_tokens = len(ids)
                if reason == "LENGTH":
                    result.finish_reason = "length"
                text = "".join(detokenizer.add(i) for i in new_ids)
                if text:
                    result.mark_token()
                    yield text
                if cancel.is_set():
                    return
        finally:
            result.finished_at = time.perf_counter()
            with engine.lock:
                engine.queues.pop(rid, None)
                exited = engine.exited
            if not finished and not exited:
                try:
                    engine.send(("cancel", rid))
                except (OSError, ValueError):  # closed meanwhile: nothing left to cancel
                    pass

    def close(self) -> None:
        self._stop()


@dataclass
class _Engine:
    """One engine process, the socket to it, and the thread that puts its output in each request's queue."""

    conn: Connection
    process: subprocess.Popen
    queues: dict[int, queue.Queue] = field(default_factory=dict)  # by request id, under `lock`
    lock: threading.Lock = field(default_factory=threading.Lock)
    exited: str | None = None  # why it is gone, once the reader has seen it go (under `lock`)
    send_lock: threading.Lock = field(default_factory=threading.Lock)
    reader: threading.Thread | None = None

    @classmethod
    def launch(cls, folder: str, scheduler: dict, properties: dict, eos_token_ids: list[int]) -> _Engine:
        ours, theirs = socket.socketpair()
        package_root = str(Path(__file__).resolve().parents[1])  # importable also from a checkout not installed
        env = {**os.environ,
               "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        with theirs:
            process = subprocess.Popen(
                [sys.executable, "-m", "neural_chat_app.openvino_engine", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), env=env,
            )
        engine = cls(Connection(ours.detach()), process)
        try:
            engine.conn.send((folder, scheduler, properties, eos_token_ids))
            first = engine.conn.recv()
        except (EOFError, OSError):
            code = process.wait(timeout=5)
            engine.conn.close()
            raise RuntimeError(f"The OpenVINO engine process for {folder} exited while loading it "
                               f"(exit code {code})") from None
        if first[0] == "failed":
            process.wait(timeout=30)
            engine.conn.close()
            raise RuntimeError(f"OpenVINO could not load {folder}: {first[1]}")
        engine.reader = threading.Thread(target=engine._read, name="openvino-reader", daemon=True)
        engine.reader.start()
        return engine

    def send(self, message) -> None:
        with self.send_lock:
            self.conn.send(message)

    def dead(self) -> bool:
        return self.exited is not None or self.process.poll() is not None

    def exit_message(self) -> str:
        try:
            code = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        return f"the OpenVINO engine process exited (exit code {code}); the next request starts a new one"

    def _read(self) -> None:
        try:
            while True:
                _, items = self.conn.recv()
                with self.lock:
                    for item in items:
                        out = self.queues.get(item[1])
                        if out is not None:
                            out.put(item)
        except (EOFError, OSError):
            message = self.exit_message()
            with self.lock:
                self.exited = message
                for rid, out in self.queues.items():
                    out.put(("error", rid, message))

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                self.send(("close",))
            except (OSError, ValueError):
                pass
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self.reader is not None:
            self.reader.join(timeout=5)  # it ends on the engine's EOF
        self.conn.close()


def _generation_config(folder):
    from transformers import GenerationConfig as HFGenerationConfig

    try:
        return HFGenerationConfig.from_pretrained(str(folder))
    except OSError:  # an export without generation_config.json
        return None


# ops an NNCF-compressed weight passes through on its way to its MatMul (decompression, layout)
_WEIGHT_PATH_OPS = {"Convert", "Subtract", "Multiply", "Reshape", "Transpose", "Unsqueeze"}


def streamed_weight_bytes(folder, bf16_compute: bool) -> int:
    """Bytes of weights one decode step reads: every constant that feeds a MatMul (directly or through its
    decompression ops), at its stored size; f32 ones at 2 bytes where the CPU plugin computes in bf16 (its default
    on AMX / AVX512-BF16). An embedding table that no MatMul uses (an untied lm_head) is left out: a step reads
    one row of it."""
    import openvino as ov

    def feeds_matmul(node, depth: int = 0) -> bool:
        for target in (t.get_node() for out in node.outputs() for t in out.get_target_inputs()):
            kind = target.get_type_name()
            if kind == "MatMul" or (kind in _WEIGHT_PATH_OPS and depth < 6 and feeds_matmul(target, depth + 1)):
                return True
        return False

    model = ov.Core().read_model(str(Path(folder) / "openvino_model.xml"))
    total = 0
    for op in model.get_ops():
        # rank >= 2: weights, scales and zero points; not the shape and axis constants on the same paths
        if op.get_type_name() == "Constant" and len(op.get_output_shape(0)) >= 2 and feeds_matmul(op):
            size = op.get_byte_size()
            total += size // 2 if bf16_compute and op.get_element_type() == ov.Type.f32 else size
    return total
