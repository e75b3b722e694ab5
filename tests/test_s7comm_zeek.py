"""S7comm and S7comm-plus messages compared with the Zeek ICSNPP logs of the same captures (an independent decoder).

ICSNPP's vocabulary (function, group and sub-function names) is transcribed below from its consts.zeek, so the
comparison maps our codes to its names instead of trusting our own name tables. Known differences, each checked:
- ICSNPP logs the PDU reference byte-swapped (tshark and we read 0x0100 as 256, ICSNPP logs 1).
- ICSNPP does not log the Ack (ROSCTR 2) PDU, the first fragment of a fragmented userdata answer, nor the
  follow-up request that fetches the next fragment; we decode them all (and tshark shows them).
- ICSNPP does not reassemble the fragmented SZL answer, so it has no SZL record for it; we do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.replay_helpers import replay
from tests.test_modbus_zeek import zeek_log

ZEEK_FUNCTIONS = {
    0x00: "CPU Services", 0x04: "Read Variable", 0x05: "Write Variable", 0x1A: "Request Download",
    0x1B: "Download Block", 0x1C: "Download Ended", 0x1D: "Start Upload", 0x1E: "Upload", 0x1F: "End Upload",
    0x28: "PLC Control", 0x29: "PLC Stop", 0xF0: "Setup Communication",
}  # fmt: skip
ZEEK_GROUPS = {
    0: "Mode-Transition", 1: "Programmer Controls", 2: "Cyclic Services", 3: "Block Functions",
    4: "CPU Functions", 5: "Security", 6: "PBC BSEND-BRECV", 7: "Time Functions",
}  # fmt: skip
ZEEK_SUBFUNCTIONS = {
    (4, 1): "Read SZL", (3, 1): "List Blocks", (3, 2): "List Blocks of Type", (3, 3): "Get Block Info",
    (7, 1): "Read Clock", (7, 2): "Set Clock", (5, 1): "PLC Password",
}  # fmt: skip
ZEEK_ROSCTR = {1: "Job-Request", 2: "ACK", 3: "ACK-Data", 7: "User-Data"}
ZEEK_BLOCK_TYPES = {"08": "Organization Block", "0A": "Data Block", "0B": "System Data Block", "0C": "Function"}
ZEEK_FILESYSTEM = {"A": "Active", "P": "Passive"}


def swap16(v: int) -> int:
    return (v >> 8) | (v & 0xFF) << 8


def _s7_messages(path: Path) -> list[Any]:
    col, stats, *_ = replay([path])
    assert stats["tcp"]["decoder_exceptions"] == 0
    return [m for m in col.messages if m.protocol == "s7comm" and "rosctr" in m.fields]


def _zeek_row(m: Any) -> tuple:
    """Our message as an ICSNPP s7comm.log row (is_orig, rosctr, ref, function code/name, sub-function, error)."""
    f = m.fields
    ref = swap16(f["pdu_reference"])
    if f["rosctr"] == 7:
        typ, grp, subf = f["userdata_type"], f["function_group"], f["subfunction"]
        code = f"0x{typ << 6 | grp:02x}"
        name = f"{'Request' if typ == 1 else 'Response'}: {ZEEK_GROUPS[grp]}"
        sub = (f"0x{subf:02x}", ZEEK_SUBFUNCTIONS[(grp, subf)])
        err: tuple = ("-", "-")
        if typ == 2:
            e = f.get("param_error_code", 0)
            err = ("No error", "0x00") if e == 0 else ("Parameter Error", f"0x{e:04x}")
    else:
        func = f.get("function")
        code, name = f"0x{func:02x}", ZEEK_FUNCTIONS[func]
        sub = (f["pi_service"], f["pi_service_name"]) if func == 0x28 and "pi_service" in f else ("-", "-")
        err = (
            ("-", "-")
            if f["rosctr"] == 1
            else ("No error" if f["error_class"] == 0 else "?", f"0x{f['error_code']:02x}")
        )
    return ("T" if m.from_client else "F", str(f["rosctr"]), ZEEK_ROSCTR[f["rosctr"]], str(ref), code, name, *sub, *err)


def test_snap7_s7comm_log_agrees(shared_pcaps: Path) -> None:
    base = shared_pcaps / "icsnpp-s7comm"
    expected = [
        (r["is_orig"], r["rosctr_code"], r["rosctr_name"], r["pdu_reference"], r["function_code"], r["function_name"],
         r["subfunction_code"], r["subfunction_name"], r["error_class"], r["error_code"])
        for r in zeek_log(base / "expected-snap7/s7comm.log")
    ]  # fmt: skip
    msgs = _s7_messages(base / "snap7.pcap")
    # Explained above: the Ack, the first fragment and its follow-up request are not in ICSNPP's log.
    not_logged = [m for m in msgs if m.fields["rosctr"] == 2 or m.fields.get("fragment")
                  or (m.fields.get("userdata_type") == 1 and "data_unit_reference" in m.fields)]  # fmt: skip
    assert [m.packet.frame for m in not_logged] == [6, 7, 44]
    got = [_zeek_row(m) for m in msgs if m not in not_logged]
    assert len(expected) == 61
    assert got == expected


def test_snap7_read_szl_log_agrees(shared_pcaps: Path) -> None:
    base = shared_pcaps / "icsnpp-s7comm"
    expected = [
        (r["is_orig"], r["pdu_reference"], r["method"], r["szl_id"], r["szl_index"], r["return_code"])
        for r in zeek_log(base / "expected-snap7/s7comm_read_szl.log")
    ]
    got = []
    for m in _s7_messages(base / "snap7.pcap"):
        f = m.fields
        if "szl_id" in f and not f.get("reassembled"):  # ICSNPP does not reassemble (module docstring)
            got.append(("T" if m.from_client else "F", str(swap16(f["pdu_reference"])),
                        "Request" if f["userdata_type"] == 1 else "Response", f"0x{f['szl_id']:04x}",
                        f"0x{f['szl_index']:04x}", f"0x{f['return_code']:02x}"))  # fmt: skip
    assert got == expected and len(expected) == 9


def test_snap7_upload_download_log_agrees(shared_pcaps: Path) -> None:
    base = shared_pcaps / "icsnpp-s7comm"
    expected = zeek_log(base / "expected-snap7/s7comm_upload_download.log")
    msgs = {
        swap16(m.fields["pdu_reference"]) * 2 + (not m.from_client): m.fields for m in _s7_messages(base / "snap7.pcap")
    }
    checked = 0
    for r in expected:
        f = msgs[int(r["pdu_reference"]) * 2 + (r["is_orig"] == "F")]
        assert ZEEK_ROSCTR[f["rosctr"]] == r["rosctr"]
        assert ZEEK_FUNCTIONS[f["function"]] == r["function_name"]
        if r["function_status"] != "-":
            assert f["function_status"] == int(r["function_status"], 16)
        if r["session_id"] != "-":
            assert f["upload_id"] == int(r["session_id"])
        if r["blocklength"] != "-":
            assert f["block_length"] == int(r["blocklength"])
        if r["filename"] != "-":
            assert f["filename"] == r["filename"]
            assert ZEEK_BLOCK_TYPES[f["block_type_code"]] == r["block_type"]
            assert f"{f['block_number']:05d}" == r["block_number"]
            assert ZEEK_FILESYSTEM[f["destination_filesystem"]] == r["destination_filesystem"]
        checked += 1
    assert checked == len(expected) == 25


def test_s7comm_plus_capture_logs_agree(shared_pcaps: Path) -> None:
    base = shared_pcaps / "icsnpp-s7comm"
    col, stats, *_ = replay([base / "s7comm_plus.pcap"])
    assert stats["tcp"]["decoder_exceptions"] == 0 and stats["decode_errors"] == 0
    plus = [m for m in col.messages if m.protocol == "s7comm_plus"]
    got = [("T" if m.from_client else "F", str(m.fields["version"]), f"0x{m.fields['opcode']:02x}",
            "-" if "function" not in m.fields else f"0x{m.fields['function']:04x}") for m in plus]  # fmt: skip
    expected = [(r["is_orig"], r["version"], r["opcode"], r["function_code"])
                for r in zeek_log(base / "expected-s7comm_plus/s7comm_plus.log")]  # fmt: skip
    assert got == expected and len(expected) == 121
    s7 = [m for m in col.messages if m.protocol == "s7comm" and "rosctr" in m.fields]
    rows = [(r["is_orig"], r["rosctr_code"], r["pdu_reference"], r["function_code"])
            for r in zeek_log(base / "expected-s7comm_plus/s7comm.log")]  # fmt: skip
    ours = [("T" if m.from_client else "F", str(m.fields["rosctr"]), str(swap16(m.fields["pdu_reference"])),
             f"0x{m.fields['function']:02x}") for m in s7]  # fmt: skip
    assert ours == rows and len(rows) == 34
    cotp = [r["pdu_name"] for r in zeek_log(base / "expected-s7comm_plus/cotp.log")]
    ours_conn = [m.fields["cotp_pdu_name"] for m in col.messages if "cotp_pdu_type" in m.fields]
    assert ours_conn == ["CR Connect Request", "CC Connect Confirm"]
    assert [n for n in cotp if not n.startswith("DT")] == ["CR Connection Request", "CC Connection Confirm"]
    assert cotp.count("DT Data") == len(plus) + len(s7)  # every DT carried one S7 or S7comm-plus PDU
