"""The extraction page of a web artifact: the static files in quantize/page/ and the vendored transformers.js.

The page runs the model in the browser with transformers.js (WASM on every core, WebGPU where the browser has it),
decoding constrained to the extraction schema (page/constraint.js, mirrored by quantize.web_schema for checks).
transformers.js is installed from the npm registry at set-up time (scripts/vendor_web.sh) into quantize/page/vendor/
and served from the same origin: the page never reaches a CDN.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

PAGE_DIR = Path(__file__).resolve().parent / "page"
VENDOR_DIR = PAGE_DIR / "vendor"
VENDOR_FILES = ("transformers.min.js",)  # and the onnxruntime-web .wasm/.mjs files beside it


def vendor_ready() -> bool:
    return all((VENDOR_DIR / name).is_file() for name in VENDOR_FILES)


def write_page(dest: Path) -> Path:
    """Copy the page (and the vendored runtime) to `dest`; serve dest's parent (the artifact) and open page/."""
    shutil.copytree(PAGE_DIR, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns("vendor", "__pycache__"))
    if vendor_ready():
        shutil.copytree(VENDOR_DIR, dest / "vendor", dirs_exist_ok=True)
    else:
        logger.warning("transformers.js is not vendored (%s is missing): the page in %s cannot run until "
                       "scripts/vendor_web.sh installs it and the export runs again", VENDOR_DIR, dest)
    return dest
