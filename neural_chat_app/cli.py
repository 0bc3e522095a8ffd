"""`neuralchat <verb> ...`: one command for every stage of the loop.

Each verb runs the same `main` as its `python -m` form, with the rest of the command line:

    neuralchat doctor                      what this machine can do, and which precision it trains in
    neuralchat finetune [config.yaml] ...  python -m finetune (NeuralChat flags; re-executes on tcmalloc)
    neuralchat launch ...                  python -m finetune launch (multi-process, multi-node)
    neuralchat data ...                    python -m finetune.data (chat logs -> clean -> dedup -> splits)
    neuralchat evaluate ...                python -m finetune.evaluate
    neuralchat quantize ...                python -m quantize
    neuralchat serve|ask|export-log|improve|models|export-openvino ...   python -m neural_chat_app <verb>
    neuralchat bench <benchmark> ...       python -m benchmarks

Modules are imported only for the verb that runs, so `neuralchat doctor` answers where torch is missing.
"""

from __future__ import annotations

import importlib
import sys

# verb -> (module whose main(argv) runs it, arguments put before the user's)
VERBS: dict[str, tuple[str, list[str]]] = {
    "doctor": ("finetune.__main__", ["doctor"]),
    "finetune": ("finetune.__main__", []),
    "launch": ("finetune.__main__", ["launch"]),
    "data": ("finetune.data.__main__", []),
    "evaluate": ("finetune.evaluate.__main__", []),
    "quantize": ("quantize.__main__", []),
    **{verb: ("neural_chat_app.__main__", [verb])
       for verb in ("serve", "ask", "export-log", "improve", "models", "export-openvino")},
    "bench": ("benchmarks.__main__", []),
}


def main(argv: list[str] | None = None) -> int:
    """The `neuralchat` console script. Called as the process's entry point (argv None), `finetune` keeps its
    allocator re-execution: finetune's main sees argv None and re-runs `python -m finetune` on tcmalloc."""
    entry = argv is None
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__)
        return 0 if argv else 2
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"neuralchat: unknown verb {verb!r}; one of: {', '.join(VERBS)}", file=sys.stderr)
        return 2
    module_name, prefix = VERBS[verb]
    module = importlib.import_module(module_name)
    from finetune.errors import UserError

    try:
        if entry and verb == "finetune":
            # finetune's main reads sys.argv itself when it is the entry point (for the re-exec): give it its own
            sys.argv = ["python -m finetune", *rest]
            code = module.main()
        else:
            code = module.main([*prefix, *rest])
    except UserError as err:  # whatever a stage lets through: the message, not a traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
