"""Command line: ask, improve, serve, export-log, models, export-openvino.

python -m neural_chat_app ask "How long is the warranty?" --model runs/demo_aurora
python -m neural_chat_app improve --config configs/improve.yaml [finetune.learning_rate=1e-4 ...]
python -m neural_chat_app serve --config configs/server.yaml [--port 8001] [limits.max_queue=32 ...]
python -m neural_chat_app export-log --db ~/.cache/neuralchat-xeon/chatlog.sqlite --output chats.jsonl
python -m neural_chat_app export-log --db ~/.cache/neuralchat-xeon/chatlog.sqlite --format dpo --output pairs.jsonl
python -m neural_chat_app models
python -m neural_chat_app export-openvino <hf-folder> <out-folder> --weight-format int8
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from finetune.config_binding import FLAG_DEST, add_config_flags, config_overrides, fields_help


def _model_access_flags(parser) -> None:
    parser.add_argument("--allow-download", action="store_true",
                        help="download a hub id that is not in the Hugging Face cache (else an error says how)")
    parser.add_argument("--trust-remote-code", action="store_true", help="run the code a model's folder ships")


def _ask(args) -> int:
    from finetune.hardware import configure_threads
    from neural_chat_app import GenerationConfig, LoadingModelConfig, PipelineConfig, build_chatbot

    configure_threads()
    loading = LoadingModelConfig(trust_remote_code=args.trust_remote_code, allow_download=args.allow_download)
    chatbot = build_chatbot(PipelineConfig(model_name_or_path=args.model, backend=args.backend,
                                           system_prompt=args.system, loading_config=loading))
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=not args.greedy,
                              return_stats=args.stats)
    try:
        chunks, _links = chatbot.predict_stream(args.query, config)
        for chunk in chunks:
            print(chunk, end="", flush=True)
        print()
    finally:
        chatbot.close()
    return 0


def _improve(args) -> int:
    from neural_chat_app.improve import LoopConfig, run_loop

    config = LoopConfig.from_yaml(args.config, args.overrides)
    state = run_loop(config)
    for step, result in state["steps"].items():
        print(f"{step}: {json.dumps(result, default=str)}")
    print(f"report: {Path(config.run_dir) / 'report.md'}")
    return 0


def _serve(args) -> int:
    from finetune.extras import require
    from finetune.hardware import configure_threads

    require("fastapi", "The chat server")
    uvicorn = require("uvicorn", "The chat server")
    from neural_chat_app.server import create_app, load_settings

    settings = load_settings(args.config, config_overrides(args))
    configure_threads()
    app = create_app(settings)
    from neural_chat_app.loading import compute_line

    active = app.state.server.models.active
    print(f"Serving {active.model_id} on http://{settings.host}:{settings.port}/", flush=True)
    adapters = app.state.server.models.views
    if adapters:
        print(f"LoRA adapters on it (one copy of its weights): {', '.join(adapters)}", flush=True)
    print(f"Compute: {compute_line(active)}", flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    return 0


def _export_log(args) -> int:
    from neural_chat_app.export_log import export_jsonl, export_preferences

    db = args.db
    if db is None:
        from neural_chat_app.server import load_settings

        db = load_settings(args.config).chat_log.target
    if args.format != "messages":
        if args.min_feedback is not None or args.cut_disliked:
            raise ValueError(f"export-log --format {args.format}: --min-feedback and --cut-disliked apply to "
                             "--format messages only (the preference rows carry the ratings themselves)")
        print(json.dumps(export_preferences(db, args.output, args.format), indent=2))
        return 0
    counts = export_jsonl(db, args.output, min_feedback=args.min_feedback, cut_disliked=args.cut_disliked)
    print(json.dumps(counts, indent=2))
    return 0


def _models(args) -> int:
    from neural_chat_app.registry import list_models

    for entry in list_models(args.model_dir or None):
        print(json.dumps(entry.as_dict()))
    return 0


def _export_openvino(args) -> int:
    from quantize.openvino import export_openvino

    print(export_openvino(args.model_dir, args.output_dir, args.weight_format))
    return 0


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose epilog may be a function, called when the help is printed (what it describes may
    import torch, which the other verbs do not pay for)."""

    def format_help(self) -> str:
        if callable(self.epilog):
            self.epilog = self.epilog()
        return super().format_help()


