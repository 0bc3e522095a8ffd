"""The outside reference of `benchmarks infer`: llama.cpp (through llama-cpp-python) on the embedded model's GGUF.

Batch 1 goes through `Llama.create_completion`, the way users run it. A batch of several prompts goes through
llama.cpp's own multi-sequence API (one context with a sequence id per prompt, as in llama.cpp's `batched`
example): the prompts are prefilled together in chunks of `n_batch` tokens, then every decode step evaluates one
token of each sequence in a single `llama_decode` call, and the next tokens are picked greedily from the logits.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from quantize.gguf_export import LLAMA_CPP_PYTHON as VERSION  # one llama.cpp for the converter and the runtime

PORTABLE_BUILD = ("the llamacpp path needs llama-cpp-python, built for this CPU with portable flags: "
                  "python -m benchmarks.llamacpp build (about 5 minutes on 2 cores)")
N_BATCH = 512  # tokens per llama_decode call while prefilling, llama-cpp-python's default
# /proc/cpuinfo flag -> the ggml switch that uses it. AMX is never switched on: ggml's AMX kernel died with SIGILL
# on these VMs, and so did the default -march=native build that enables it.
GGML_SWITCHES = {"avx2": "GGML_AVX2", "fma": "GGML_FMA", "f16c": "GGML_F16C", "avx_vnni": "GGML_AVX_VNNI",
                 "avx512f": "GGML_AVX512", "avx512_vnni": "GGML_AVX512_VNNI", "avx512_bf16": "GGML_AVX512_BF16"}


def cmake_args(flags: set[str]) -> str:
    """CMAKE_ARGS for a llama.cpp build that runs on a CPU with `flags`: native tuning off, and each vector
    extension the CPU has switched on by name (an AVX2-only CPU gets no AVX-512 code that it cannot run)."""
    switches = [f"-D{switch}={'ON' if flag in flags else 'OFF'}" for flag, switch in GGML_SWITCHES.items()]
    return " ".join(["-DGGML_NATIVE=OFF", *switches])


def build(python: str = sys.executable) -> int:
    """pip-install llama-cpp-python compiled with cmake_args() for this machine's CPU."""
    from finetune.hardware import read_cpuinfo

    args = cmake_args(read_cpuinfo()[1])
    print(f"CMAKE_ARGS=\"{args}\" pip install llama-cpp-python=={VERSION}", flush=True)
    command = [python, "-m", "pip", "install", "--no-cache-dir", f"llama-cpp-python=={VERSION}"]
    return subprocess.call(command, env={**os.environ, "CMAKE_ARGS": args})


def require():
    """llama_cpp, or an ImportError that says how to build it."""
    try:
        import llama_cpp
    except ImportError as e:
        raise ImportError(PORTABLE_BUILD) from e
    return llama_cpp


def load(gguf: str, threads: int):
    return require().Llama(model_path=gguf, n_threads=threads, n_ctx=2048, n_batch=N_BATCH, verbose=False)


def generate_one(llm, prompt: str, new_tokens: int) -> tuple[list[float], int]:
    """Greedy completion of exactly `new_tokens` tokens (end-of-sequence forbidden). Returns the clock reading at
    each token, the first preceded by the start, and the prompt's length in tokens."""
    llm.reset()  # forget the previous prompt: no prefix reuse between runs
    times = [time.perf_counter()]
    for chunk in llm.create_completion(prompt, max_tokens=new_tokens, temperature=0.0, stream=True,
                                       logit_bias={llm.token_eos(): -1e9}):
        if chunk["choices"][0]["finish_reason"] is None:  # the stream ends with an empty chunk that says why
            times.append(time.perf_counter())
    return times, len(llm.tokenize(prompt.encode("utf-8"), special=True))


def generate_batch(llm, prompts: list[str], new_tokens: int, threads: int) -> tuple[list[list[int]], list[float]]:
    """Greedy completions of exactly `new_tokens` tokens for every prompt, decoded together. Returns the new tokens
    of each prompt and the clock readings: start, then one per step (the first after the prefill)."""
    import llama_cpp as lc
    import numpy as np

    prompt_ids = [llm.tokenize(p.encode("utf-8"), special=True) for p in prompts]
    per_sequence = max(len(ids) for ids in prompt_ids) + new_tokens
    params = lc.llama_context_default_params()
    params.n_seq_max = len(prompts)
    params.n_ctx = len(prompts) * -(-per_sequence // 256) * 256  # split evenly between the sequences
    params.n_batch = params.n_ubatch = N_BATCH
    params.n_threads = params.n_threads_batch = threads
    params.no_perf = True
    ctx = lc.llama_init_from_model(llm.model, params)
    if ctx is None:
        raise RuntimeError(f"llama.cpp could not create a context for {len(prompts)} sequences of {per_sequence} "
                           "tokens")
    batch = lc.llama_batch_init(max(N_BATCH, len(prompts)), 0, 1)
    n_vocab, eos = llm.n_vocab(), llm.token_eos()

    def decode(entries: list[tuple[int, int, int, bool]]) -> dict[int, np.ndarray]:
        """entries: (token, position, sequence, wants logits). Returns the logits by sequence."""
        for i, (token, pos, seq, wants) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, 1, wants
            batch.seq_id[i][0] = seq
        batch.n_tokens = len(entries)
        if lc.llama_decode(ctx, batch) != 0:
            raise RuntimeError(f"llama_decode failed on a batch of {len(entries)} tokens")
        return {seq: np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx, i), shape=(n_vocab,))
                for i, (_, _, seq, wants) in enumerate(entries) if wants}

    def pick(logits: np.ndarray) -> int:
        logits[eos] = -np.inf  # every sequence generates exactly new_tokens tokens, as on the other paths
        return int(logits.argmax())

    try:
        prefill = [(token, pos, seq, pos == len(ids) - 1)
                   for seq, ids in enumerate(prompt_ids) for pos, token in enumerate(ids)]
        times, last = [time.perf_counter()], {}
        for start in range(0, len(prefill), N_BATCH):
            last.update({seq: pick(row) for seq, row in decode(prefill[start:start + N_BATCH]).items()})
        outputs = [[last[seq]] for seq in range(len(prompts))]
        times.append(time.perf_counter())
        for step in range(1, new_tokens):
            logits = decode([(out[-1], len(ids) + step - 1, seq, True)
                             for seq, (ids, out) in enumerate(zip(prompt_ids, outputs))])
            for seq, out in enumerate(outputs):
                out.append(pick(logits[seq]))
            times.append(time.perf_counter())
        return outputs, times
    finally:
        lc.llama_batch_free(batch)
        lc.llama_free(ctx)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["build"]:
        return build()
    if argv[:1] == ["flags"]:
        from finetune.hardware import read_cpuinfo

        print(cmake_args(read_cpuinfo()[1]))
        return 0
    print("python -m benchmarks.llamacpp build   # install llama-cpp-python compiled for this CPU\n"
          "python -m benchmarks.llamacpp flags   # print the CMAKE_ARGS it would use")
    return 2


if __name__ == "__main__":
    sys.exit(main())
