"""A faster memory allocator for training on the CPU (tcmalloc, else jemalloc), preloaded by re-executing.

Padding-free batches change every tensor's size at every step. glibc's malloc then fragments: measured here
(SmolLM2-135M LoRA, chats of varied length, 2 cores, 40 steps) resident memory grew from 2.9 to 4.5 GB while
the same batch repeated stayed flat, and the step ran at 482 useful tok/s. With tcmalloc preloaded: 631 tok/s
(1.31x); jemalloc: 533 tok/s and the least resident memory. Intel's PyTorch launcher did the same. An allocator
can only be swapped before the process starts, so `python -m finetune` re-executes itself once with LD_PRELOAD;
Python callers of `finetune_model` set LD_PRELOAD themselves (`python -m finetune doctor` prints the line).

NEURALCHAT_ALLOCATOR=system keeps glibc; =tcmalloc or =jemalloc picks one.
"""

from __future__ import annotations

import glob
import os
import sys

CANDIDATES = {
    "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4"),
    "jemalloc": ("libjemalloc.so.2", "libjemalloc.so"),
}
SEARCH_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib",
               os.path.join(sys.prefix, "lib"))
_MARK = "NEURALCHAT_ALLOCATOR_REEXEC"


def find_allocator(choice: str | None = None) -> str | None:
    """Path of the preferred allocator library on this machine, or None (also for choice "system")."""
    choice = (choice or os.environ.get("NEURALCHAT_ALLOCATOR") or "auto").lower()
    if choice == "system":
        return None
    if choice not in ("auto", *CANDIDATES):
        raise ValueError(f"NEURALCHAT_ALLOCATOR={choice!r}: use auto, tcmalloc, jemalloc or system")
    names = [n for kind, libs in CANDIDATES.items() if choice in ("auto", kind) for n in libs]
    for name in names:
        for folder in SEARCH_DIRS:
            hits = glob.glob(os.path.join(folder, name))
            if hits:
                return hits[0]
    return None


def loaded_allocator() -> str | None:
    """"tcmalloc" or "jemalloc" if this process runs on one, else None."""
    try:
        with open("/proc/self/maps") as maps:
            text = maps.read()
    except OSError:
        return None
    return next((kind for kind in CANDIDATES if kind in text), None)


def allocator_env(env: dict | None = None) -> dict:
    """`env` (default os.environ) with the allocator preloaded, for a child process; unchanged if none is found."""
    env = dict(os.environ if env is None else env)
    path = find_allocator(env.get("NEURALCHAT_ALLOCATOR"))
    if path and path not in env.get("LD_PRELOAD", ""):
        env["LD_PRELOAD"] = ":".join(p for p in (path, env.get("LD_PRELOAD")) if p)
    return env


def reexec_with_allocator(module: str, argv: list[str]) -> None:
    """Replace this process by `python -m module argv...` with the allocator preloaded, once; no-op otherwise."""
    if not sys.platform.startswith("linux") or os.environ.get(_MARK) or loaded_allocator():
        return
    env = allocator_env()
    if env.get("LD_PRELOAD") == os.environ.get("LD_PRELOAD"):
        return
    env[_MARK] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", module, *argv], env)
