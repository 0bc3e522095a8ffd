"""python -m benchmarks COMMAND [options]: each command measures, prints a table and saves JSON in results/.

    roofline   the machine's limits: bf16/fp32 matmul GFLOPS, memory bandwidth, AMX in use, training/decode limits
    train      training throughput: the plain recipe vs ours, against the bf16 matmul limit
    infer      inference: transformers, OpenVINO bf16/INT8/INT4, INC INT4, llama.cpp; latency, tokens/s, RSS
    data       the data pipeline at 100 MB and 1 GB: records/s and peak RSS
    serve      a bounded load test of the chat server on loopback: tokens/s and latency at 1-8 streams
    quantize   quantization quality: size, perplexity, token agreement of each scheme; --shape NAME: at a real
               size, time, memory by phase beside the estimate, decode speed
    extraction the extraction specialist: base vs fine-tuned, with and without constrained decoding
    web        a web artifact's page in Chromium: download size, cold/warm first answer, tokens/s beside Python
    report     benchmarks/results/REPORT.md and the README's headline table, from the saved results
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "roofline": "benchmarks.roofline",
    "train": "benchmarks.train",
    "infer": "benchmarks.infer",
    "data": "benchmarks.data_pipeline",
    "serve": "benchmarks.serve_load",
    "quantize": "benchmarks.quantize_quality",
    "extraction": "benchmarks.extraction_quality",
    "web": "benchmarks.web",
    "report": "benchmarks.report",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(COMMANDS[argv[0]])
    sys.argv = [f"python -m benchmarks {argv[0]}", *argv[1:]]
    code = module.main(argv[1:])
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
