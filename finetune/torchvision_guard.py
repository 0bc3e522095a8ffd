"""Hide a torchvision that was built for another torch, so transformers and optimum-intel load beside the CPU torch.

optimum-intel requires torchvision, and pip takes it from PyPI, whose Linux wheels are CUDA builds
(`0.28.0+cu130`). Beside the CPU torch (`2.13.0+cpu`) its operators do not register, and importing it raises
"operator torchvision::nms does not exist". transformers imports torchvision whenever it is installed (its image
utilities do, on the way to OVModelForCausalLM), so one such wheel breaks OpenVINO export and serving. Nothing here
uses vision models: a mismatched torchvision is marked absent (`sys.modules[...] = None`, which
`importlib.util.find_spec` reports as not installed) before transformers looks for it. A matching torchvision
(both CPU, or both CUDA builds) is left alone.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

hidden: str | None = None  # why torchvision was hidden in this process, for the doctor; None when it was not


def _local_tag(text: str | None) -> str | None:
    """'cpu' for '2.13.0+cpu', 'cu130' for '0.28.0+cu130', None for a plain '2.13.0' (PyPI's CUDA torch)."""
    tag = (text or "").partition("+")[2]
    return tag or None


def _torchvision_build() -> str | None:
    """torchvision's full version, local tag included, read from its version.py without importing it (importing
    it is what fails). The dist-info version drops the tag."""
    try:
        spec = importlib.util.find_spec("torchvision")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    version_file = Path(list(spec.submodule_search_locations)[0]) / "version.py"
    match = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", version_file.read_text()) if version_file.is_file() else None
    return match.group(1) if match else None


def torchvision_mismatch() -> str | None:
    """Why the installed torchvision cannot load beside the installed torch, or None when it can (or is absent)."""
    try:
        torch_version = version("torch")
    except PackageNotFoundError:
        return None
    vision = _torchvision_build()
    if vision is None or _local_tag(torch_version) != "cpu" or _local_tag(vision) == "cpu":
        return None
    return (f"torchvision {vision} is a build for a CUDA torch; this torch is {torch_version}, so its operators "
            f"cannot register. It is hidden from transformers (nothing here uses it).")


def hide_mismatched_torchvision() -> str | None:
    """Mark a mismatched torchvision as not installed; returns the reason, or None when nothing was hidden."""
    global hidden
    if "torchvision" not in sys.modules:  # else already imported (so it loaded) or already hidden
        hidden = torchvision_mismatch()
        if hidden:
            sys.modules["torchvision"] = None
    return hidden
