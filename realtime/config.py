"""Settings of one call's media runtime (validated on construction, frozen)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from omni.api import require


@dataclass(frozen=True, slots=True)
class IceServer:
    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = None

    def __post_init__(self) -> None:
        require(len(self.urls) > 0, "urls must hold at least one url")
        for url in self.urls:
            require(
                url.startswith(("stun:", "turn:", "turns:")),
                f"urls must start with stun:, turn: or turns: (not {url!r})",
            )


@dataclass(frozen=True, slots=True)
class PeerConfig:
    ice_servers: tuple[IceServer, ...] = ()
    """STUN/TURN servers; none by default (host candidates only)."""
    host_addresses: tuple[str, ...] = ()
    """Addresses offered as host candidates; empty = every non-loopback interface
    (or 127.0.0.1 when the machine has no other)."""
    connect_timeout_s: float = 15.0
    udp_ports: tuple[int, ...] = ()
    """(low, high): the UDP ports ICE sockets bind to, e.g. to publish them from a
    container; empty = any free port."""
    announced_address: str = ""
    """Address put in the answer's host candidates instead of the one bound (a container's
    published address, a 1:1 NAT); empty = the bound addresses."""

    def __post_init__(self) -> None:
        require(self.connect_timeout_s > 0, "connect_timeout_s must be > 0")
        require(
            not self.udp_ports
            or (
                len(self.udp_ports) == 2 and 1024 <= self.udp_ports[0] <= self.udp_ports[1] <= 65535
            ),
            "udp_ports must be [] or [low, high] within 1024..65535",
        )
        if self.announced_address:
            try:
                ipaddress.ip_address(self.announced_address)
            except ValueError:
                raise ValueError(
                    f"announced_address must be an IP address, not {self.announced_address!r}"
                ) from None

    @property
    def port_range(self) -> tuple[int, int] | None:
        return (self.udp_ports[0], self.udp_ports[1]) if self.udp_ports else None


@dataclass(frozen=True, slots=True)
class VadConfig:
    aggressiveness: int = 2
    """WebRTC VAD mode, 0 (least) to 3 (most aggressive at calling audio non-speech)."""
    start_ms: int = 200
    """Voiced audio needed (within a 300 ms window) before speech counts as started."""
    stop_ms: int = 600
    """Unvoiced audio after which speech counts as stopped."""

    def __post_init__(self) -> None:
        require(0 <= self.aggressiveness <= 3, "aggressiveness must be 0..3")
        require(20 <= self.start_ms <= 300, "start_ms must be 20..300")
        require(20 <= self.stop_ms <= 5000, "stop_ms must be 20..5000")


@dataclass(frozen=True, slots=True)
class CallConfig:
    idle_timeout_s: float = 10.0
    """End a call that sent no media and no data-channel message for this long."""
    unit_grace_ms: int = 150
    """How long past a unit's due time the loop waits for late audio before
    filling the rest with silence."""
    max_pending_units: int = 2
    """Units waiting for a busy engine; past this the oldest waiting unit is dropped."""
    playout_max_ms: int = 4000
    """Speech buffered for playout at most; the engine waits when it is full."""
    outbound_max_lag_ms: int = 80
    """When the sender falls further behind its schedule than this, it skips ahead
    and drops the stale speech instead of bursting."""
    video_frames_per_unit: int = 1
    """Frames sampled from each second of video (0 ignores video)."""
    barge_in_ms: int = 400
    """Speech over the service's own for this long interrupts it."""
    max_duration_s: float = 0.0
    """Hard limit on a call's length (0 = none)."""
    step_timeout_s: float = 15.0
    """A step still running after this long is hung: the call ends (``engine_timeout``) and
    its replica is rebuilt on a fresh thread."""
    max_engine_errors: int = 3
    """Failed steps in a row (raised, or a malformed result) that end the call
    (``engine_error``); its replica is then rebuilt."""
    early_pause_ms: int = 64
    """Sub-unit turn ends: once the person has paused this long (20 ms VAD frames), and
    until the pause is 3 s long or the service speaks, an engine that can (``EarlySession``)
    hears the unit so far, so it may answer before the unit is complete."""
    early_every_ms: int = 40
    """How often, in media time, it hears the unit so far during such a pause; 0 = never
    (engines then hear whole units only)."""
    vad: VadConfig = field(default_factory=VadConfig)

    def __post_init__(self) -> None:
        require(self.idle_timeout_s > 0, "idle_timeout_s must be > 0")
        require(20 <= self.early_pause_ms <= 2000, "early_pause_ms must be 20..2000")
        require(0 <= self.early_every_ms <= 1000, "early_every_ms must be 0..1000")
        require(0 <= self.unit_grace_ms <= 2000, "unit_grace_ms must be 0..2000")
        require(1 <= self.max_pending_units <= 10, "max_pending_units must be 1..10")
        require(200 <= self.playout_max_ms <= 60_000, "playout_max_ms must be 200..60000")
        require(20 <= self.outbound_max_lag_ms <= 2000, "outbound_max_lag_ms must be 20..2000")
        require(0 <= self.video_frames_per_unit <= 10, "video_frames_per_unit must be 0..10")
        require(self.barge_in_ms >= 0, "barge_in_ms must be >= 0")
        require(self.max_duration_s >= 0, "max_duration_s must be >= 0")
        require(0.5 <= self.step_timeout_s <= 600, "step_timeout_s must be 0.5..600")
        require(1 <= self.max_engine_errors <= 100, "max_engine_errors must be 1..100")
