"""The optional (and the few core) dependencies in one table: what to import, what to pip install, which setup.cfg
extra brings it, and what it is for.

Every "install it with" message and the doctor's package list come from here, so a version is written once; a test
checks the table against setup.cfg (each extra exists and lists the distribution) and constraints.txt (the same
pin). `require("lancedb", "the retrieval plugin")` imports a backend where it is used, or raises an ImportError
that says what to install.

Not here: the embedded-model packages (finetune.models, finetune.doctor) and llama-cpp-python, which is built for
the CPU rather than installed from a wheel (benchmarks.llamacpp).
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from types import ModuleType

PROJECT = "neuralchat-xeon"  # the distribution name in setup.cfg, for "pip install 'neuralchat-xeon[rag]'"
CORE = "core"  # the `extra` of a dependency in setup.cfg's install_requires


@dataclass(frozen=True)
class Dependency:
    module: str  # what the code imports (a dotted name when the distribution owns only that part)
    distribution: str  # what pip installs
    purpose: str  # what the project needs it for, as the doctor and the error messages say it
    extra: str | None  # the setup.cfg extra that installs it, CORE for install_requires, None when outside setup.cfg
    version: str | None = None  # the pin in constraints.txt
    pip_extras: str = ""  # the distribution's own extras a standalone install needs ("pt": neural-compressor[pt])
    via: str | None = None  # the distribution in `extra` that pulls this one in, when the extra does not list it
    note: str = ""  # said after the pip command
    install: str | None = None  # how to install it when there is no pip command to give

    @property
    def requirement(self) -> str:
        """What to pass to pip: 'neural-compressor[pt]==3.10'."""
        extras = f"[{self.pip_extras}]" if self.pip_extras else ""
        return f"{self.distribution}{extras}" + (f"=={self.version}" if self.version else "")


DEPENDENCIES: tuple[Dependency, ...] = (
    Dependency("torch", "torch", "training and inference", CORE, "2.13.0", note="the CPU build; keep the pin"),
    Dependency("transformers", "transformers", "models, Trainer", CORE, "5.5.4"),
    Dependency("peft", "peft", "LoRA adapters", CORE, "0.21.2"),
    Dependency("gguf", "gguf", "loading the embedded GGUF model", CORE, "0.19.0"),
    # pt: its PyTorch dependencies, which the quantize extra lists one by one (without torchao)
    Dependency("neural_compressor", "neural-compressor", "INT8/INT4 weight-only quantization", "quantize", "3.10",
               pip_extras="pt"),
    Dependency("auto_round", "auto-round", "AutoRound weight-only quantization", "quantize", "0.16.1"),
    Dependency("openvino", "openvino", "the fast CPU serving runtime", "quantize", "2026.4.1", via="optimum-intel"),
    Dependency("openvino_genai", "openvino-genai", "OpenVINO generation and continuous batching", "quantize",
               "2026.4.1.0"),
    Dependency("openvino_tokenizers", "openvino-tokenizers", "tokenizers converted to OpenVINO", "quantize",
               "2026.4.1.0", via="optimum-intel"),
    Dependency("optimum.intel", "optimum-intel", "exporting models to OpenVINO", "quantize", "2.2.0",
               pip_extras="openvino"),
    Dependency("sentencepiece", "sentencepiece", "SentencePiece vocabularies in llama.cpp's GGUF converter",
               "quantize", "0.2.3"),
    Dependency("onnx", "onnx", "the browser export (backend='web')", "web", "1.23.2"),
    Dependency("onnxscript", "onnxscript", "torch.onnx's exporter, for the browser export", "web", "0.7.2"),
    Dependency("onnxruntime", "onnxruntime", "quantizing and measuring the browser export", "web", "1.31.1"),
    Dependency("bitsandbytes", "bitsandbytes", "QLoRA / 4-bit loading (GPU path, slow on CPU)", "gpu", "0.50.2"),
    Dependency("oneccl_bindings_for_pytorch", "oneccl-bind-pt", "the oneCCL backend for multi-node training", None,
               install="see Intel's torch-ccl install guide"),
    Dependency("fastapi", "fastapi", "the OpenAI-compatible chat server", "serve", "0.165.0"),
    Dependency("uvicorn", "uvicorn", "the chat server's HTTP server", "serve", "0.54.0"),
    Dependency("lancedb", "lancedb", "the chatbot's retrieval plugin index", "rag", "0.40.0"),
    Dependency("pypdf", "pypdf", "reading PDF documents for the retrieval plugin", "rag", "7.1.0"),
    Dependency("phonenumbers", "phonenumbers", "redacting phone numbers in the data pipeline", "data", "9.0.43"),
    Dependency("datasketch", "datasketch", "near-duplicate removal (MinHash/LSH) in the data pipeline", "data",
               "2.0.0"),
    Dependency("py3langid", "py3langid", "the data pipeline's language filter", "data", "0.4.0"),
    Dependency("sacrebleu", "sacrebleu", "BLEU and chrF in evaluation", "eval", "2.6.0"),
    Dependency("rouge_score", "rouge-score", "ROUGE in evaluation", "eval", "0.1.2"),
    Dependency("jsonschema", "jsonschema", "checking JSON Schemas and extraction replies", "eval", "4.26.0"),
    Dependency("xgrammar", "xgrammar", "constrained decoding to a JSON schema or grammar", "eval", "0.2.8"),
    Dependency("matplotlib", "matplotlib", "the plots of the data pipeline and of evaluation", "data", "3.11.2"),
)
_BY_MODULE = {d.module: d for d in DEPENDENCIES}


def dependency(module: str) -> Dependency:
    """The table's entry for `module` or the nearest package above it ('neural_compressor.torch' -> INC)."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        found = _BY_MODULE.get(".".join(parts[:end]))
        if found is not None:
            return found
    raise KeyError(f"{module!r} is not in finetune.extras.DEPENDENCIES: add it there with its distribution and extra")


def install_hint(*modules: str) -> str:
    """The command that installs `modules`: 'pip install gguf==0.19.0', then the note or the extra that holds them."""
    deps = [dependency(m) for m in modules]
    custom = [d.install for d in deps if d.install]
    if custom:
        return "; ".join(custom)
    hint = "pip install " + " ".join(shlex.quote(d.requirement) for d in deps)
    notes = [d.note for d in deps if d.note]
    extras = list(dict.fromkeys(d.extra for d in deps if d.extra not in (None, CORE)))
    if notes:
        hint += f" ({'; '.join(notes)})"
    if extras:
        names = ",".join(extras)
        hint += f" (or the {names} extra: pip install {shlex.quote(f'{PROJECT}[{names}]')})"
    return hint


def require(module: str, needed_for: str | None = None) -> ModuleType:
    """Import `module` (dotted names too) and return it, or raise an ImportError that names what needs it and the
    pip command from install_hint. `needed_for` defaults to the table's purpose."""
    dep = dependency(module)
    try:
        __import__(module)  # through builtins.__import__, which tests replace to simulate a missing package
    except ImportError as err:
        raise ImportError(f"{needed_for or dep.purpose} needs {dep.distribution} ({err}). Install it with: "
                          f"{install_hint(module)}") from err
    return sys.modules[module]
