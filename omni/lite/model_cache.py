"""Model files the lite engine makes once from what its packages ship, and keeps in a cache
folder: Gemma's GGUF joined from its chunk packages, Moonshine's graphs turned into ONNX.

Each file is built under a private name and moved into place at once, so a replica or a
recognizer process starting at the same moment never reads half a file; two that race both
build it and the last move wins (the files are the same)."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

from omni.errors import EngineUnavailable

_building = threading.Lock()


def cache_dir(configured: str) -> Path:
    """The folder for omnirtc's own model files: ``configured``, or else
    ``$XDG_CACHE_HOME/omnirtc`` (``~/.cache/omnirtc``)."""
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "omnirtc"


def build_once(
    target: Path, ready: Callable[[Path], bool], build: Callable[[Path], None], what: str
) -> Path:
    """``target``, built by ``build(private_path)`` unless ``ready(target)`` already holds.

    A build that fails leaves nothing behind and raises :class:`EngineUnavailable`."""
    with _building:
        if target.is_file() and ready(target):
            return target
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            build(partial)
            os.replace(partial, target)
        except (OSError, ValueError) as exc:
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
            raise EngineUnavailable(f"could not make {what} ({target}): {exc}") from None
    return target
