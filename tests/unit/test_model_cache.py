"""Model files made once into the cache folder (``omni.lite.model_cache``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from omni.api import EngineUnavailable
from omni.lite.model_cache import build_once, cache_dir


def test_a_file_is_built_once_and_then_found(tmp_path: Path) -> None:
    builds: list[Path] = []

    def build(partial: Path) -> None:
        builds.append(partial)
        partial.write_text("model")

    target = tmp_path / "deep" / "model.bin"
    for _ in range(2):
        assert build_once(target, lambda p: p.read_text() == "model", build, "a model") == target
    assert target.read_text() == "model"
    assert len(builds) == 1 and builds[0] != target  # built under a private name
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.bin"]


def test_a_stale_file_is_rebuilt(tmp_path: Path) -> None:
    target = tmp_path / "model.bin"
    target.write_text("half")
    build_once(target, lambda p: p.read_text() == "whole", lambda p: p.write_text("whole"), "m")
    assert target.read_text() == "whole"


def test_a_failed_build_leaves_nothing_and_says_what_failed(tmp_path: Path) -> None:
    def build(partial: Path) -> None:
        partial.write_text("half a mod")
        raise ValueError("the chunk's checksum does not match")

    target = tmp_path / "model.bin"
    with pytest.raises(EngineUnavailable, match=r"could not make a model .*checksum"):
        build_once(target, lambda p: True, build, "a model")
    assert list(tmp_path.iterdir()) == []


def test_the_cache_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert cache_dir(str(tmp_path)) == tmp_path
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir("") == tmp_path / "xdg" / "omnirtc"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir("") == tmp_path / "home" / ".cache" / "omnirtc"
