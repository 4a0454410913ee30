"""The folder a replica shares with its server: unit audio and images in, speech out.

Layout under ``<shared_dir>/<server>/``: ``in/`` holds what we write for the server to read
(a unit's 16 kHz WAV and frame, deleted once the server has read them; voice clips), ``out/`` is
the server's ``output_dir`` (its ``tts_wav/`` speech, ``llm_debug/`` and ``tts_txt/`` logs).
Paths handed to the server are spelt as the server sees the folder (``server_shared_dir``).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from omni.api import Frame
from omni.minicpmo.voice import write_wav

log = logging.getLogger(__name__)


def server_slug(url: str) -> str:
    """A folder name for a server URL: ``http://127.0.0.1:8081`` -> ``127.0.0.1-8081``."""
    parts = urlsplit(url)
    host = (parts.hostname or "server").replace(":", "_")
    return f"{host}-{parts.port or (443 if parts.scheme == 'https' else 80)}"


class ReplicaFiles:
    """One replica's part of the shared folder."""

    def __init__(self, shared_dir: str, server_shared_dir: str, url: str) -> None:
        root = Path(shared_dir).expanduser() if shared_dir else _default_root()
        slug = server_slug(url)
        self.root = root / slug
        self.in_dir = self.root / "in"
        self.out_dir = self.root / "out"
        self.speech_dir = self.out_dir / "tts_wav"
        base = server_shared_dir or str(root)
        self._server_root = f"{base.rstrip('/')}/{slug}"

    def server_path(self, local: Path) -> str:
        """``local`` (a path under this replica's folder) as the server spells it."""
        return f"{self._server_root}/{local.relative_to(self.root).as_posix()}"

    @property
    def server_out(self) -> str:
        return f"{self._server_root}/out"

    def prepare(self) -> None:
        """Create ``in/``; empty ``out/`` so that what the server writes there next is new."""
        self.in_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.out_dir, ignore_errors=True)

    def write_audio(self, name: str, audio: np.ndarray) -> Path:
        """A 16 kHz mono 16-bit WAV of ``audio`` (float32 in [-1, 1]) under ``in/``."""
        return write_wav(self.in_dir / name, np.asarray(audio, dtype=np.float32).reshape(-1))

    def write_image(self, stem: str, frame: Frame, image_format: str, quality: int) -> Path | None:
        """``frame`` as a JPEG or PNG under ``in/``; None without Pillow."""
        try:
            from PIL import Image
        except ImportError:
            log.warning("Pillow is not installed: camera frames are not sent to the model")
            return None
        rgb = np.ascontiguousarray(frame.rgb, dtype=np.uint8)
        image = Image.fromarray(rgb)
        if image_format == "png":
            path = self.in_dir / f"{stem}.png"
            image.save(path, format="PNG")
        else:
            path = self.in_dir / f"{stem}.jpg"
            image.save(path, format="JPEG", quality=quality)
        return path

    def clear_outputs(self) -> None:
        """Delete the files (not the folders: the server writes into them) under ``out/``."""
        for path in sorted(self.out_dir.rglob("*"), reverse=True):
            if path.is_file() or path.is_symlink():
                path.unlink(missing_ok=True)

    def clear_inputs(self, keep: tuple[Path, ...] = ()) -> None:
        for path in self.in_dir.glob("*"):
            if path.is_file() and path not in keep:
                path.unlink(missing_ok=True)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _default_root() -> Path:
    return Path(tempfile.gettempdir()) / "omnirtc-llamacpp"


def remove_quietly(*paths: Path | None) -> None:
    for path in paths:
        if path is not None:
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("cannot delete %s: %s", path, exc)
