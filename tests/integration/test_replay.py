"""`omnirtc replay` end to end with the echo engine, on a generated video with an audio track."""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from tests.support.media import silence, speechlike

ROOT = Path(__file__).resolve().parents[2]
RATE = 48_000


def make_video(path: Path, audio: np.ndarray, fps: int = 10) -> None:
    seconds = audio.size / RATE
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = 160, 120, "yuv420p"
        sound = out.add_stream("aac", rate=RATE, layout="mono")
        for i in range(int(seconds * fps)):
            image = np.zeros((120, 160, 3), np.uint8)
            image[:, :, i // fps % 3] = 200
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode(None):
            out.mux(packet)
        for offset in range(0, audio.size, 1024):
            chunk = audio[offset : offset + 1024].reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(chunk), format="flt", layout="mono"
            )
            frame.sample_rate = RATE
            frame.pts = offset
            frame.time_base = Fraction(1, RATE)
            for packet in sound.encode(frame):
                out.mux(packet)
        for packet in sound.encode(None):
            out.mux(packet)


def replay(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "signaling", "replay", *args, "--engine", "echo"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("replay") / "input.mp4"
    audio = np.concatenate([silence(1.0), speechlike(2.0, seed=5), silence(5.0)])
    make_video(path, audio)
    return path


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_replay_a_video_through_the_echo_engine(
    recording: Path, tmp_path: Path, suffix: str
) -> None:
    output = tmp_path / f"out{suffix}"
    done = replay(str(recording), "-o", str(output))
    assert done.returncode == 0, done.stderr
    log = json.loads(output.with_suffix(".json").read_text())
    units = log["units"]
    assert len(units) == 8
    assert [u["index"] for u in units] == list(range(8))
    assert all(u["frames"] == 1 for u in units), "one frame per unit by default"
    speaking = [u for u in units if u["state"] == "speak"]
    assert speaking, "the echo engine said the utterance back"
    assert speaking[0]["text"].startswith("[echo 2.")
    assert log["summary"]["speech_ms"] > 1500
    assert "[echo 2." in output.with_suffix(".srt").read_text()
    with av.open(str(output)) as container:
        kinds = sorted(s.type for s in container.streams)
        assert kinds == ["audio", "subtitle", "video"]
        cues = [bytes(p) for p in container.demux(container.streams.subtitles[0]) if p.size]
        assert any(b"[echo" in cue for cue in cues)
    with av.open(str(output)) as container:
        mixed = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
        rate = container.streams.audio[0].rate
    at = speaking[0]["speech_at_ms"] / 1000
    echo = mixed[int(at * rate) : int((at + 1.5) * rate)]
    before = mixed[int(0.1 * rate) : int(0.9 * rate)]
    assert np.sqrt(np.mean(echo**2)) > 5 * np.sqrt(np.mean(before**2)) + 0.01


def test_replay_to_a_wav(recording: Path, tmp_path: Path) -> None:
    output = tmp_path / "out.wav"
    done = replay(str(recording), "-o", str(output))
    assert done.returncode == 0, done.stderr
    with av.open(str(output)) as container:
        assert [s.type for s in container.streams] == ["audio"]
        assert container.streams.audio[0].rate == 24_000
    assert output.with_suffix(".json").is_file()


def test_replay_explains_bad_input(tmp_path: Path) -> None:
    missing = replay(str(tmp_path / "nope.mp4"), "-o", str(tmp_path / "x.wav"))
    assert missing.returncode == 1
    assert "cannot open" in missing.stderr
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    bad = replay(str(text), "-o", str(tmp_path / "x.wav"))
    assert bad.returncode == 1
    assert "replay failed" in bad.stderr
