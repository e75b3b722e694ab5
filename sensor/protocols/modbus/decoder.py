"""Modbus/TCP framing and per-flow state: MBAP framing (section 4.1 of the Modbus Messaging on TCP/IP
Implementation Guide V1.0b), request/response pairing by transaction id, latency, unanswered requests."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sensor.messages import Anomaly, FlowInfo, Message, PacketRef
from sensor.messages.modbus import REGISTRY
from sensor.protocols.base import Probe, ProtocolMismatch
from sensor.protocols.modbus.codes import EXCEPTIONS, FUNCTIONS, USER_DEFINED
from sensor.protocols.modbus.wire import (
    _2U16,
    BYTE_BITS,
    MBAP,
    QUANTITY_LIMITS,
    REGISTERS,
    decode_request,
    decode_response,
)

MAX_ADU = 260  # 7-byte MBAP header + 253-byte PDU
MISMATCH_AFTER = 4  # consecutive bad headers with no good ADU seen: not Modbus


def _function_meta(fc: int) -> tuple[str, str, str | None]:
    meta = FUNCTIONS.get(fc)
    if meta is not None:
        return meta
    return ("user_defined" if fc in USER_DEFINED else "reserved", "other", None)


FUNCTION_META = [_function_meta(fc) for fc in range(128)]  # indexed by function code: no call per PDU


def _template(fc: int, request: bool) -> dict[str, Any]:
    """The leading fields of every PDU of one function code and direction, in document order.

    A PDU copies its template and overwrites the MBAP values: a dict copy costs half a 10-key dict display.
    A request's template ends with ``is_exception``; a response's with ``matched``, since the request's
    reference and quantity go between that and ``is_exception``.
    """
    name, access, table = FUNCTION_META[fc]
    f: dict[str, Any] = {
        "transaction_id": 0, "protocol_id": 0, "length": 0, "unit_id": 0, "function_code": fc,
        "function_name": name, "is_request": request, "access": access,
    }  # fmt: skip
    if table is not None:
        f["table"] = table
    if request:
        f["is_exception"] = False
    else:
        f["matched"] = False
    return f


REQUEST_TEMPLATES = tuple(_template(fc, True) for fc in range(128))
RESPONSE_TEMPLATES = tuple(_template(fc, False) for fc in range(128))
# Reads (FC 1-4) are most of the traffic: decoded inline when well formed, by wire.decode_* otherwise.
READ_LIMITS = (0, QUANTITY_LIMITS[1], QUANTITY_LIMITS[2], QUANTITY_LIMITS[3], QUANTITY_LIMITS[4])
MAX_REGISTERS = 126  # register values a 253-byte PDU can hold


class ModbusState:
    __slots__ = ("bad_streak", "bufs", "flow", "good", "pending", "requests", "responses", "unanswered", "unmatched")

    def __init__(self, flow: FlowInfo) -> None:
        self.flow = flow
        self.bufs = [b"", b""]  # index 0: client to server
        self.pending: dict[int, tuple[int, dict[str, Any]]] = {}  # transaction id -> (ts, request fields)
        self.good = 0
        self.bad_streak = 0
        self.requests = 0
        self.responses = 0
        self.unanswered = 0
        self.unmatched = 0


class ModbusDecoder:
    name = "modbus"
    transport = "tcp"
    registry = REGISTRY

    def __init__(self, max_values: int = 128, max_outstanding: int = 1024) -> None:
        self.max_values = max_values
        self.max_outstanding = max_outstanding

    def probe(self, data: bytes, from_client: bool) -> Probe:
        """An MBAP header with protocol id 0, a plausible length that matches the segment, a known function."""
        if len(data) < 8:
            return Probe.NEED_MORE if len(data) < 2 or data[2:4] in (b"", b"\x00", b"\x00\x00") else Probe.NO
        _tid, pid, length, _unit = MBAP.unpack_from(data, 0)
        if pid != 0 or not 2 <= length <= 254 or len(data) < 6 + length:
            return Probe.NO
        fc = data[7] & 0x7F
        if fc not in FUNCTIONS:
            return Probe.NO
        # The segment should hold whole ADUs: a frame boundary right after this one, or a second valid header.
        rest = data[6 + length :]
        if rest and (len(rest) < 7 or rest[2:4] != b"\x00\x00"):
            return Probe.NO
        return Probe.YES

    def new_state(self, flow: FlowInfo) -> ModbusState:
        return ModbusState(flow)

    def feed(
        self, state: ModbusState, from_client: bool, data: bytes, ts: int, packet: PacketRef, gap: bool
    ) -> Iterable[Message | Anomaly]:
        """Frame ADUs and decode each PDU; a PDU's message goes to the output before any anomaly found in it.

        The PDU decoding is inlined here, with the well-formed reads (FC 1-4) decoded without a call: this runs
        once per message.
        """
        i = 0 if from_client else 1
        held = state.bufs[i]
        buf = data if gap or not held else held + data  # after a gap: resync at this segment
        out: list[Message | Anomaly] = []
        pos = 0
        n = len(buf)
        flow = state.flow
        limit = self.max_values
        while n - pos >= 7:
            tid, pid, length, unit = MBAP.unpack_from(buf, pos)
            if pid != 0 or not 2 <= length <= 254:
                state.bad_streak += 1
                if state.good == 0 and (state.bad_streak >= MISMATCH_AFTER or (pos == 0 and n > 16)):
                    raise ProtocolMismatch(
                        f"not Modbus/TCP: MBAP protocol id {pid}, length {length} at the start of the stream"
                    )
                name = "modbus.invalid_protocol_id" if pid != 0 else "modbus.invalid_length"
                reason = f"MBAP protocol id {pid}" if pid != 0 else f"MBAP length {length} outside 2..254"
                out.append(Anomaly(ts, "modbus", flow, from_client, name, reason + "; rest of segment dropped",
                                   packet, {"transaction_id": tid, "unit_id": unit}))  # fmt: skip
                pos = n  # no reliable way to find the next frame inside this segment
                break
            end = pos + 6 + length
            if end > n:
                break
            state.bad_streak = 0
            state.good += 1
            pdu = buf[pos + 7 : end]
            pos = end
            raw_fc = pdu[0]
            fc = raw_fc & 0x7F
            problem: tuple[str, str] | None
            if from_client:
                f = REQUEST_TEMPLATES[fc].copy()
                f["transaction_id"] = tid
                f["length"] = length
                f["unit_id"] = unit
                out.append(Message(ts, "modbus", flow, True, f, packet))
                state.requests += 1
                if raw_fc & 0x80:
                    problem = ("modbus.invalid_value", "request with the exception bit set")
                elif 0 < fc < 5 and len(pdu) == 5:
                    reference, quantity = _2U16.unpack_from(pdu, 1)
                    f["reference_number"] = reference
                    f["quantity"] = quantity
                    problem = None
                    maxq = READ_LIMITS[fc]
                    if not 1 <= quantity <= maxq:
                        problem = ("modbus.invalid_quantity", f"quantity {quantity} outside 1..{maxq}")
                else:
                    problem = decode_request(fc, pdu, f, limit)
                pending = state.pending
                if tid in pending:
                    out.append(Anomaly(ts, "modbus", flow, True, "modbus.duplicate_transaction_id",
                                       f"transaction id {tid} reused before its response", packet, dict(f)))  # fmt: skip
                elif len(pending) >= self.max_outstanding:
                    pending.pop(next(iter(pending)))
                    state.unanswered += 1
                    out.append(Anomaly(ts, "modbus", flow, True, "modbus.outstanding_overflow",
                                       f"more than {self.max_outstanding} unanswered requests", packet))  # fmt: skip
                pending[tid] = (ts, f)
            else:
                state.responses += 1
                f = RESPONSE_TEMPLATES[fc].copy()
                f["transaction_id"] = tid
                f["length"] = length
                f["unit_id"] = unit
                req = state.pending.pop(tid, None)
                if req is not None:
                    f["matched"] = True
                    request = req[1]
                    if "reference_number" in request:
                        f["request_reference_number"] = request["reference_number"]
                    if "quantity" in request:
                        f["request_quantity"] = request["quantity"]
                    out.append(Message(ts, "modbus", flow, False, f, packet, ts - req[0]))
                else:
                    request = None
                    out.append(Message(ts, "modbus", flow, False, f, packet))
                    state.unmatched += 1
                    if not flow.midstream:
                        out.append(Anomaly(ts, "modbus", flow, False, "modbus.unmatched_response",
                                           f"no outstanding request with transaction id {tid}", packet, dict(f)))  # fmt: skip
                f["is_exception"] = bool(raw_fc & 0x80)
                size = len(pdu)
                if raw_fc & 0x80:
                    code = pdu[1] if size > 1 else 0
                    f["exception_code"] = code
                    f["exception_name"] = EXCEPTIONS.get(code, "reserved")
                    problem = None
                    if size < 2 or code == 0:
                        problem = ("modbus.invalid_exception_code", f"exception response without a valid code ({code})")
                    elif size != 2:
                        problem = ("modbus.length_mismatch", f"exception response of {size} bytes, expected 2")
                elif 2 < fc < 5 and size > 1 and pdu[1] == size - 2 and not size & 1 and limit >= MAX_REGISTERS:
                    f["byte_count"] = size - 2  # whole registers, as many as the byte count says
                    f["values"] = list(REGISTERS[(size - 2) >> 1].unpack_from(pdu, 2))
                    problem = None
                elif 0 < fc < 3 and size > 1 and pdu[1] == size - 2:
                    f["byte_count"] = size - 2
                    count = request.get("quantity", (size - 2) * 8) if request else (size - 2) * 8
                    nbits = min(count, (size - 2) * 8, limit)
                    values: list[int] = []
                    if nbits > 0:
                        for b in pdu[2 : 2 + ((nbits + 7) >> 3)]:
                            values += BYTE_BITS[b]
                        del values[nbits:]
                    f["values"] = values
                    problem = None
                else:
                    problem = decode_response(fc, pdu, f, limit, request)
            if problem is not None:
                out.append(Anomaly(ts, "modbus", flow, from_client, problem[0], problem[1], packet,
                                   {"transaction_id": tid, "unit_id": unit, "function_code": fc}))  # fmt: skip
        state.bufs[i] = buf[pos:] if pos < n and n - pos <= MAX_ADU else b""
        return out

    def close(self, state: ModbusState, ts: int, packet: PacketRef) -> Iterable[Message | Anomaly]:
        state.unanswered += len(state.pending)
        state.pending.clear()
        return ()

    def stats(self, state: ModbusState) -> dict[str, int]:
        return {
            "requests": state.requests, "responses": state.responses,
            "unanswered_requests": state.unanswered, "unmatched_responses": state.unmatched,
        }  # fmt: skip
