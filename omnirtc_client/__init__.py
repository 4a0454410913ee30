"""A Python client for omnirtc calls (aiortc), for robots, kiosks and scripts.

    async with OmniClient("http://server:8080", token=KEY) as call:
        await call.start(audio=file_audio("question.wav"))
        async for event in call.events():
            ...

``omnirtc call URL --wav q.wav --out a.wav`` is the same from the command line.
"""

from omnirtc_client.client import CallEnded, ClientError, OmniClient
from omnirtc_client.media import AudioFile, file_audio, microphone

__all__ = ["AudioFile", "CallEnded", "ClientError", "OmniClient", "file_audio", "microphone"]