def _loop_keys() -> str:
    from neural_chat_app.improve import LoopConfig

    return "keys of the loop YAML (key=value sets them too):\n" + fields_help(LoopConfig)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m neural_chat_app", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    ask = sub.add_parser("ask", help="ask a model one question and stream the answer")
    ask.add_argument("query")
    ask.add_argument("--model", help="embedded name, HF folder, fine-tune output folder or OpenVINO folder")
    ask.add_argument("--backend", default="auto", choices=["auto", "torch", "openvino"])
    ask.add_argument("--system", help="system prompt (default: the model's own)")
    ask.add_argument("--max-new-tokens", type=int, default=128)
    ask.add_argument("--greedy", action="store_true", help="no sampling: the most likely token each step")
    ask.add_argument("--stats", action="store_true", help="print latency and tokens/s after the answer")
    _model_access_flags(ask)
    ask.set_defaults(run=_ask)

    from neural_chat_app.server.settings import ServerSettings

    improve = sub.add_parser("improve", help="logged chats -> data -> fine-tune -> evaluate -> promote -> quantize",
                             formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_loop_keys)
    improve.add_argument("--config", required=True, help="loop YAML (see configs/improve.yaml)")
    improve.add_argument("overrides", nargs="*", metavar="key=value",
                         help="override a key of the file, the value read as YAML: finetune.learning_rate=1e-4")
    improve.set_defaults(run=_improve)

    serve = sub.add_parser("serve", help="run the OpenAI-compatible server and the web chat page")
    serve.add_argument("--config", help="server YAML (see configs/server.yaml); flags and key=value override it")
    # keys stay off the command line, where `ps` shows them: the YAML or NEURALCHAT_API_KEYS / NEURALCHAT_ADMIN_KEYS
    add_config_flags(serve, ServerSettings, skip=["api_keys", "admin_keys"])
    serve.add_argument("--no-log", dest=FLAG_DEST + "chat_log.enabled", action="store_const", const=False,
                       default=argparse.SUPPRESS, help="do not write the conversation log (chat_log.enabled=false)")
    serve.add_argument("--log-level", default="info", help="uvicorn's log level")
    serve.set_defaults(run=_serve)

    export = sub.add_parser("export-log", help="conversation log -> JSONL messages (SFT) or preference rows "
                                               "(KTO, DPO) for the data pipeline and finetune")
    where = export.add_mutually_exclusive_group()
    where.add_argument("--db", help="the SQLite log file, or the postgresql:// URL of a shared log")
    where.add_argument("--config", help="read the log path from a server YAML")
    export.add_argument("--output", required=True, help="JSONL file to write")
    export.add_argument("--format", default="messages", choices=["messages", "kto", "dpo"],
                        help="messages: one conversation a line (kept replies); kto: each rated reply with its "
                             "prompt and a true/false label; dpo: prompt, chosen (the reply kept) and rejected (a "
                             "reply regenerated or edited away), in TRL's conversational format")
    export.add_argument("--min-feedback", type=int, choices=[-1, 1], help="keep conversations rated at least this")
    export.add_argument("--cut-disliked", action="store_true",
                        help="end each conversation before its first thumbs-down reply (never an SFT target)")
    export.set_defaults(run=_export_log)

    models = sub.add_parser("models", help="list the models this host can serve")
    models.add_argument("--model-dir", action="append", help="folder to scan (repeatable)")
    models.set_defaults(run=_models)

    ov = sub.add_parser("export-openvino", help="export a Hugging Face folder to OpenVINO IR")
    ov.add_argument("model_dir")
    ov.add_argument("output_dir")
    ov.add_argument("--weight-format", default="fp32", choices=["fp32", "bf16", "int8", "int4"])
    ov.set_defaults(run=_export_openvino)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (FileNotFoundError, ValueError, NotImplementedError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def serve_main(argv: list[str] | None = None) -> int:
    """The `neuralchat-serve` script: `python -m neural_chat_app serve`, without saying `serve` twice."""
    return main(["serve", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
