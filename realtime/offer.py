"""The offer as we take it, and the answer shaped to match what was offered.

A call has one voice (audio, required) and at most one camera (video) and one ``events``
data channel.  Every other section of an offer is rejected the standard way (RFC 3264: the
answer keeps the section, with port 0) and the call goes on:

* a video section whose codecs we cannot decode (only H265 or AV1, say), extra audio or video
  sections, sections the offerer disabled (port 0, unless marked ``bundle-only``: RFC 8843 offers
  those with port 0 to be used on the bundle's transport) and kinds we do not speak;
* an offer without a usable audio section is refused (``UnsupportedMedia``).

aiortc is given the offer without the rejected sections, and with at most
``MAX_CANDIDATES`` remote candidates per section (aioice pairs and checks each one: hundreds
hold the event loop).  Its answer always bundles every section; ours bundles exactly what
the offer bundled (RFC 8843: an answer never adds a BUNDLE group), so a client that offered
separate transports (GStreamer's webrtcbin by default) gets them.

Decisions about codecs are aiortc's own (``find_common_codecs``), so what we accept is what
aiortc then negotiates.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from aiortc import sdp as aiortc_sdp
from aiortc.codecs import CODECS
from aiortc.rtcpeerconnection import find_common_codecs

from realtime.errors import InvalidOffer, UnsupportedMedia

log = logging.getLogger(__name__)

MAX_SDP_BYTES = 64 * 1024
MAX_CANDIDATES = 16
"""Remote ICE candidates kept per section (highest priority first); a browser offers a few."""

_MEDIA_LINE = re.compile(r"^m=(\S+) (\d+)(?:/\d+)? (\S+)(?: (.*))?$")
_RTPMAP = re.compile(r"^a=rtpmap:\d+ ([^/\s]+)/")
_CANDIDATE_PRIORITY = re.compile(r"^a=candidate:\S+ \d+ \S+ (\d+) ")
_BUNDLE = "a=group:BUNDLE"
_OPUS_RTPMAP = re.compile(r"^a=rtpmap:(\d+) opus/", re.I)


@dataclass(frozen=True, slots=True)
class Rejected:
    """A section of the offer that the answer rejects (port 0)."""

    index: int
    """Its position among the offer's sections."""
    kind: str
    proto: str
    fmt: str
    mid: str | None
    reason: str

    def answer_lines(self) -> list[str]:
        lines = [f"m={self.kind} 0 {self.proto} {self.fmt}", "c=IN IP4 0.0.0.0"]
        if self.mid is not None:
            lines.append(f"a=mid:{self.mid}")
        return lines


@dataclass(frozen=True, slots=True)
class Offer:
    """An offer ready for aiortc, and what the answer must mirror."""

    sdp: str
    """What aiortc is given: rejected sections and excess candidates removed."""
    rejected: tuple[Rejected, ...]
    bundle: tuple[str, ...] | None
    """The mids the offer bundles that we accept (None: the offer bundles nothing)."""
    dropped_candidates: int
    has_video: bool
    opus_fec: bool = False
    """The audio section's Opus asks for in-band FEC (``useinbandfec=1``, RFC 7587)."""


@dataclass(slots=True)
class _Section:
    kind: str
    port: int
    proto: str
    fmt: str
    lines: list[str]

    @property
    def mid(self) -> str | None:
        for line in self.lines:
            if line.startswith("a=mid:"):
                return line[6:].strip()
        return None

    def codec_names(self) -> list[str]:
        return [m.group(1).lower() for line in self.lines if (m := _RTPMAP.match(line))]


def _split(sdp: str) -> tuple[list[str], list[_Section]]:
    if len(sdp) > MAX_SDP_BYTES:
        raise InvalidOffer(f"the SDP is larger than {MAX_SDP_BYTES} bytes")
    lines = [line for line in sdp.replace("\r\n", "\n").split("\n") if line]
    if not lines or not lines[0].startswith("v=0"):
        raise InvalidOffer("the SDP must start with 'v=0'")
    session: list[str] = []
    sections: list[_Section] = []
    for line in lines:
        if line.startswith("m="):
            media = _MEDIA_LINE.match(line)
            if media is None:
                raise InvalidOffer(f"unreadable media line {line[:80]!r}")
            kind, port, proto, fmt = media.groups()
            sections.append(_Section(kind, int(port), proto, fmt or "", [line]))
        elif sections:
            sections[-1].lines.append(line)
        else:
            session.append(line)
    return session, sections


def _cap_candidates(section: _Section) -> int:
    """Keep the section's ``MAX_CANDIDATES`` highest-priority candidates; returns how many
    were dropped."""
    found = [
        (int(m.group(1)), i)
        for i, line in enumerate(section.lines)
        if (m := _CANDIDATE_PRIORITY.match(line))
    ]
    excess = len(found) - MAX_CANDIDATES
    if excess <= 0:
        return 0
    dropped = {i for _, i in sorted(found, reverse=True)[MAX_CANDIDATES:]}
    section.lines = [line for i, line in enumerate(section.lines) if i not in dropped]
    return excess


def _opus_fec(section: _Section) -> bool:
    """Whether the section's Opus format says ``useinbandfec=1`` in its fmtp."""
    types = {m.group(1) for line in section.lines if (m := _OPUS_RTPMAP.match(line))}
    for line in section.lines:
        head, _, params = line.partition(" ")
        if head.startswith("a=fmtp:") and head[7:] in types:
            fields = dict(p.strip().partition("=")[::2] for p in params.split(";"))
            if fields.get("useinbandfec", "").strip() == "1":
                return True
    return False


