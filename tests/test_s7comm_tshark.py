"""S7comm decoding checked message by message against tshark's dissection of the same captures.

For every S7comm PDU: ROSCTR, function, PDU reference, item count and, for userdata, the type, function group,
sub-function and SZL-ID; plus setup parameters, items' areas/DB numbers/addresses and item return codes.
tshark runs in the test; the test skips when tshark is missing.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PROJECT_PCAPS, SHARED_PCAPS
from tests.replay_helpers import replay
from tests.tshark_json import compare_by_frame, layers

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed: no oracle")

SHARED_S7 = ["icsnpp-s7comm/snap7.pcap", "icsnpp-s7comm/s7comm_plus.pcap", "ics-pcap/s7-1200-hmi-timer-sync.pcapng"]
OWN = sorted(p.name for p in PROJECT_PCAPS.glob("s7comm*.pcap")) if PROJECT_PCAPS.exists() else []
KEYS = (
    "s7comm.header.rosctr", "s7comm.param.func", "s7comm.header.pduref", "s7comm.param.itemcount",
    "s7comm.param.userdata.type", "s7comm.param.userdata.funcgroup", "s7comm.param.userdata.subfunc",
    "s7comm.data.userdata.szl_id", "s7comm.header.errcls", "s7comm.header.errcod",
    "s7comm.param.pdu_length", "s7comm.param.maxamq_calling",
)  # fmt: skip
LISTS = (
    "s7comm.param.item.area", "s7comm.param.item.db", "s7comm.param.item.address.byte",
    "s7comm.param.item.address.number", "s7comm.data.returncode",
)  # fmt: skip
NUMBERED = (28, 29, 30, 31)  # timer/counter areas: tshark shows address.number instead of byte.bit


def _walk(node: Any, out: dict[str, list[str]]) -> None:
    """Collect every value of the wanted keys in one s7comm layer, in tree order."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k.startswith("__multi_"):
                continue
            if k in KEYS or k in LISTS:
                for x in v if isinstance(v, list) else [v]:
                    if isinstance(x, str):
                        out.setdefault(k, []).append(x)
            else:
                _walk(v, out)
    elif isinstance(node, list):
        for x in node:
            _walk(x, out)


def _int(v: str | None) -> int | None:
    return None if v is None else int(v, 0)


def theirs(path: Path) -> dict[int, list[tuple]]:
    out: dict[int, list[tuple]] = {}
    for row in layers(path, "s7comm", ["s7comm"]):
        for lay in row["s7comm"]:
            vals: dict[str, list[str]] = {}
            _walk(lay, vals)
            one = {k: _int(vals[k][0]) if k in vals else None for k in KEYS}
            utype = one["s7comm.param.userdata.type"]
            rcs = [_int(x) for x in vals.get("s7comm.data.returncode", [])]
            if one["s7comm.header.rosctr"] == 7:
                rcs = []  # userdata: one data return code, compared below as part of the tuple
            out.setdefault(row["frame.number"], []).append(
                (
                    one["s7comm.header.rosctr"], one["s7comm.param.func"], one["s7comm.header.pduref"],
                    one["s7comm.param.itemcount"], None if utype is None else utype >> 2,
                    one["s7comm.param.userdata.funcgroup"], one["s7comm.param.userdata.subfunc"],
                    one["s7comm.data.userdata.szl_id"], one["s7comm.header.errcls"], one["s7comm.header.errcod"],
                    one["s7comm.param.pdu_length"], one["s7comm.param.maxamq_calling"],
                    [_int(x) for x in vals.get("s7comm.param.item.area", [])],
                    [_int(x) for x in vals.get("s7comm.param.item.db", [])],
                    [_int(x) for x in vals.get("s7comm.param.item.address.byte", [])],
                    [_int(x) for x in vals.get("s7comm.param.item.address.number", [])],
                    rcs,
                )
            )  # fmt: skip
    return out


def ours(path: Path) -> tuple[dict[int, list[tuple]], dict[str, Any]]:
    col, stats, report, _ = replay([path])
    assert not report.problems
    out: dict[int, list[tuple]] = {}
    for m in col.messages:
        f = m.fields
        if m.protocol != "s7comm" or "rosctr" not in f:
            continue
        items = [a for a in f.get("area", []) if a is not None]
        rcs = f.get("return_code", []) if f["rosctr"] != 7 else []
        out.setdefault(m.packet.frame, []).append(
            (
                f["rosctr"], f.get("function"), f["pdu_reference"], f.get("item_count"), f.get("userdata_type"),
                f.get("function_group"), f.get("subfunction"), f.get("szl_id"), f.get("error_class"),
                f.get("error_code"), f.get("pdu_length"), f.get("max_amq_calling"), items,
                [d for d, a in zip(f.get("db_number", []), f.get("area", []), strict=True) if a is not None],
                [d for d, a in zip(f.get("address", []), f.get("area", []), strict=True) if a is not None and a not in NUMBERED],
                [d for d, a in zip(f.get("address", []), f.get("area", []), strict=True) if a in NUMBERED],
                list(rcs),
            )
        )  # fmt: skip
    return out, stats


