"""Modbus PDU layouts (Modbus Application Protocol Specification V1.1b3, section 6) and their pure decoding.

Fixed parts are data (a struct and the field names it fills); only the variable parts (bit and register
lists, device identification objects, file records) have code. Each function returns the anomaly name and
reason for a PDU that does not fit its layout, or None.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from sensor.protocols.modbus.codes import DEVICE_ID_OBJECTS, DIAGNOSTICS, MEI_TYPES, READ_DEVICE_ID_CODES

MBAP = struct.Struct(">HHHB")  # section 4.1: transaction id, protocol id, length, unit id
Fields = dict[str, Any]
Problem = tuple[str, str] | None

_U16 = struct.Struct(">H")
_2U16 = struct.Struct(">HH")
_3U16 = struct.Struct(">HHH")
_4U16 = struct.Struct(">HHHH")

# Fixed leading fields: function code -> (layout, field names). Section 6.1-6.17.
REQUEST_FIXED: dict[int, tuple[struct.Struct, tuple[str, ...]]] = {
    1: (_2U16, ("reference_number", "quantity")),
    2: (_2U16, ("reference_number", "quantity")),
    3: (_2U16, ("reference_number", "quantity")),
    4: (_2U16, ("reference_number", "quantity")),
    5: (_2U16, ("reference_number", "output_value")),
    6: (_2U16, ("reference_number", "output_value")),
    15: (_2U16, ("reference_number", "quantity")),
    16: (_2U16, ("reference_number", "quantity")),
    22: (_3U16, ("reference_number", "and_mask", "or_mask")),
    23: (_4U16, ("read_reference_number", "read_quantity", "write_reference_number", "write_quantity")),
    24: (_U16, ("reference_number",)),
    8: (_U16, ("diagnostic_code",)),
}
RESPONSE_FIXED: dict[int, tuple[struct.Struct, tuple[str, ...]]] = {
    5: REQUEST_FIXED[5],
    6: REQUEST_FIXED[6],
    15: (_2U16, ("reference_number", "quantity")),
    16: (_2U16, ("reference_number", "quantity")),
    22: REQUEST_FIXED[22],
    8: (_U16, ("diagnostic_code",)),
    11: (_2U16, ("status", "event_count")),
}
# Quantity limits per request (section 6): out of range means the server must answer exception 3.
QUANTITY_LIMITS = {1: 2000, 2: 2000, 3: 125, 4: 125, 15: 0x7B0, 16: 123}


BYTE_BITS = tuple(tuple((b >> i) & 1 for i in range(8)) for b in range(256))  # byte -> its bits, LSB first
REGISTERS = tuple(struct.Struct(f">{n}H") for n in range(128))  # n big-endian registers (a PDU holds <= 126)


def _bits(data: bytes, count: int, limit: int) -> list[int]:
    """Coil/input bits, LSB first (section 6.1); a table lookup per byte rather than a shift per bit."""
    n = min(count, len(data) * 8, limit)
    if n <= 0:
        return []
    out: list[int] = []
    for b in data[: (n + 7) >> 3]:
        out += BYTE_BITS[b]
    del out[n:]
    return out


def _registers(data: bytes, limit: int) -> list[int]:
    n = min(len(data) // 2, limit)
    if not n:
        return []
    layout = REGISTERS[n] if 0 < n < 128 else struct.Struct(f">{n}H")
    return list(layout.unpack_from(data, 0))


def _byte_counted(pdu: bytes, at: int, f: Fields) -> tuple[bytes, Problem]:
    """A byte count at ``at`` followed by exactly that many bytes."""
    if len(pdu) <= at:
        return b"", ("modbus.truncated_pdu", "byte count missing")
    count = pdu[at]
    f["byte_count"] = count
    data = pdu[at + 1 :]
    if len(data) != count:
        return data[:count], ("modbus.length_mismatch", f"byte count {count} but {len(data)} data bytes")
    return data, None


def _write_multiple(fc: int, pdu: bytes, f: Fields, limit: int) -> Problem:
    data, problem = _byte_counted(pdu, 5, f)
    if fc == 15:
        f["values"] = _bits(data, f["quantity"], limit)
        want = (f["quantity"] + 7) // 8
    else:
        f["values"] = _registers(data, limit)
        want = f["quantity"] * 2
    if problem is None and f["byte_count"] != want:
        problem = ("modbus.length_mismatch", f"byte count {f['byte_count']} for quantity {f['quantity']}")
    return problem


def _read_write_request(pdu: bytes, f: Fields, limit: int) -> Problem:
    data, problem = _byte_counted(pdu, 9, f)
    f["values"] = _registers(data, limit)
    return problem


def _diagnostic(pdu: bytes, f: Fields, limit: int) -> Problem:
    f["diagnostic_name"] = DIAGNOSTICS.get(f["diagnostic_code"], "reserved")
    data = pdu[3:]
    f["data"] = data[: limit * 2].hex()
    if len(data) % 2:
        return ("modbus.length_mismatch", f"diagnostic data of {len(data)} bytes is not whole words")
    return None


def _mei_request(pdu: bytes, f: Fields, limit: int) -> Problem:
    if len(pdu) < 2:
        return ("modbus.truncated_pdu", "MEI type missing")
    mei = pdu[1]
    f["mei_type"] = mei
    f["mei_name"] = MEI_TYPES.get(mei, "reserved")
    if mei == 14:
        if len(pdu) < 4:
            return ("modbus.truncated_pdu", "read device id code or object id missing")
        f["read_device_id"] = pdu[2]
        f["read_device_id_name"] = READ_DEVICE_ID_CODES.get(pdu[2], "reserved")
        f["object_id"] = pdu[3]
    else:
        f["data"] = pdu[2 : 2 + limit * 2].hex()
    return None


def _mei_response(pdu: bytes, f: Fields, limit: int) -> Problem:
    problem = _mei_request(pdu[:4], f, limit)
    if problem or f["mei_type"] != 14:
        if f.get("mei_type") is not None and f["mei_type"] != 14:
            f["data"] = pdu[2 : 2 + limit * 2].hex()
        f.pop("object_id", None)
        return problem
    f.pop("object_id", None)
    if len(pdu) < 7:
        return ("modbus.truncated_pdu", "device identification header truncated")
    f["conformity_level"] = pdu[3]
    f["more_follows"] = pdu[4] == 0xFF
    f["next_object_id"] = pdu[5]
    count = pdu[6]
    f["object_count"] = count
    objects: dict[str, str] = {}
    pos = 7
    for _ in range(count):
        if pos + 2 > len(pdu) or pos + 2 + pdu[pos + 1] > len(pdu):
            f["objects"] = objects
            return ("modbus.truncated_pdu", "device identification object past end of PDU")
        oid, olen = pdu[pos], pdu[pos + 1]
        if len(objects) < limit:
            name = DEVICE_ID_OBJECTS.get(oid, f"object_{oid}")
            objects[name] = pdu[pos + 2 : pos + 2 + olen].decode("latin-1")[:256]
        pos += 2 + olen
    f["objects"] = objects
    return None


def _file_request(pdu: bytes, f: Fields, limit: int) -> Problem:
    data, problem = _byte_counted(pdu, 1, f)
    fc = pdu[0]
    files, records = [], []
    pos = 0
    step = 7
    while pos + step <= len(data):
        ref_type, file_no, rec_no, rec_len = struct.unpack_from(">BHHH", data, pos)
        if ref_type != 6:
            problem = problem or ("modbus.invalid_value", f"file reference type {ref_type} is not 6")
        files.append(file_no)
        records.append(rec_no)
        pos += step + (rec_len * 2 if fc == 21 else 0)
    if pos != len(data) and problem is None:
        problem = ("modbus.length_mismatch", "file sub-request lengths do not add up to the byte count")
    f["file_numbers"] = files[:limit]
    f["record_numbers"] = records[:limit]
    return problem


def _read_bits_response(pdu: bytes, f: Fields, limit: int, request: Fields | None) -> Problem:
    data, problem = _byte_counted(pdu, 1, f)
    count = request.get("quantity", len(data) * 8) if request else len(data) * 8
    f["values"] = _bits(data, count, limit)
    return problem


def _read_registers_response(pdu: bytes, f: Fields, limit: int, request: Fields | None) -> Problem:
    data, problem = _byte_counted(pdu, 1, f)
    f["values"] = _registers(data, limit)
    if problem is None and len(data) % 2:
        problem = ("modbus.length_mismatch", f"odd register byte count {len(data)}")
    return problem


def _fifo_response(pdu: bytes, f: Fields, limit: int, request: Fields | None) -> Problem:
    if len(pdu) < 5:
        return ("modbus.truncated_pdu", "FIFO byte count or count missing")
    f["byte_count"], f["fifo_count"] = _2U16.unpack_from(pdu, 1)
    f["values"] = _registers(pdu[5:], limit)
    if f["byte_count"] != len(pdu) - 3:
        return ("modbus.length_mismatch", f"FIFO byte count {f['byte_count']} but {len(pdu) - 3} bytes")
    return None


def _exception_status_response(pdu: bytes, f: Fields, limit: int, request: Fields | None) -> Problem:
    if len(pdu) < 2:
        return ("modbus.truncated_pdu", "exception status missing")
    f["exception_status"] = pdu[1]
    return None


def _event_log_response(pdu: bytes, f: Fields, limit: int, request: Fields | None) -> Problem:
    data, problem = _byte_counted(pdu, 1, f)
    if len(data) >= 6:
        f["status"], f["event_count"], f["message_count"] = _3U16.unpack_from(data, 0)
        f["events"] = list(data[6 : 6 + limit])
    elif problem is None:
        problem = ("modbus.truncated_pdu", "event log shorter than its fixed fields")
    return problem


def _server_id_response(pdu: bytes, f: Fields, limit: int, request: Fields | None) -> Problem:
    data, problem = _byte_counted(pdu, 1, f)
    if data:
        f["server_id"] = data[:-1][: limit * 2].hex()
        f["run_indicator"] = data[-1] == 0xFF
    return problem


def _file_response(pdu: bytes, f: Fields, limit: int, request: Fields | None) -> Problem:
    if pdu[0] == 21:
        return _file_request(pdu, f, limit)
    _data, problem = _byte_counted(pdu, 1, f)
    return problem


RequestTail = Callable[[bytes, Fields, int], Problem]
ResponseBody = Callable[[bytes, Fields, int, "Fields | None"], Problem]

REQUEST_TAIL: dict[int, RequestTail] = {
    15: lambda p, f, n: _write_multiple(15, p, f, n),
    16: lambda p, f, n: _write_multiple(16, p, f, n),
    23: _read_write_request,
    8: _diagnostic,
    43: _mei_request,
    20: _file_request,
    21: _file_request,
}
RESPONSE_BODY: dict[int, ResponseBody] = {
    1: _read_bits_response,
    2: _read_bits_response,
    3: _read_registers_response,
    4: _read_registers_response,
    23: _read_registers_response,
    24: _fifo_response,
    7: _exception_status_response,
    8: lambda p, f, n, r: _diagnostic(p, f, n),
    12: _event_log_response,
    17: _server_id_response,
    43: lambda p, f, n, r: _mei_response(p, f, n),
    20: _file_response,
    21: _file_response,
}
# Requests with nothing after the function code (section 6.7, 6.9, 6.10, 6.13).
EMPTY_REQUESTS = frozenset({7, 11, 12, 17})


def decode_request(fc: int, pdu: bytes, f: Fields, limit: int) -> Problem:
    fixed = REQUEST_FIXED.get(fc)
    if fixed is not None:
        layout, names = fixed
        if len(pdu) < 1 + layout.size:
            return ("modbus.truncated_pdu", f"function {fc} request needs {1 + layout.size} bytes, has {len(pdu)}")
        for name, value in zip(names, layout.unpack_from(pdu, 1), strict=True):
            f[name] = value
        maxq = QUANTITY_LIMITS.get(fc)
        if maxq is not None and not 1 <= f["quantity"] <= maxq:
            tail = REQUEST_TAIL.get(fc)
            if tail is not None:
                tail(pdu, f, limit)  # keep the values for the analyst; the quantity is the problem
            return ("modbus.invalid_quantity", f"quantity {f['quantity']} outside 1..{maxq}")
        if fc in (5, 6):
            f["values"] = [f["output_value"]]
            if fc == 5 and f["output_value"] not in (0, 0xFF00):
                return ("modbus.invalid_value", f"coil value 0x{f['output_value']:04x} is neither 0x0000 nor 0xFF00")
        elif fc == 22:
            pass
        elif fc not in REQUEST_TAIL and len(pdu) != 1 + layout.size:
            return ("modbus.length_mismatch", f"function {fc} request has {len(pdu) - 1 - layout.size} extra bytes")
    elif fc in EMPTY_REQUESTS:
        if len(pdu) != 1:
            return ("modbus.length_mismatch", f"function {fc} request carries {len(pdu) - 1} unexpected bytes")
        return None
    tail = REQUEST_TAIL.get(fc)
    if tail is not None:
        return tail(pdu, f, limit)
    if fixed is None:
        f["data"] = pdu[1 : 1 + limit * 2].hex()  # user-defined or reserved: raw
    return None


def decode_response(fc: int, pdu: bytes, f: Fields, limit: int, request: Fields | None) -> Problem:
    fixed = RESPONSE_FIXED.get(fc)
    if fixed is not None:
        layout, names = fixed
        if len(pdu) < 1 + layout.size:
            return ("modbus.truncated_pdu", f"function {fc} response needs {1 + layout.size} bytes, has {len(pdu)}")
        for name, value in zip(names, layout.unpack_from(pdu, 1), strict=True):
            f[name] = value
        if fc in (5, 6):
            f["values"] = [f["output_value"]]
    body = RESPONSE_BODY.get(fc)
    if body is not None:
        return body(pdu, f, limit, request)
    if fixed is None:
        f["data"] = pdu[1 : 1 + limit * 2].hex()
    return None
