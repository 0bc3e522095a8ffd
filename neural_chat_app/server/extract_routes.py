"""The extraction page at /extract: the browser runs a web artifact (python -m quantize --backend web) itself.

    /extract                        -> the page of the first web artifact in model_dirs
    /extract/<artifact>/page/...    the page (quantize/page/, with the vendored transformers.js)
    /extract/<artifact>/...         the artifact's files (config.json, onnx/model_q4.onnx, tokenizer.json, ...)
Every response carries the cross-origin isolation headers, so that onnxruntime-web runs on every core. The routes are
public like the chat page: the browser's model fetches carry no API key, and the files are only the model's.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse

from neural_chat_app.server.state import get_state
from quantize.artifacts import QUANTIZATION_METADATA_FILE, list_artifacts
from quantize.web_page import ISOLATION_HEADERS, PAGE_DATA_FILE, PAGE_DIR, page_data, vendor_ready

router = APIRouter()
NONE_FOUND = (
    "<!doctype html><title>No web artifact</title><p>No web artifact in the server's model_dirs ({dirs}). Export one "
    "with <code>python -m quantize --config configs/quantize_web_extraction.yaml --output-dir DIR</code> and start "
    "the server with DIR in model_dirs.</p>"
)


def web_artifacts(request: Request) -> dict[str, Path]:
    """Name -> folder of each web artifact in the server's model_dirs (default: the quantize output cache)."""
    import json

    from neural_chat_app.registry import default_model_dirs

    settings = get_state(request).settings
    listed = settings.model_dirs if settings.model_dirs is not None else default_model_dirs()
    dirs = [Path(d).expanduser() for d in listed]
    found = {}
    for folder in (d for d in dirs if d.is_dir()):
        for artifact in list_artifacts(folder):
            if json.loads((artifact / QUANTIZATION_METADATA_FILE).read_text()).get("backend") == "web":
                found.setdefault(artifact.name, artifact)
    return found


def _file(root: Path, relative: str) -> FileResponse:
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()) or not path.is_file():
        return HTMLResponse(f"not found: {relative}", status_code=404, headers=ISOLATION_HEADERS)
    return FileResponse(path, headers=ISOLATION_HEADERS)


@router.get("/extract", include_in_schema=False)
async def extract_index(request: Request):
    artifacts = web_artifacts(request)
    if not artifacts:
        dirs = get_state(request).settings.model_dirs or "the default quantize output folder"
        return HTMLResponse(NONE_FOUND.format(dirs=dirs), status_code=404)
    return RedirectResponse(f"/extract/{next(iter(artifacts))}/page/")


@router.get("/extract/{name}/page/{path:path}", include_in_schema=False)
async def extract_page(request: Request, name: str, path: str):
    if name not in web_artifacts(request):
        return HTMLResponse(f"no web artifact named {name!r}", status_code=404)
    if path == PAGE_DATA_FILE:
        return JSONResponse(page_data(), headers=ISOLATION_HEADERS)
    if path.startswith("vendor/") and not vendor_ready():
        return HTMLResponse("transformers.js is not vendored: run scripts/vendor_web.sh", status_code=503)
    return _file(PAGE_DIR, path or "index.html")


@router.get("/extract/{name}/{path:path}", include_in_schema=False)
async def extract_model_file(request: Request, name: str, path: str):
    artifact = web_artifacts(request).get(name)
    if artifact is None:
        return HTMLResponse(f"no web artifact named {name!r}", status_code=404)
    return _file(artifact, path)
