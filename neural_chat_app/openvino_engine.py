"""The OpenVINO engine process: owns the ContinuousBatchingPipeline and calls `step()` in a loop.

python -m neural_chat_app.openvino_engine FD   (started by OpenVINOBackend, which talks to it over socket FD)

It runs in a process of its own because openvino-genai's `step()` holds the GIL for the whole step (15-100 ms
on the embedded model): in the server's process every other thread (HTTP, tokenizer, streaming) would wait for
the step to end, so each token reached its client one step late. Here only this loop waits. It is a plain
subprocess, not multiprocessing's spawn, which imports the caller's __main__ again: a user script that builds a
chatbot at top level would start engines without end.

From the server: first (folder, scheduler, properties, eos_token_ids); then ("add", rid, prompt_ids,
GenerationConfig), ("cancel", rid) and ("close",). To it: ("ready",) or ("failed", text) once; then, after each
step that produced something, ("batch", [("ids", rid, ids, finish_reason) | ("end", rid) | ("error", rid, text)]).
"""

from __future__ import annotations

import sys
from multiprocessing.connection import Connection

from neural_chat_app.config import GenerationConfig


def ov_generation_config(ov_genai, config: GenerationConfig, eos_token_ids: list[int]):
    cfg = ov_genai.GenerationConfig()
    cfg.max_new_tokens = config.max_new_tokens
    cfg.repetition_penalty = config.repetition_penalty
    cfg.presence_penalty = config.presence_penalty
    cfg.frequency_penalty = config.frequency_penalty
    cfg.stop_token_ids = set(eos_token_ids)
    cfg.eos_token_id = eos_token_ids[0]
    if config.json_schema is not None:
        import json

        schema = json.dumps(config.json_schema)
        cfg.structured_output_config = ov_genai.StructuredOutputConfig(json_schema=schema)
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


def run_engine(conn, folder: str, scheduler: dict, properties: dict, eos_token_ids: list[int]) -> None:
    """The engine process's main function: load, say ready (or why not), then serve `conn` until closed."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the server's to handle; it closes this process
    try:
        import numpy as np
        import openvino as ov
        import openvino_genai as ov_genai
        import openvino_tokenizers  # noqa: F401  (registers the tokenizer ops the pipeline needs)

        scheduler_config = ov_genai.SchedulerConfig()
        for name, value in scheduler.items():
            setattr(scheduler_config, name, value)
        pipe = ov_genai.ContinuousBatchingPipeline(folder, scheduler_config, "CPU", properties)
    except Exception as err:
        conn.send(("failed", f"{type(err).__name__}: {err}"))
        return
    conn.send(("ready",))
    running = ov_genai.GenerationStatus.RUNNING
    handles: dict[int, object] = {}

    def take(message) -> bool:
        kind = message[0]
        if kind == "close":
            return False
        if kind == "add":
            _, rid, prompt_ids, config = message
            try:
                tensor = ov.Tensor(np.array([prompt_ids], dtype=np.int64))
                handles[rid] = pipe.add_request(rid, tensor, ov_generation_config(ov_genai, config, eos_token_ids))
            except Exception as err:  # e.g. a schema the grammar compiler rejects: that request fails, not the engine
                conn.send(("batch", [("error", rid, f"{type(err).__name__}: {err}")]))
        elif kind == "cancel" and message[1] in handles:
            handles[message[1]].cancel()
        return True

    while True:
        try:
            if not handles and not take(conn.recv()):  # idle: wait for work
                return
            while conn.poll():  # busy: take whatever arrived during the last step, then step again
                if not take(conn.recv()):
                    return
        except (EOFError, OSError):  # the server went away
            return
        if not handles:
            continue
        try:
            pipe.step()
        except Exception as err:  # a failed step fails every request in it, never the engine
            conn.send(("batch", [("error", rid, f"{type(err).__name__}: {err}") for rid in handles]))
            handles.clear()
            continue
        out = []
        for rid, handle in list(handles.items()):
            if handle.can_read():
                for output in handle.read().values():
                    out.append(("ids", rid, list(output.generated_ids), output.finish_reason.name))
            if handle.get_status() != running:
                out.append(("end", rid))
                del handles[rid]
        if out:
            conn.send(("batch", out))


def main(argv: list[str] | None = None) -> None:
    conn = Connection(int((argv or sys.argv[1:])[0]))
    run_engine(conn, *conn.recv())


if __name__ == "__main__":
    main()
