"""MQTT decoding checked message by message against tshark's dissection of the same captures.

Per message: packet type, fixed-header flags (DUP, QoS, RETAIN), packet id, topic (PUBLISH) or topic filters
(SUBSCRIBE, UNSUBSCRIBE), client id (CONNECT) and return / reason code(s). The oracle is tshark 4.0's mqtt
dissector; the only normalisation is the one the 5.0 specification itself makes: an acknowledgement or DISCONNECT
too short to carry a reason code has reason code 0 (5.0 sections 3.4.2.1, 3.14.2.1), which tshark leaves blank.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PROJECT_PCAPS, SHARED_PCAPS
from tests.replay_helpers import replay
from tests.tshark_json import compare_by_frame, layers

SHARED_MQTT = ["zeek/mqtt.pcap", *sorted(str(p.relative_to(SHARED_PCAPS)) for p in SHARED_PCAPS.glob("suricata-verify/mqtt*/*.pcap"))]
OWN = sorted(p.name for p in PROJECT_PCAPS.glob("mqtt*.pcap")) if PROJECT_PCAPS.exists() else []
# Differences with tshark that are understood, each with its reason; any other difference fails.
# An explained frame set must still hold the same messages in all, only attributed to other frames.
EXPLAINED: dict[tuple[str, int], str] = {
    ("suricata-verify/mqtt-events-missing-connect/input.pcap", 22): (
        "The client's CONNECT (stream bytes 1-16) was never captured, so the SUBSCRIBE in frame 22 waits in the "
        "flow table's out-of-order queue until frame 23's ACK shows the bytes were lost by the capture; the "
        "SUBSCRIBE is then decoded, identical, with frame 23 as its packet reference."
    ),
    ("suricata-verify/mqtt-events-missing-connect/input.pcap", 23): "see frame 22",
}

CODE_KEYS = (
    "mqtt.conack.val", "mqtt.connack.reason_code", "mqtt.puback.reason_code", "mqtt.pubrec.reason_code",
    "mqtt.pubrel.reason_code", "mqtt.pubcomp.reason_code", "mqtt.disconnect.reason_code", "mqtt.auth.reason_code",
)  # fmt: skip
LIST_CODE_KEYS = ("mqtt.suback.qos", "mqtt.suback.reason_code", "mqtt.unsuback.reason_code")
V5_OPTIONAL_CODE = {4: 2, 5: 2, 6: 2, 7: 2, 14: 0, 15: 0}  # type -> remaining length that omits the reason code


def _as_list(v: Any) -> list:
    if v is None:
        return []
    return v if isinstance(v, list) else [v]


def ours_by_frame(path: Path) -> tuple[dict[int, list[tuple]], dict[str, Any]]:
    col, stats, report, _ = replay([path])
    assert not report.problems
    assert stats["tcp"]["decoder_exceptions"] == 0
    out: dict[int, list[tuple]] = {}
    for m in col.messages:
        f = m.fields
        if m.protocol != "mqtt" or "msgtype" not in f:
            continue
        t = f["msgtype"]
        topic: Any = f.get("topic") if t == 3 else tuple(f["topics"]) if "topics" in f else None
        code: Any = f.get("conack_val", f.get("reason_code"))
        if t in (9, 11):
            code = tuple(f.get("suback_qos", f.get("reason_codes", ())))
        out.setdefault(m.packet.frame, []).append(
            (t, f["hdrflags"], f.get("qos"), f.get("msgid"), topic, f.get("clientid") if t == 1 else None, code)
        )
    return out, stats


def theirs_by_frame(path: Path, display_filter: str = "mqtt", options: list[str] | None = None) -> dict[int, list[tuple]]:
    out: dict[int, list[tuple]] = {}
    for row in layers(path, display_filter, ["mqtt"], options):
        for lay in row["mqtt"]:
            if not isinstance(lay, dict) or "mqtt.hdrflags" not in lay:
                continue  # a continuation tshark could not frame
            hdr = int(lay["mqtt.hdrflags"], 16)
            t = hdr >> 4
            tree = lay.get("mqtt.hdrflags_tree", {})
            qos = int(tree["mqtt.qos"]) if t == 3 and "mqtt.qos" in tree else None
            msgid = int(lay["mqtt.msgid"]) if "mqtt.msgid" in lay else None
            topics = _as_list(lay.get("mqtt.topic"))
            topic: Any = (topics[0] if topics else None) if t == 3 else tuple(topics) if t in (8, 10) else None
            code: Any = None
            for k in CODE_KEYS:
                if k in lay:
                    code = int(lay[k])
            if t in (9, 11):
                code = tuple(int(c) for k in LIST_CODE_KEYS for c in _as_list(lay.get(k)))
            elif code is None and lay.get("mqtt.len") is not None and int(lay["mqtt.len"]) == V5_OPTIONAL_CODE.get(t, -1):
                code = "absent"
            clientid = lay.get("mqtt.clientid") if t == 1 else None
            out.setdefault(row["frame.number"], []).append((t, hdr, qos, msgid, topic, clientid, code))
    return out


def _normalise(ours: dict[int, list[tuple]], theirs: dict[int, list[tuple]]) -> None:
    """tshark leaves the reason code of a short 5.0 ack blank: it is 0 by the spec, or absent before 5.0."""
    for frame, rows in theirs.items():
        mine = ours.get(frame, [])
        for k, row in enumerate(rows):
            if row[6] == "absent":
                fill = mine[k][6] if k < len(mine) and mine[k][6] in (0, None) else None
                rows[k] = (*row[:6], fill)


def compare(ours: dict[int, list[tuple]], theirs: dict[int, list[tuple]]) -> tuple[int, list[str]]:
    _normalise(ours, theirs)
    return compare_by_frame(ours, theirs)


@pytest.mark.parametrize("rel", SHARED_MQTT)
def test_shared_capture_matches_tshark(shared_pcaps: Path, rel: str) -> None:
    path = shared_pcaps / rel
    ours, _ = ours_by_frame(path)
    theirs = theirs_by_frame(path)
    frames = [frame for (capture, frame) in EXPLAINED if capture == rel]
    if frames:
        mine = sorted(r for fr in frames for r in ours.pop(fr, []))
        tsh = sorted(r for fr in frames for r in theirs.pop(fr, []))
        assert mine == tsh, f"explained frames {frames} no longer hold the same messages: {mine} vs {tsh}"
    agree, diffs = compare(ours, theirs)
    assert theirs, "tshark found no MQTT in the capture: the comparison would be empty"
    assert not diffs, f"{len(diffs)} frames differ from tshark ({agree} messages agree):\n" + "\n".join(diffs[:20])


@pytest.mark.parametrize("name", OWN)
def test_project_capture_matches_tshark(name: str) -> None:
    path = PROJECT_PCAPS / name
    ours, _stats = ours_by_frame(path)
    theirs = theirs_by_frame(path)
    agree, diffs = compare(ours, theirs)
    assert theirs
    assert not diffs, f"{len(diffs)} frames differ from tshark ({agree} agree):\n" + "\n".join(diffs[:20])


def test_every_packet_type_and_version_is_covered(shared_pcaps: Path) -> None:
    """The comparison above is only as good as what the captures hold: make sure it spans the protocol."""
    seen_types: set[int] = set()
    versions: set[int] = set()
    for rel in SHARED_MQTT:
        ours, _ = ours_by_frame(shared_pcaps / rel)
        for rows in ours.values():
            seen_types.update(r[0] for r in rows)
    for rel in SHARED_MQTT:
        col, *_ = replay([shared_pcaps / rel])
        versions.update(m.fields["protocol_version"] for m in col.messages if "protocol_version" in m.fields)
    assert seen_types >= set(range(1, 15)), f"packet types never compared: {set(range(1, 15)) - seen_types}"
    assert versions == {3, 4, 5}
