"""The contract fake's unified flavour: MiniCPM-o's ``init_unified`` duplex (demo code).

What differs from ``FakeDuplex`` (see ``fake_minicpmo`` for the rest): ``prepare`` feeds the
prompt verbatim (prefix, voice, suffix); ``streaming_generate`` takes ``force_listen_override``
(closes an open turn, listens); ``</unit>`` is fed by ``finalize_unit()``, and a prefill before
it raises, as upstream's does; the break event is ignored by prefill and generate.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from tests.support.fake_minicpmo import FakeDuplex


class FakeUnifiedDuplex(FakeDuplex):
    """The unified build: force_listen_override, finalize_unit, and no break handling."""

    def prepare(
        self,
        prefix_system_prompt: str | None = None,
        ref_audio: NDArray[np.float32] | None = None,
        prompt_wav_path: str | None = None,
        context_previous_marker: str = "\n\nprevious: ",
        suffix_system_prompt: str | None = None,
        **kwargs: Any,
    ) -> str:
        self._needs_finalize = False
        super().prepare(
            prefix_system_prompt, ref_audio, prompt_wav_path, context_previous_marker,
            suffix_system_prompt=suffix_system_prompt, **kwargs,
        )  # fmt: skip
        # Verbatim: prefix + voice + suffix, no template of its own.
        return (prefix_system_prompt or "") + "[audio embedding]" + (suffix_system_prompt or "")

    @property
    def needs_finalize(self) -> bool:
        return getattr(self, "_needs_finalize", False)

    def streaming_prefill(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if self.needs_finalize:
            raise RuntimeError("streaming_prefill called before finalize_unit()")
        return super().streaming_prefill(*args, **kwargs)

    def streaming_generate(
        self, *args: Any, force_listen_override: bool = False, **kwargs: Any
    ) -> dict[str, Any]:
        if force_listen_override:
            kwargs["force_listen_override"] = True
        pending = self._pending
        result = super().streaming_generate(*args, **kwargs)
        self._needs_finalize = pending
        return result

    def finalize_unit(self) -> None:
        if self.needs_finalize:
            self.decoder.cache.append(-5)  # </unit>
            self._open_unit = False
            self._needs_finalize = False
            self.finalized += 1

    finalized = 0

    def _breaks(self) -> bool:
        return False

    def _close_unit(self) -> None:
        """</unit> waits for finalize_unit()."""
