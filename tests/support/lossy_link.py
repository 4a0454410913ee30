"""A lossy network path between a test's caller and the server: a UDP relay with loss, jitter
and outages.

This kernel has no ``sch_netem`` (``tc qdisc add ... netem`` answers "Specified qdisc kind is
unknown"), so a veth pair cannot be made lossy with ``tc``.  Instead every packet of the call
(ICE checks, DTLS, RTP, RTCP, SCTP) goes through this relay, which drops, delays and reorders
them the way netem does: each packet is lost with probability ``loss``; each is held
``delay`` ± ``jitter`` (uniform, independent per packet, so packets overtake each other as
with netem's jitter); an outage drops everything for its duration.  Seeded, so a run repeats.

The relay sits in the path by SDP: ``wrap_offer`` puts it in place of the caller's candidates
(the server's packets then go to the relay, which sends them on from a socket of its own) and
``wrap_answer`` in place of the server's.  Each side only ever sees the relay's addresses
(peer-reflexive candidates, as behind a NAT).  Packets travel on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import socket
from dataclasses import dataclass

_CANDIDATE = re.compile(r"^(a=candidate:\S+ \d+ udp \d+ )(\S+) (\d+)( typ .*)$", re.I)

Address = tuple[str, int]


@dataclass
class Impairment:
    loss: float = 0.0
    """Probability that a packet is dropped."""
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    """Each packet's delay is ``delay_ms`` ± up to this (uniform)."""


@dataclass
class Direction:
    """Counts for one direction of the path."""

    passed: int = 0
    dropped: int = 0
    dropped_in_outage: int = 0


def _bound() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


class LossyLink:
    """Relays one call's packets between a caller and a server, impaired in both directions."""

    def __init__(self, seed: int = 0) -> None:
        self.impairment = Impairment()
        self.up = Direction()
        """Caller to server."""
        self.down = Direction()
        self._random = random.Random(seed)
        self._outage_until = 0.0
        self._loop = asyncio.get_running_loop()
        self._sockets: list[socket.socket] = []
        self._pending: set[asyncio.TimerHandle] = set()
        self._relayed: dict[Address, Address] = {}

    def impair(self, impairment: Impairment) -> None:
        self.impairment = impairment

    def outage(self, seconds: float) -> None:
        """Drop every packet, both ways, for ``seconds`` from now."""
        self._outage_until = self._loop.time() + seconds

    def wrap_offer(self, sdp: str) -> str:
        """The caller's offer with the relay in place of each of its candidates."""
        return self._wrap(sdp, towards_caller=True)

    def wrap_answer(self, sdp: str) -> str:
        """The server's answer with the relay in place of each of its candidates."""
        return self._wrap(sdp, towards_caller=False)

    def _wrap(self, sdp: str, towards_caller: bool) -> str:
        lines = sdp.split("\r\n")
        for i, line in enumerate(lines):
            match = _CANDIDATE.match(line)
            if match is None or ":" in match.group(2):
                continue
            target = (match.group(2), int(match.group(3)))
            if target not in self._relayed:
                self._relayed[target] = self._leg(target, towards_caller)
            host, port = self._relayed[target]
            lines[i] = f"{match.group(1)}{host} {port}{match.group(4)}"
        return "\r\n".join(lines)

    def _leg(self, target: Address, towards_caller: bool) -> Address:
        """A listening socket that relays to ``target``; each sender gets its own upstream
        socket, whose replies go back to that sender from the listening socket."""
        forward = self.down if towards_caller else self.up
        backward = self.up if towards_caller else self.down
        listening = self._open()
        upstream: dict[Address, socket.socket] = {}

        def from_sender() -> None:
            for data, sender in _drain(listening):
                sock = upstream.get(sender)
                if sock is None:
                    sock = upstream[sender] = self._open()
                    self._loop.add_reader(sock.fileno(), from_target, sock, sender)
                self._send(sock, data, target, forward)

        def from_target(sock: socket.socket, sender: Address) -> None:
            for data, _ in _drain(sock):
                self._send(listening, data, sender, backward)

        self._loop.add_reader(listening.fileno(), from_sender)
        host, port = listening.getsockname()[:2]
        return str(host), int(port)

    def _open(self) -> socket.socket:
        sock = _bound()
        self._sockets.append(sock)
        return sock

    def _send(self, sock: socket.socket, data: bytes, to: Address, counts: Direction) -> None:
        if self._loop.time() < self._outage_until:
            counts.dropped += 1
            counts.dropped_in_outage += 1
            return
        imp = self.impairment
        if imp.loss and self._random.random() < imp.loss:
            counts.dropped += 1
            return
        counts.passed += 1
        delay = imp.delay_ms + self._random.uniform(-imp.jitter_ms, imp.jitter_ms)
        if delay <= 0:
            _sendto(sock, data, to)
            return

        def later() -> None:
            self._pending.discard(handle)
            _sendto(sock, data, to)

        handle = self._loop.call_later(delay / 1000, later)
        self._pending.add(handle)

    def close(self) -> None:
        for handle in self._pending:
            handle.cancel()
        self._pending.clear()
        for sock in self._sockets:
            self._loop.remove_reader(sock.fileno())
            sock.close()
        self._sockets.clear()


def _drain(sock: socket.socket) -> list[tuple[bytes, Address]]:
    got = []
    while True:
        try:
            data, addr = sock.recvfrom(65536)
        except (BlockingIOError, InterruptedError):
            return got
        except OSError:  # ICMP port unreachable from an earlier send, or closed
            return got
        got.append((data, (str(addr[0]), int(addr[1]))))


def _sendto(sock: socket.socket, data: bytes, to: Address) -> None:
    if sock.fileno() < 0:
        return
    with contextlib.suppress(OSError):  # a full or closed socket: lost, as on a network
        sock.sendto(data, to)
