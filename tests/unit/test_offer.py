"""What the server takes from an offer, and how its answer mirrors it (realtime.offer)."""

from __future__ import annotations

import pytest

from realtime.errors import InvalidOffer, UnsupportedMedia
from realtime.offer import (
    MAX_CANDIDATES,
    announce,
    bundle_as_offered,
    read_offer,
    with_rejected,
)

_ICE = ["a=ice-ufrag:abcd", "a=ice-pwd:0123456789abcdef0123456789", "a=setup:actpass"]


def _sdp(*sections: list[str], bundle: str | None = "0 1 2") -> str:
    head = ["v=0", "o=- 1 1 IN IP4 0.0.0.0", "s=-", "t=0 0"]
    if bundle is not None:
        head.append(f"a=group:BUNDLE {bundle}")
    return "\r\n".join(head + [line for s in sections for line in s]) + "\r\n"


def _audio(mid: str, port: int = 9, codec: str = "opus/48000/2") -> list[str]:
    return [f"m=audio {port} UDP/TLS/RTP/SAVPF 111", f"a=mid:{mid}", f"a=rtpmap:111 {codec}", *_ICE]


def _video(mid: str, codec: str = "VP8/90000") -> list[str]:
    return ["m=video 9 UDP/TLS/RTP/SAVPF 96", f"a=mid:{mid}", f"a=rtpmap:96 {codec}", *_ICE]


def _data(mid: str) -> list[str]:
    return ["m=application 9 UDP/DTLS/SCTP webrtc-datachannel", f"a=mid:{mid}", *_ICE]


def test_audio_video_and_data_are_taken() -> None:
    offer = read_offer(_sdp(_audio("0"), _video("1"), _data("2")))
    assert offer.rejected == ()
    assert offer.bundle == ("0", "1", "2")
    assert offer.has_video


@pytest.mark.parametrize("codec", ["H265/90000", "AV1/90000"])
def test_video_we_cannot_decode_is_rejected(codec: str) -> None:
    offer = read_offer(_sdp(_audio("0"), _video("1", codec), _data("2")))
    assert [(r.kind, r.mid) for r in offer.rejected] == [("video", "1")]
    assert codec.split("/", maxsplit=1)[0].lower() in offer.rejected[0].reason
    assert offer.bundle == ("0", "2")
    assert "m=video" not in offer.sdp
    assert not offer.has_video


def test_disabled_extra_and_unknown_sections_are_rejected() -> None:
    text = ["m=text 9 RTP/AVP 98", "a=mid:4", "a=rtpmap:98 t140/1000"]
    offer = read_offer(
        _sdp(_audio("0"), _audio("1"), _video("2"), _audio("3", port=0), text, bundle="0 1 2 3 4")
    )
    assert [r.mid for r in offer.rejected] == ["1", "3", "4"]
    assert offer.bundle == ("0", "2")


def test_no_usable_audio_is_refused() -> None:
    with pytest.raises(UnsupportedMedia, match="isac"):
        read_offer(_sdp(_audio("0", codec="ISAC/16000"), _video("1")))
    with pytest.raises(UnsupportedMedia, match="no audio"):
        read_offer(_sdp(_video("0")))
    with pytest.raises(InvalidOffer):
        read_offer("hello")


def test_excess_candidates_are_dropped_lowest_priority_first() -> None:
    audio = _audio("0") + [
        f"a=candidate:{i} 1 udp {1000 + i} 10.0.0.{i} {5000 + i} typ host" for i in range(40)
    ]
    offer = read_offer(_sdp(audio, bundle="0"))
    kept = [line for line in offer.sdp.split("\r\n") if line.startswith("a=candidate")]
    assert len(kept) == MAX_CANDIDATES
    assert offer.dropped_candidates == 40 - MAX_CANDIDATES
    assert {int(line.split()[3]) for line in kept} == {1000 + i for i in range(24, 40)}


def test_the_answer_bundles_what_the_offer_bundled() -> None:
    answer = _sdp(_audio("0"), _data("2"), bundle="0 2")
    unbundled = read_offer(_sdp(_audio("0"), _data("2"), bundle=None))
    assert "a=group:BUNDLE" not in bundle_as_offered(answer, unbundled)
    partly = read_offer(_sdp(_audio("0"), _data("2"), bundle="2"))
    assert "a=group:BUNDLE 2\r\n" in bundle_as_offered(answer, partly)


def test_rejected_sections_go_back_in_their_place_with_port_0() -> None:
    offer = read_offer(_sdp(_audio("0"), _video("1", "H265/90000"), _data("2")))
    answer = with_rejected(_sdp(_audio("0"), _data("2"), bundle="0 2"), offer)
    media = [line for line in answer.split("\r\n") if line.startswith("m=")]
    assert [m.split(" ")[:2] for m in media] == [
        ["m=audio", "9"],
        ["m=video", "0"],
        ["m=application", "9"],
    ]
    assert answer.split("\r\n").count("a=mid:1") == 1


def test_a_bundle_only_section_with_port_0_is_taken() -> None:
    """RFC 8843: with max-bundle, the sections after the first are offered with port 0 and
    a=bundle-only, to be used on the bundle's transport."""
    video = _video("1")
    video[0] = video[0].replace("m=video 9", "m=video 0")
    offer = read_offer(_sdp(_audio("0"), [*video, "a=bundle-only"], _data("2")))
    assert offer.rejected == ()
    assert offer.has_video


def test_announce_puts_the_published_address_in_host_candidates() -> None:
    answer = _sdp(
        [
            "m=audio 40001 UDP/TLS/RTP/SAVPF 111",
            "c=IN IP4 172.17.0.2",
            "a=mid:0",
            "a=candidate:1 1 udp 2130706431 172.17.0.2 40001 typ host",
            "a=candidate:2 1 udp 1694498815 198.51.100.7 40001 typ srflx raddr 172.17.0.2 "
            "rport 40001",
        ],
        [
            "m=video 0 UDP/TLS/RTP/SAVPF 96",
            "c=IN IP4 0.0.0.0",
            "a=mid:1",
        ],
        bundle="0",
    )
    announced = announce(answer, "127.0.0.1")
    assert "a=candidate:1 1 udp 2130706431 127.0.0.1 40001 typ host" in announced
    assert "198.51.100.7 40001 typ srflx raddr 172.17.0.2" in announced, "srflx stays"
    assert "c=IN IP4 127.0.0.1" in announced
    assert "c=IN IP4 0.0.0.0" in announced, "a rejected section stays rejected"
    assert "172.17.0.2 40001 typ host" not in announced