@pytest.mark.parametrize("rel", SHARED_S7)
def test_shared_capture_matches_tshark(shared_pcaps: Path, rel: str) -> None:
    path = shared_pcaps / rel
    mine, stats = ours(path)
    them = theirs(path)
    agree, diffs = compare_by_frame(mine, them)
    assert stats["tcp"]["decoder_exceptions"] == 0
    assert not diffs, f"{len(diffs)} frames differ ({agree} messages agree):\n" + "\n".join(diffs[:10])
    if rel.endswith("s7-1200-hmi-timer-sync.pcapng"):
        assert not them  # S7comm-plus only: no S7comm PDU on either side
    else:
        assert agree >= 30, "too few S7comm messages compared"


@pytest.mark.parametrize("name", OWN)
def test_project_capture_matches_tshark(name: str) -> None:
    path = PROJECT_PCAPS / name
    mine, stats = ours(path)
    them = theirs(path)
    agree, diffs = compare_by_frame(mine, them)
    assert stats["tcp"]["decoder_exceptions"] == 0
    assert them, "tshark found no S7comm in the capture: the comparison would be empty"
    assert not diffs, f"{len(diffs)} frames differ ({agree} messages agree):\n" + "\n".join(diffs[:10])


def test_fragmented_szl_reassembled_like_tshark(shared_pcaps: Path) -> None:
    """snap7.pcap frames 6 and 8: a SZL 0x001c answer in two data units; tshark reassembles it in frame 8."""
    path = shared_pcaps / "icsnpp-s7comm/snap7.pcap"
    col, *_ = replay([path])
    by_frame = {m.packet.frame: m.fields for m in col.messages if m.protocol == "s7comm"}
    assert by_frame[6].get("fragment") is True and "szl_id" not in by_frame[6]
    assert by_frame[8].get("reassembled") is True
    rows = {r["frame.number"]: r for r in layers(path, "frame.number==8", ["s7comm"])}
    text = str(rows[8]["s7comm"])
    for key in ("szl.module_type_name", "szl.serial_number", "szl.module_name", "szl.system_name"):
        assert by_frame[8][key] and by_frame[8][key] in text, key


def test_asset_facts_against_tshark(shared_pcaps: Path) -> None:
    """Order number and module type name come from the PLC's SZL answers, as tshark shows them."""
    path = shared_pcaps / "icsnpp-s7comm/snap7.pcap"
    col, *_ = replay([path])
    f4 = next(m.fields for m in col.messages if m.packet.frame == 4)
    tree = str(layers(path, "frame.number==4", ["s7comm"])[0]["s7comm"])
    assert f4["szl.order_number"] and f4["szl.order_number"] in tree
    assert f4["szl.firmware_version"] == "V3.2.7"  # Ausbg 22019 = 'V' 3, Ausbe 519 = 2.7 in tshark's tree
    assert "'s7comm.szl.xy11.0001.ausbg': '22019'" in tree and "'s7comm.szl.xy11.0001.ausbe': '519'" in tree


def test_tsap_rack_slot_against_tshark() -> None:
    if not OWN:
        pytest.skip("no project S7 capture")
    path = PROJECT_PCAPS / OWN[0]
    col, *_ = replay([path])
    crs = [m for m in col.messages if m.fields.get("cotp_pdu_type") == 14]
    assert crs
    rows = {r["frame.number"]: r["cotp"][0] for r in layers(path, "cotp.type==0x0e", ["cotp"])}
    for m in crs:
        lay = rows[m.packet.frame]
        dst = lay.get("cotp.dst-tsap-bytes") or lay.get("cotp.dst-tsap")
        assert m.fields["dst_tsap"] == dst.replace(":", "").lower()
        b = bytes.fromhex(m.fields["dst_tsap"])
        assert (m.fields["rack"], m.fields["slot"]) == (b[1] >> 5, b[1] & 0x1F)


def test_shared_path_exists() -> None:
    assert SHARED_PCAPS.name == "pcaps"
