"""Modbus/TCP framing and per-flow state: MBAP framing (section 4.1 of the Modbus Messaging on TCP/IP
Implementation Guide V1.0b), request/response pairing by transaction id, latency, unanswered requests."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sensor.messages import Anomaly, FlowInfo, Message, PacketRef
from sensor.messages.modbus import REGISTRY
from sensor.protocols.base import Probe, ProtocolMismatch
from sensor.protocols.modbus.codes import EXCEPTIONS, FUNCTIONS, USER_DEFINED
from sensor.protocols.modbus.wire import MBAP, decode_request, decode_response

MAX_ADU = 260  # 7-byte MBAP header + 253-byte PDU
MISMATCH_AFTER = 4  # consecutive bad headers with no good ADU seen: not Modbus


def _function_meta(fc: int) -> tuple[str, str, str | None]:
    meta = FUNCTIONS.get(fc)
    if meta is not None:
        return meta
    return ("user_defined" if fc in USER_DEFINED else "reserved", "other", None)


FUNCTION_META = [_function_meta(fc) for fc in range(128)]  # indexed by function code: no call per PDU


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
        i = 0 if from_client else 1
        buf = data if gap or not state.bufs[i] else state.bufs[i] + data  # after a gap: resync at this segment
        out: list[Message | Anomaly] = []
        pos = 0
        n = len(buf)
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
                out.append(Anomaly(ts, "modbus", state.flow, from_client, name, reason + "; rest of segment dropped",
                                   packet, {"transaction_id": tid, "unit_id": unit}))  # fmt: skip
                pos = n  # no reliable way to find the next frame inside this segment
                break
            end = pos + 6 + length
            if end > n:
                break
            state.bad_streak = 0
            state.good += 1
            self._pdu(state, from_client, tid, unit, length, buf[pos + 7 : end], ts, packet, out)
            pos = end
        rest = buf[pos:] if pos < n else b""
        if len(rest) > MAX_ADU:
            rest = b""
        state.bufs[i] = rest
        return out

    def _pdu(
        self,
        state: ModbusState,
        from_client: bool,
        tid: int,
        unit: int,
        length: int,
        pdu: bytes,
        ts: int,
        packet: PacketRef,
        out: list[Message | Anomaly],
    ) -> None:
        """Decode one PDU; its message goes to ``out`` followed by any anomaly found in it."""
        raw_fc = pdu[0]
        fc = raw_fc & 0x7F
        name, access, table = FUNCTION_META[fc]
        f: dict[str, Any] = {
            "transaction_id": tid, "protocol_id": 0, "length": length, "unit_id": unit, "function_code": fc,
            "function_name": name, "is_request": from_client, "access": access,
        }  # fmt: skip
        if table is not None:
            f["table"] = table
        limit = self.max_values
        msg = Message(ts, "modbus", state.flow, from_client, f, packet)
        out.append(msg)
        if from_client:
            state.requests += 1
            f["is_exception"] = False
            problem = decode_request(fc, pdu, f, limit) if raw_fc < 0x80 else ("modbus.invalid_value", "request with the exception bit set")
            if tid in state.pending:
                out.append(Anomaly(ts, "modbus", state.flow, True, "modbus.duplicate_transaction_id",
                                         f"transaction id {tid} reused before its response", packet, dict(f)))  # fmt: skip
            elif len(state.pending) >= self.max_outstanding:
                state.pending.pop(next(iter(state.pending)))
                state.unanswered += 1
                out.append(Anomaly(ts, "modbus", state.flow, True, "modbus.outstanding_overflow",
                                         f"more than {self.max_outstanding} unanswered requests", packet))  # fmt: skip
            state.pending[tid] = (ts, f)
        else:
            state.responses += 1
            req = state.pending.pop(tid, None)
            request = None
            f["matched"] = req is not None
            if req is not None:
                msg.duration_ns = ts - req[0]
                request = req[1]
                for k in ("reference_number", "quantity"):
                    if k in request:
                        f["request_" + k] = request[k]
            else:
                state.unmatched += 1
                if not state.flow.midstream:
                    out.append(Anomaly(ts, "modbus", state.flow, False, "modbus.unmatched_response",
                                             f"no outstanding request with transaction id {tid}", packet, dict(f)))  # fmt: skip
            if raw_fc & 0x80:
                f["is_exception"] = True
                code = pdu[1] if len(pdu) > 1 else 0
                f["exception_code"] = code
                f["exception_name"] = EXCEPTIONS.get(code, "reserved")
                problem = None
                if len(pdu) < 2 or code == 0:
                    problem = ("modbus.invalid_exception_code", f"exception response without a valid code ({code})")
                elif len(pdu) != 2:
                    problem = ("modbus.length_mismatch", f"exception response of {len(pdu)} bytes, expected 2")
            else:
                f["is_exception"] = False
                problem = decode_response(fc, pdu, f, limit, request)
        if problem is not None:
            out.append(Anomaly(ts, "modbus", state.flow, from_client, problem[0], problem[1], packet,
                                     {k: f[k] for k in ("transaction_id", "unit_id", "function_code")}))  # fmt: skip

    def close(self, state: ModbusState, ts: int, packet: PacketRef) -> Iterable[Message | Anomaly]:
        state.unanswered += len(state.pending)
        state.pending.clear()
        return ()

    def stats(self, state: ModbusState) -> dict[str, int]:
        return {
            "requests": state.requests, "responses": state.responses,
            "unanswered_requests": state.unanswered, "unmatched_responses": state.unmatched,
        }  # fmt: skip