def _decodable(section: _Section) -> bool:
    """Whether aiortc has a codec in common with this audio or video section."""
    text = "\r\n".join(["v=0", "o=- 0 0 IN IP4 0.0.0.0", "s=-", "t=0 0", *section.lines]) + "\r\n"
    try:
        media = aiortc_sdp.SessionDescription.parse(text).media[0]
    except Exception as exc:
        raise InvalidOffer(f"the {section.kind} section cannot be read: {exc}") from None
    return bool(find_common_codecs(CODECS[section.kind], media.rtp.codecs))


def _verdict(section: _Section, taken: set[str]) -> str | None:
    """Why the section is rejected, or None to take it."""
    if section.port == 0 and "a=bundle-only" not in section.lines:
        return "the offer disabled it"
    if section.kind in ("audio", "video"):
        if section.kind in taken:
            return f"a call takes one {section.kind} section"
        if not _decodable(section):
            names = ", ".join(dict.fromkeys(section.codec_names())) or "none"
            return f"no {section.kind} codec we can decode (offered: {names})"
        return None
    if section.kind == "application":
        if "application" in taken:
            return "a call takes one data channel section"
        if "SCTP" not in section.proto.upper():
            return f"not a data channel ({section.proto})"
        return None
    return f"unsupported media kind {section.kind!r}"


def read_offer(sdp: str) -> Offer:
    """Check the offer and decide what to take; raises InvalidOffer or UnsupportedMedia."""
    session, sections = _split(sdp)
    if not any(s.kind == "audio" for s in sections):
        raise UnsupportedMedia("the offer has no audio section")
    taken: set[str] = set()
    rejected: list[Rejected] = []
    kept: list[_Section] = []
    dropped = 0
    for index, section in enumerate(sections):
        dropped += _cap_candidates(section)
        reason = _verdict(section, taken)
        if reason is None:
            taken.add(section.kind)
            kept.append(section)
            continue
        fmt = section.fmt.split(" ")[0] if section.fmt else "0"
        rejected.append(Rejected(index, section.kind, section.proto, fmt, section.mid, reason))
        log.info("offer: %s section %s rejected: %s", section.kind, section.mid, reason)
    if "audio" not in taken:
        offered = sorted({c for s in sections if s.kind == "audio" for c in s.codec_names()})
        supported = sorted({c.mimeType.split("/")[1].lower() for c in CODECS["audio"]})
        raise UnsupportedMedia(
            f"no supported audio codec offered ({', '.join(offered) or 'none'}); "
            f"supported: {', '.join(supported)}"
        )
    kept_mids = {s.mid for s in kept}
    bundle: tuple[str, ...] | None = None
    session_out = []
    for line in session:
        if line.startswith(_BUNDLE):
            bundle = tuple(m for m in line[len(_BUNDLE) :].split() if m in kept_mids) or None
            if bundle:
                session_out.append(f"{_BUNDLE} {' '.join(bundle)}")
        else:
            session_out.append(line)
    if dropped:
        log.info(
            "offer: %d remote candidates beyond %d per section dropped", dropped, MAX_CANDIDATES
        )
    lines = session_out + [line for s in kept for line in s.lines]
    return Offer(
        sdp="\r\n".join(lines) + "\r\n",
        rejected=tuple(rejected),
        bundle=bundle,
        dropped_candidates=dropped,
        has_video="video" in taken,
        opus_fec=any(s.kind == "audio" and _opus_fec(s) for s in kept),
    )


def bundle_as_offered(answer_sdp: str, offer: Offer) -> str:
    """aiortc's answer with the BUNDLE group the offer asked for (or none)."""
    session, sections = _split(answer_sdp)
    session = [line for line in session if not line.startswith(_BUNDLE)]
    if offer.bundle:
        session.append(f"{_BUNDLE} {' '.join(offer.bundle)}")
    return _join(session, [s.lines for s in sections])


def with_rejected(answer_sdp: str, offer: Offer) -> str:
    """The answer with every rejected section put back in its place, port 0 (RFC 3264)."""
    session, sections = _split(answer_sdp)
    out = [s.lines for s in sections]
    for rejected in sorted(offer.rejected, key=lambda r: r.index):
        out.insert(rejected.index, rejected.answer_lines())
    return _join(session, out)


def _join(session: list[str], sections: list[list[str]]) -> str:
    return "\r\n".join(session + [line for lines in sections for line in lines]) + "\r\n"


_HOST_CANDIDATE = re.compile(r"^(a=candidate:\S+ \d+ udp \d+ )(\S+)( \d+ typ host.*)$", re.I)


def announce(answer_sdp: str, address: str) -> str:
    """The answer with ``address`` in place of the bound address of every host candidate and
    connection line: what a client behind the container's port mapping or the 1:1 NAT must
    send to.  Server-reflexive and relay candidates are left as they are."""
    family = "IP6" if ":" in address else "IP4"

    def announced(line: str) -> str:
        host = _HOST_CANDIDATE.match(line)
        if host:
            return f"{host.group(1)}{address}{host.group(3)}"
        if line.startswith("c=IN ") and not line.endswith(" 0.0.0.0"):
            return f"c=IN {family} {address}"
        return line

    return "\r\n".join(announced(line) for line in answer_sdp.split("\r\n"))
