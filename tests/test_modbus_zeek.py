"""Modbus transactions compared with the Zeek ICSNPP logs of the same capture (an independent decoder)."""

from __future__ import annotations

from pathlib import Path

from tests.replay_helpers import replay

# Zeek ICSNPP's names for the public function codes (its modbus.log "func" column vocabulary).
ZEEK_FUNC = {
    1: "READ_COILS", 2: "READ_DISCRETE_INPUTS", 3: "READ_HOLDING_REGISTERS", 4: "READ_INPUT_REGISTERS",
    5: "WRITE_SINGLE_COIL", 6: "WRITE_SINGLE_REGISTER", 7: "READ_EXCEPTION_STATUS", 8: "DIAGNOSTICS",
    15: "WRITE_MULTIPLE_COILS", 16: "WRITE_MULTIPLE_REGISTERS", 17: "REPORT_SLAVE_ID", 20: "READ_FILE_RECORD",
    21: "WRITE_FILE_RECORD", 22: "MASK_WRITE_REGISTER", 23: "READ_WRITE_MULTIPLE_REGISTERS", 24: "READ_FIFO_QUEUE",
    43: "ENCAP_INTERFACE_TRANSPORT",
}  # fmt: skip
ZEEK_EXCEPTION = {1: "ILLEGAL_FUNCTION", 2: "ILLEGAL_DATA_ADDRESS", 3: "ILLEGAL_DATA_VALUE", 4: "SLAVE_DEVICE_FAILURE"}


def zeek_log(path: Path, fields: list[str] | None = None) -> list[dict[str, str]]:
    """Rows of a Zeek TSV log; ``fields`` for logs stored without their header (ICSNPP's modbus.log)."""
    fields = fields or []
    rows = []
    for line in path.read_text().splitlines():
        if line.startswith("#fields"):
            fields = line.split("\t")[1:]
        elif line and not line.startswith("#"):
            rows.append(dict(zip(fields, line.split("\t"), strict=True)))
    return rows


def _ints(v: str) -> list[int] | None:
    return None if v == "-" else [int(x) for x in v.split(",")]


def transactions(shared_pcaps: Path) -> dict[int, tuple[dict, dict]]:
    """Request and response fields by transaction id (ids are unique in this capture's main flow)."""
    col, *_ = replay([shared_pcaps / "icsnpp-modbus/modbus_example.pcap"])
    reqs: dict[tuple[int, int], dict] = {}
    out = {}
    for m in col.messages:
        key = (m.flow.flow_id, m.fields["transaction_id"])
        if m.fields["is_request"]:
            reqs[key] = m.fields
        elif m.fields["matched"]:
            out[(m.flow.flow_id, m.fields["transaction_id"])] = (reqs[key], m.fields)
    return out


def test_modbus_detailed_log_agrees(shared_pcaps: Path) -> None:
    expected = zeek_log(shared_pcaps / "icsnpp-modbus/expected/modbus_detailed.log")
    ours = transactions(shared_pcaps)
    by_tid_unit = {(req["transaction_id"], req["unit_id"]): (req, resp) for req, resp in ours.values()}
    checked = 0
    for row in expected:
        if row["matched"] != "T":
            # ICSNPP logs FC 7 and FC 17 as two unmatched lines; we pair them (checked below by count).
            continue
        req, resp = by_tid_unit[(int(row["tid"]), int(row["unit"]))]
        assert ZEEK_FUNC[req["function_code"]] == row["func"]
        if row["address"] != "-":
            assert req["reference_number"] == int(row["address"]), row
        if row["quantity"] not in ("-", "0"):
            # Zeek counts a single-coil or single-register write as quantity 1.
            qty = 1 if req["function_code"] in (5, 6) else req["quantity"]
            assert qty == int(row["quantity"]), row
        if row["request_values"] != "-":
            want = _ints(row["request_values"])
            got = req["values"]
            if req["function_code"] == 5:  # Zeek shows coil ON (0xFF00) as 1
                got = [1 if v == 0xFF00 else 0 for v in got]
            assert got == want, row
        if row["response_values"] != "-":
            got = resp["values"]
            if req["function_code"] == 5:
                got = [1 if v == 0xFF00 else 0 for v in got]
            assert got == _ints(row["response_values"]), row
        if row["exception_code"] != "-":
            assert ZEEK_EXCEPTION[resp["exception_code"]] == row["exception_code"]
        else:
            assert not resp["is_exception"]
        checked += 1
    assert checked == 22
    unmatched_in_zeek = {int(r["tid"]) for r in expected if r["matched"] != "T"}
    assert unmatched_in_zeek == {11, 15}
    for tid in unmatched_in_zeek:
        assert any(req["transaction_id"] == tid for req, _ in ours.values())


def test_mask_write_and_read_write_logs_agree(shared_pcaps: Path) -> None:
    ours = {req["transaction_id"]: (req, resp) for req, resp in transactions(shared_pcaps).values()}
    mask = zeek_log(shared_pcaps / "icsnpp-modbus/expected/modbus_mask_write_register.log")
    for row in mask:
        req, resp = ours[int(row["tid"])]
        f = req if row["request_response"] == "REQUEST" else resp
        assert (f["reference_number"], f["and_mask"], f["or_mask"]) == (
            int(row["address"]), int(row["and_mask"]), int(row["or_mask"])
        )
    rw = zeek_log(shared_pcaps / "icsnpp-modbus/expected/modbus_read_write_multiple_registers.log")
    for row in rw:
        req, resp = ours[int(row["tid"])]
        if row["request_response"] == "REQUEST":
            assert req["write_reference_number"] == int(row["write_start_address"])
            assert req["values"] == _ints(row["write_registers"])
            assert req["read_reference_number"] == int(row["read_start_address"])
            assert req["read_quantity"] == int(row["read_quantity"])
        else:
            assert resp["values"] == _ints(row["read_registers"])
    assert len(mask) == 4 and len(rw) == 4


def test_modbus_log_function_counts_agree(shared_pcaps: Path) -> None:
    """modbus.log has one line per transaction (Zeek names exceptions FUNC_EXCEPTION)."""
    expected: dict[str, int] = {}
    cols = ["ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "func", "exception"]
    for row in zeek_log(shared_pcaps / "icsnpp-modbus/expected/modbus.log", cols):
        expected[row["func"]] = expected.get(row["func"], 0) + 1
    got: dict[str, int] = {}
    for req, resp in transactions(shared_pcaps).values():
        name = ZEEK_FUNC[req["function_code"]] + ("_EXCEPTION" if resp["is_exception"] else "")
        got[name] = got.get(name, 0) + 1
    assert got == expected
