"""S7comm / S7comm-plus over ISO-on-TCP: framing and per-flow state.

TPKT (RFC 1006 section 6) frames COTP TPDUs (ISO 8073 section 13) on the byte stream; COTP DT TPDUs without
EOT are joined until the one with EOT (section 13.7, segmenting); the joined data is one S7comm (0x32) or
S7comm-plus (0x72) PDU. Requests are paired with answers by PDU reference (S7comm) or sequence number
(S7comm-plus) per connection, for latency and unanswered requests; fragmented userdata answers (last data
unit "No") are reassembled by data unit reference, as Wireshark does, before their SZL records are decoded.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sensor.messages import Anomaly, FlowInfo, Message, PacketRef
from sensor.messages.s7comm import PLUS_REGISTRY, REGISTRY
from sensor.protocols.base import Probe, ProtocolMismatch
from sensor.protocols.s7comm import codes as C
from sensor.protocols.s7comm import wire as W

MAX_COTP_DATA = 1 << 17  # bytes of one segmented COTP PDU (S7 PDUs are at most 960 bytes, S7comm-plus more)
MAX_UD_OPEN = 16  # fragmented userdata answers open at once per flow
MAX_UD_BYTES = 1 << 16  # bytes of one reassembled userdata answer
MISMATCH_AFTER = 4  # bad TPKT headers with no good one seen: not ISO-on-TCP
_PLUS_KEY = 0x72  # pending-request key prefix for S7comm-plus sequence numbers


class S7State:
    __slots__ = (
        "bad", "bufs", "cotp_connections", "flow", "good", "internal", "pending", "plus_cont", "plus_messages",
        "plus_unanswered", "requests", "responses", "seg_len", "segs", "ud_frags", "unanswered", "unmatched",
    )  # fmt: skip

    def __init__(self, flow: FlowInfo) -> None:
        self.flow = flow
        self.bufs = [b"", b""]  # index 0: client to PLC
        self.segs: list[list[bytes] | None] = [None, None]  # COTP DT data awaiting EOT, per direction
        self.seg_len = [0, 0]
        self.plus_cont = [False, False]  # an S7comm-plus PDU without trailer was seen: continuations follow
        self.pending: dict[tuple[int, int], tuple[int, dict[str, Any]]] = {}  # (kind, reference) -> (ts, fields)
        self.ud_frags: dict[tuple[bool, int, int, int], list[bytes]] = {}
        self.good = 0
        self.bad = 0
        self.requests = 0
        self.responses = 0
        self.unanswered = 0
        self.unmatched = 0
        self.cotp_connections = 0
        self.plus_messages = 0
        self.plus_unanswered = 0
        self.internal = 0


def _find_tpkt(buf: bytes, start: int) -> int:
    """Offset of the next plausible TPKT carrying a COTP DT (03 00 len 02 f0), or -1."""
    j = buf.find(b"\x03\x00", start)
    while j != -1 and j + 6 <= len(buf):
        if buf[j + 4] == 2 and buf[j + 5] >> 4 == C.COTP_DT and (buf[j + 2] << 8 | buf[j + 3]) >= 7:
            return j
        j = buf.find(b"\x03\x00", j + 1)
    return -1


# Code table constants as module globals: the hot path reads them once per message.
_COTP_CC = C.COTP_CC
_COTP_CR = C.COTP_CR
_COTP_DC = C.COTP_DC
_COTP_DR = C.COTP_DR
_COTP_DT = C.COTP_DT
_COTP_PDU_TYPES = C.COTP_PDU_TYPES
_FUNC_END_UPLOAD = C.FUNC_END_UPLOAD
_FUNC_READ_VAR = C.FUNC_READ_VAR
_FUNC_REQUEST_DOWNLOAD = C.FUNC_REQUEST_DOWNLOAD
_FUNC_SETUP = C.FUNC_SETUP
_FUNC_WRITE_VAR = C.FUNC_WRITE_VAR
_ROSCTR_JOB = C.ROSCTR_JOB
_ROSCTR_USERDATA = C.ROSCTR_USERDATA
_S7COMM_PLUS_PROT_ID = C.S7COMM_PLUS_PROT_ID
_S7COMM_PROT_ID = C.S7COMM_PROT_ID
_UD_TYPE_REQ = C.UD_TYPE_REQ
_UD_TYPE_RES = C.UD_TYPE_RES
_ACK_ROSCTRS = (C.ROSCTR_ACK, C.ROSCTR_ACK_DATA)  # 12-byte header with error class and code
_SHORT_HEADER = (C.ROSCTR_JOB, C.ROSCTR_USERDATA)  # 10-byte header
_VAR_FUNCS = (C.FUNC_READ_VAR, C.FUNC_WRITE_VAR)
_PI_FUNCS = (C.FUNC_PI_SERVICE, C.FUNC_PLC_STOP)
_TPKT = W.TPKT.unpack_from
_FRAME = W.TPKT_COTP.unpack_from
_S7_HEADER = W.S7_HEADER.unpack_from
_DATA_HEAD = W.DATA_ITEM.unpack_from
_ROSCTR_NAME = C.ROSCTR_NAMES.get
_RETURN_CODE = C.RETURN_CODES.get
# Fields that follow from the function code alone, merged into the message in one step.
_FUNCTION_FIELDS: tuple[dict[str, Any], ...] = tuple(
    {"function": k, "function_name": C.FUNCTIONS[k][0], "access": C.FUNCTIONS[k][1]} if k in C.FUNCTIONS
    else {"function": k, "function_name": "unknown", "access": "other"}
    for k in range(256)
)  # fmt: skip
_ERROR_FIELDS: dict[int, dict[str, Any]] = {}  # header error class << 8 | code -> its fields, filled on use


def _error_fields(err: int) -> dict[str, Any]:
    """Header error fields of Ack/Ack_Data (error class, code, names), built once per value."""
    ef = _ERROR_FIELDS.get(err)
    if ef is None:
        ecls = err >> 8
        ef = {"error_class": ecls, "error_class_name": C.ERROR_CLASSES.get(ecls, "unknown"),
              "error_code": err & 0xFF, "is_error": err != 0}  # fmt: skip
        if err:
            ef["error_name"] = C.ERROR_CODES.get(err, "unknown")
        if len(_ERROR_FIELDS) < 4096:
            _ERROR_FIELDS[err] = ef
    return ef


def _extra(f: dict[str, Any]) -> dict[str, Any]:
    """Fields an S7comm anomaly carries from its message."""
    extra = {"rosctr": f["rosctr"], "pdu_reference": f["pdu_reference"]}
    if "function" in f:
        extra["function"] = f["function"]
    return extra


class S7commDecoder:
    name = "s7comm"
    transport = "tcp"
    registry = REGISTRY
    extra_registries = (PLUS_REGISTRY,)  # messages of protocol "s7comm_plus" come from this decoder too

    def __init__(self, max_items: int = 64, max_outstanding: int = 1024, max_value_bytes: int = 256) -> None:
        self.max_items = max_items
        self.max_outstanding = max_outstanding
        self.max_value_bytes = max_value_bytes

    # -- seam --------------------------------------------------------------------------------------------------
    def probe(self, data: bytes, from_client: bool) -> Probe:
        """TPKT version 3, reserved 0, plausible length, a COTP TPDU code that fits it, S7 protocol id in DT."""
        n = len(data)
        if n < 6:
            want = b"\x03\x00"[: min(n, 2)]
            return Probe.NEED_MORE if data[:2] == want else Probe.NO
        if data[0] != 3 or data[1] != 0:
            return Probe.NO
        length = data[2] << 8 | data[3]
        li, code = data[4], data[5] >> 4
        if length < 7 or code not in C.COTP_PDU_TYPES or li < 2 or li + 5 > length:
            return Probe.NO
        if code == C.COTP_DT and length > 7:
            if n < 8:
                return Probe.NEED_MORE
            if data[7] not in (C.S7COMM_PROT_ID, C.S7COMM_PLUS_PROT_ID) and data[6] & 0x80:
                return Probe.NO
        return Probe.YES

    def new_state(self, flow: FlowInfo) -> S7State:
        return S7State(flow)

    def feed(
        self, state: S7State, from_client: bool, data: bytes, ts: int, packet: PacketRef, gap: bool
    ) -> Iterable[Message | Anomaly]:
        i = 0 if from_client else 1
        bufs = state.bufs
        segs = state.segs
        if gap:  # bytes lost: partial TPKT, COTP segments and S7comm-plus continuation are unusable
            bufs[i] = b""
            segs[i] = None
            state.seg_len[i] = 0
            state.plus_cont[i] = False
        prev = bufs[i]
        buf = prev + data if prev else data
        out: list[Message | Anomaly] = []
        pos, n = 0, len(buf)
        if gap and n >= 6 and (buf[0] != 3 or buf[1] != 0):
            j = _find_tpkt(buf, 0)
            pos = j if j >= 0 else n
        while n - pos >= 4:
            if n - pos >= 8:  # TPKT, COTP length indicator, TPDU code, DT EOT byte, first data byte in one step
                ver, res, length, li, code, eot, pid = _FRAME(buf, pos)
            else:
                ver, res, length = _TPKT(buf, pos)
                li = code = eot = pid = 0
            if ver != 3 or res != 0:
                self._bad_tpkt(state, from_client, buf, pos, ts, packet, out, "s7comm.invalid_tpkt",
                               f"TPKT version {ver} reserved {res}")  # fmt: skip
                j = _find_tpkt(buf, pos + 1)
                pos = j if j >= 0 else n
                continue
            if length < 7:
                self._bad_tpkt(state, from_client, buf, pos, ts, packet, out, "s7comm.invalid_tpkt_length",
                               f"TPKT length {length} below 7")  # fmt: skip
                j = _find_tpkt(buf, pos + 1)
                pos = j if j >= 0 else n
                continue
            end = pos + length
            if end > n:
                break
            state.good += 1
            # Common case in place: one unsegmented DT TPDU (length indicator 2, EOT) carrying S7comm.
            if li == 2 and code >> 4 == _COTP_DT and eot & 0x80 and pid == _S7COMM_PROT_ID and length > 7 \
                    and segs[i] is None:  # fmt: skip
                self._s7(state, from_client, buf, pos + 7, end, 1, ts, packet, out)
            else:
                self._cotp(state, i, from_client, buf[pos + 4 : end], ts, packet, out)
            pos = end
        bufs[i] = buf[pos:] if pos < n else b""
        return out

    def close(self, state: S7State, ts: int, packet: PacketRef) -> Iterable[Message | Anomaly]:
        for kind, _ref in state.pending:
            if kind == _PLUS_KEY:
                state.plus_unanswered += 1
            else:
                state.unanswered += 1
        state.pending.clear()
        state.ud_frags.clear()
        return ()

    def stats(self, state: S7State) -> dict[str, int]:
        return {
            "requests": state.requests, "responses": state.responses, "unanswered_requests": state.unanswered,
            "unmatched_responses": state.unmatched, "cotp_connections": state.cotp_connections,
            "plus_messages": state.plus_messages, "plus_unanswered_requests": state.plus_unanswered,
        }  # fmt: skip

    # -- framing -----------------------------------------------------------------------------------------------
    def _bad_tpkt(
        self, state: S7State, from_client: bool, buf: bytes, pos: int, ts: int, packet: PacketRef,
        out: list[Message | Anomaly], name: str, reason: str,
    ) -> None:  # fmt: skip
        state.bad += 1
        if state.good == 0 and (state.bad >= MISMATCH_AFTER or (pos == 0 and not state.flow.midstream)):
            raise ProtocolMismatch(f"not ISO-on-TCP: {reason} at the start of the stream")
        out.append(Anomaly(ts, "s7comm", state.flow, from_client, name, reason + "; resynchronising", packet))

    def _cotp(
        self, state: S7State, i: int, from_client: bool, tp: bytes, ts: int, packet: PacketRef,
        out: list[Message | Anomaly],
    ) -> None:  # fmt: skip
        """One TPDU: ISO 8073 section 13.2 (length indicator, TPDU code), 13.7 (DT with EOT)."""
        li, code = tp[0], tp[1] >> 4
        if li < 2 or li + 1 > len(tp):
            out.append(Anomaly(ts, "s7comm", state.flow, from_client, "s7comm.invalid_cotp",
                               f"COTP length indicator {li} in a TPDU of {len(tp)} bytes", packet))  # fmt: skip
            return
        if code == _COTP_DT:
            payload = tp[li + 1 :]
            segs = state.segs[i]
            if not tp[2] & 0x80:  # not EOT: more segments of this PDU follow
                if segs is None:
                    segs = state.segs[i] = []
                state.seg_len[i] += len(payload)
                if state.seg_len[i] > MAX_COTP_DATA:
                    state.segs[i] = None
                    state.seg_len[i] = 0
                    out.append(Anomaly(ts, "s7comm", state.flow, from_client, "s7comm.cotp_reassembly_overflow",
                                       f"segmented COTP data beyond {MAX_COTP_DATA} bytes", packet))  # fmt: skip
                else:
                    segs.append(payload)
                return
            nseg = 1
            if segs is not None:
                segs.append(payload)
                nseg = len(segs)
                payload = b"".join(segs)
                state.segs[i] = None
                state.seg_len[i] = 0
            if not payload:
                return  # empty DT (S7-1200 keep-alive)
            pid = payload[0]
            if pid == _S7COMM_PROT_ID:
                self._s7(state, from_client, payload, 0, len(payload), nseg, ts, packet, out)
            elif pid == _S7COMM_PLUS_PROT_ID:
                self._plus(state, i, from_client, payload, ts, packet, out)
            elif state.requests + state.responses + state.plus_messages == 0:
                raise ProtocolMismatch(f"COTP data with protocol id 0x{pid:02x} is neither S7comm nor S7comm-plus")
            else:
                out.append(Anomaly(ts, "s7comm", state.flow, from_client, "s7comm.unknown_protocol_id",
                                   f"COTP data with protocol id 0x{pid:02x}", packet))  # fmt: skip
            return
        name = _COTP_PDU_TYPES.get(code)
        if name is None:
            out.append(Anomaly(ts, "s7comm", state.flow, from_client, "s7comm.unknown_cotp_pdu_type",
                               f"COTP TPDU code 0x{code:x}", packet))  # fmt: skip
            return
        f: dict[str, Any] = {"cotp_pdu_type": code, "cotp_pdu_name": name, "function_name": name,
                             "is_request": from_client, "access": "setup"}  # fmt: skip
        out.append(Message(ts, "s7comm", state.flow, from_client, f, packet))
        if code in (_COTP_CR, _COTP_CC, _COTP_DR, _COTP_DC):
            if code == _COTP_CR:
                state.cotp_connections += 1
            problem = W.cotp_connection(code, tp, li, from_client, f)
            if problem is not None:
                out.append(Anomaly(ts, "s7comm", state.flow, from_client, problem[0], problem[1], packet))

    # -- S7comm --------------------------------------------------------------------------------------------
    def _s7(
        self, state: S7State, from_client: bool, buf: bytes, start: int, end: int, nseg: int, ts: int,
        packet: PacketRef, out: list[Message | Anomaly],
    ) -> None:  # fmt: skip
        """Header (Wireshark dissect_s7comm) of the PDU buf[start:end], then parameter and data by ROSCTR."""
        n = end - start
        flow = state.flow
        if n < 12 and (n < 10 or buf[start + 1] in _ACK_ROSCTRS):
            out.append(Anomaly(ts, "s7comm", flow, from_client, "s7comm.invalid_header",
                               f"S7 PDU of {n} bytes", packet))  # fmt: skip
            return
        _pid, rosctr, _red, pduref, parlg, datlg = _S7_HEADER(buf, start)
        f: dict[str, Any] = {
            "protocol_id": 0x32, "rosctr": rosctr, "rosctr_name": _ROSCTR_NAME(rosctr, "unknown"),
            "pdu_reference": pduref, "parameter_length": parlg, "data_length": datlg,
        }  # fmt: skip
        if nseg > 1:
            f["cotp_segments"] = nseg
        msg = Message(ts, "s7comm", flow, from_client, f, packet)
        out.append(msg)
        if rosctr in _SHORT_HEADER:
            p0 = start + 10
        elif rosctr in _ACK_ROSCTRS:
            p0 = start + 12
            err = buf[start + 10] << 8 | buf[start + 11]
            f.update(_ERROR_FIELDS.get(err) or _error_fields(err))
        else:
            out.append(Anomaly(ts, "s7comm", flow, from_client, "s7comm.unknown_rosctr", f"ROSCTR {rosctr}", packet,
                               {"pdu_reference": pduref}))  # fmt: skip
            return
        # parameter and data, clipped to the PDU as slices of it would be
        p1 = p0 + parlg
        p2 = p1 + datlg
        mismatch = p2 != end
        if p1 > end:
            p1 = end
        if p2 > end:
            p2 = end
        param = buf[p0:p1]
        data = buf[p1:p2]
        limit = self.max_items
        if rosctr == _ROSCTR_JOB:
            f["is_request"] = True
            problem = self._job(param, data, f, limit)
            self._expect(state, (_ROSCTR_JOB, pduref), ts, f, packet, out)
        elif rosctr == _ROSCTR_USERDATA:
            problem, typ = self._userdata(state, from_client, param, data, f, limit)
            f["is_request"] = typ == _UD_TYPE_REQ
            if typ == _UD_TYPE_REQ:
                self._expect(state, (_ROSCTR_USERDATA, pduref), ts, f, packet, out)
            elif typ == _UD_TYPE_RES:
                self._answer(state, (_ROSCTR_USERDATA, pduref), ts, f, msg, packet, out)
        else:
            f["is_request"] = False
            problem = self._ack(param, data, f, limit) if param else None
            self._answer(state, (_ROSCTR_JOB, pduref), ts, f, msg, packet, out)
        if mismatch:
            out.append(Anomaly(ts, "s7comm", flow, from_client, "s7comm.length_mismatch",
                               f"header {p0 - start} + parameter {parlg} + data {datlg} bytes, PDU has {n}",
                               packet, _extra(f)))  # fmt: skip
        if problem is not None:
            out.append(Anomaly(ts, "s7comm", flow, from_client, problem[0], problem[1], packet, _extra(f)))

    def _expect(
        self, state: S7State, key: tuple[int, int], ts: int, f: dict[str, Any], packet: PacketRef,
        out: list[Message | Anomaly],
    ) -> None:  # fmt: skip
        """A request, to be paired with the answer that carries the same PDU reference."""
        pending = state.pending
        state.requests += 1
        if key in pending or len(pending) >= self.max_outstanding:
            self._crowded(state, key, ts, f, packet, out)
        pending[key] = (ts, f)

    def _job(self, param: bytes, data: bytes, f: dict[str, Any], limit: int) -> W.Problem:
        if not param:
            return ("s7comm.truncated_parameter", "Job without a parameter")
        func = param[0]
        f.update(_FUNCTION_FIELDS[func])
        if func in _VAR_FUNCS:
            if len(param) < 2:
                return ("s7comm.truncated_parameter", "item count missing")
            problem = W.items(param, f, limit)
            if func == _FUNC_WRITE_VAR:
                p2 = W.data_items(data, param[1], f, limit)
                problem = problem or p2
            return problem
        if func == _FUNC_SETUP:
            return W.setup(param, f)
        if _FUNC_REQUEST_DOWNLOAD <= func <= _FUNC_END_UPLOAD:
            return W.updownload_job(func, param, f)
        if func in _PI_FUNCS:
            return W.pi_service(func, param, f)
        f["parameter"] = W.hexs(param[1:], self.max_value_bytes)
        if func not in C.FUNCTIONS:
            return ("s7comm.unknown_function", f"Job function 0x{func:02x}")
        return None

    def _ack(self, param: bytes, data: bytes, f: dict[str, Any], limit: int) -> W.Problem:
        func = param[0]
        f.update(_FUNCTION_FIELDS[func])
        if func in _VAR_FUNCS:
            if len(param) < 2:
                return ("s7comm.truncated_parameter", "item count missing")
            count = f["item_count"] = param[1]
            if func == _FUNC_READ_VAR:
                problem = W.data_items(data, count, f, limit)
            else:
                problem = W.write_answer(data, count, f, limit)
            rcs = f["return_code"]
            if rcs and 0xFF not in rcs:
                f["is_error"] = True
            return problem
        if func == _FUNC_SETUP:
            return W.setup(param, f)
        if _FUNC_REQUEST_DOWNLOAD <= func <= _FUNC_END_UPLOAD:
            return W.updownload_answer(func, param, data, f)
        if func not in C.FUNCTIONS:
            f["parameter"] = W.hexs(param[1:], self.max_value_bytes)
            return ("s7comm.unknown_function", f"Ack_Data function 0x{func:02x}")
        return None

    def _userdata(
        self, state: S7State, from_client: bool, param: bytes, data: bytes, f: dict[str, Any], limit: int
    ) -> tuple[W.Problem, int | None]:
        """Parameter head, data header and (reassembled) data; returns the problem and the userdata type."""
        problem, tg, subf, dur, last = W.userdata_param(param, f)
        if tg < 0:
            return problem, None
        typ = tg >> 6
        if len(data) < 4:
            return problem or (None if not data else ("s7comm.truncated_data", "userdata data header truncated")), typ
        rc, _ts, dlen = _DATA_HEAD(data, 0)
        f["return_code"] = rc
        f["return_code_name"] = _RETURN_CODE(rc, "unknown")
        body = data[4 : 4 + dlen]
        if 4 + dlen > len(data):
            problem = problem or ("s7comm.truncated_data", f"userdata data of {dlen} bytes, {len(data) - 4} present")
        grp = tg & 0x3F
        frags = state.ud_frags
        if last is False:
            key = (from_client, dur, grp, subf)
            parts = frags.get(key)
            if parts is None:
                if len(frags) >= MAX_UD_OPEN:
                    frags.pop(next(iter(frags)))
                    problem = problem or ("s7comm.userdata_reassembly_overflow",
                                          f"more than {MAX_UD_OPEN} fragmented answers open")  # fmt: skip
                parts = frags[key] = []
            parts.append(body)
            if sum(len(p) for p in parts) > MAX_UD_BYTES:
                del frags[key]
                return problem or ("s7comm.userdata_reassembly_overflow", f"fragments beyond {MAX_UD_BYTES} bytes"), typ
            f["fragment"] = True
            return problem, typ
        if dur and frags:
            key = (from_client, dur, grp, subf)
            if key in frags:
                parts = frags.pop(key)
                parts.append(body)
                body = b"".join(parts)
                f["reassembled"] = True
        p2 = W.userdata_data(grp, subf, typ, body, f, limit)
        return problem or p2, typ

    # -- pairing -------------------------------------------------------------------------------------------
    def _crowded(
        self, state: S7State, key: tuple[int, int], ts: int, f: dict[str, Any], packet: PacketRef,
        out: list[Message | Anomaly],
    ) -> None:  # fmt: skip
        """A request whose reference is outstanding already, or one beyond the cap (the caller then stores it)."""
        pending = state.pending
        if key in pending:
            state.unanswered += 1
            out.append(Anomaly(ts, "s7comm", state.flow, True, "s7comm.duplicate_pdu_reference",
                               f"PDU reference {key[1]} reused before its answer", packet,
                               {"pdu_reference": key[1], "rosctr": f["rosctr"]}))  # fmt: skip
        else:
            pending.pop(next(iter(pending)))
            state.unanswered += 1
            out.append(Anomaly(ts, "s7comm", state.flow, True, "s7comm.outstanding_overflow",
                               f"more than {self.max_outstanding} unanswered requests", packet))  # fmt: skip

    def _answer(
        self, state: S7State, key: tuple[int, int], ts: int, f: dict[str, Any], msg: Message, packet: PacketRef,
        out: list[Message | Anomaly],
    ) -> None:  # fmt: skip
        state.responses += 1
        req = state.pending.pop(key, None)
        if req is not None:
            f["matched"] = True
            msg.duration_ns = ts - req[0]
            rq = req[1]
            rf = rq.get("function")
            if rf is None:
                rf = rq.get("subfunction")
            if rf is not None:
                f["request_function"] = rf
        else:
            f["matched"] = False
            state.unmatched += 1
            if not state.flow.midstream:
                out.append(Anomaly(ts, "s7comm", state.flow, False, "s7comm.unmatched_response",
                                   f"no outstanding request with PDU reference {key[1]}", packet,
                                   {"pdu_reference": key[1], "rosctr": f["rosctr"]}))  # fmt: skip

    # -- S7comm-plus ------------------------------------------------------------------------------------------
    def _plus(
        self, state: S7State, i: int, from_client: bool, pl: bytes, ts: int, packet: PacketRef,
        out: list[Message | Anomaly],
    ) -> None:  # fmt: skip
        """Recognised and paired; only the header and the opcode's fixed fields are decoded."""
        state.plus_messages += 1
        f: dict[str, Any] = {"is_request": from_client}
        msg = Message(ts, "s7comm_plus", state.flow, from_client, f, packet)
        out.append(msg)
        if state.plus_cont[i]:  # continuation of a PDU split over TPKTs: header then raw data
            f["continuation"] = True
            f["protocol_id"] = 0x72
            complete = True
            if len(pl) >= 4:
                f["version"] = pl[1]
                f["version_name"] = C.PLUS_VERSIONS.get(pl[1], "unknown")
                dlen = pl[2] << 8 | pl[3]
                f["data_length"] = dlen
                complete = len(pl) >= 8 + dlen and pl[4 + dlen : 5 + dlen] == b"\x72"
            state.plus_cont[i] = not complete
            return
        problem, complete = W.plus_pdu(pl, f, self.max_value_bytes)
        state.plus_cont[i] = not complete
        if problem is not None:
            out.append(Anomaly(ts, "s7comm", state.flow, from_client, problem[0], problem[1], packet))
            return
        op, seq = f.get("opcode"), f.get("sequence_number")
        if seq is None:
            return
        key = (_PLUS_KEY, seq)
        if op == C.PLUS_OP_REQUEST:
            if len(state.pending) >= self.max_outstanding:
                state.pending.pop(next(iter(state.pending)))
                state.plus_unanswered += 1
            if key in state.pending:
                state.plus_unanswered += 1
            state.pending[key] = (ts, f)
        else:
            req = state.pending.pop(key, None)
            f["matched"] = req is not None
            if req is not None:
                msg.duration_ns = ts - req[0]
