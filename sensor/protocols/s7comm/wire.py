"""S7comm, COTP and S7comm-plus PDU layouts and their pure decoding (no state).

S7comm has no public specification: layouts follow Wireshark's packet-s7comm.c (function names below name the
dissector function each mirrors). COTP follows ISO 8073 (X.224) section 13, TPKT RFC 1006 section 6.
Each decoding function fills the fields dict and returns (anomaly name, reason) for input that does not fit
its layout, or None. Every read is bounds-checked: a short buffer is a Problem, never an exception.
Fields that depend only on a code (names, access) come from small tables built once, and the Read/Write Var
item decoders remember their results for repeated parameter/data bytes (bounded): pollers repeat themselves.
"""

from __future__ import annotations

import re
import struct
from typing import Any

from sensor.protocols.s7comm import codes as C

Fields = dict[str, Any]
Problem = tuple[str, str] | None

# RFC 1006 section 6: version 3, reserved 0, 16-bit length including this header
TPKT = struct.Struct(">BBH")
# TPKT, then COTP length indicator, TPDU code, DT's EOT|number byte and the first byte of DT data (protocol id)
TPKT_COTP = struct.Struct(">BBHBBBB")
# S7comm header (dissect_s7comm): protocol id, ROSCTR, redundancy id, PDU reference, parameter and data length
S7_HEADER = struct.Struct(">BBHHHH")
U16 = struct.Struct(">H")
U32 = struct.Struct(">I")
_SETUP = struct.Struct(">BHHH")  # reserved, max AmQ calling, max AmQ called, PDU length
_ITEM_ANY = struct.Struct(">BHHBBH")  # transport size, length, DB, area, address (3 bytes as B + H)
DATA_ITEM = _DATA_ITEM = struct.Struct(">BBH")  # return code, transport size, length
_UD_PARAM = struct.Struct(">3sBBBBB")  # head 00 01 12, length, method, type|group, subfunction, sequence
_UD_UNIT = struct.Struct(">BBH")  # data unit reference, last data unit (0 yes), parameter error code
_U16X2 = struct.Struct(">HH")
_SZL_0011 = struct.Struct(">H20sHHH")  # index, MlfB, BGTyp, Ausbg, Ausbe
_SZL_HEAD = struct.Struct(">HHHH")  # SZL-ID, index, record length, record count
_PLUS_REQ = struct.Struct(">BHHHH")  # opcode, reserved, function, reserved, sequence number

_BLOCK_NAME = re.compile(rb"(0[89A-F])(\d{5})([APB])")
MAX_VALUE_BYTES = 64  # hex of at most this many bytes per item value


def hexs(b: bytes, limit: int) -> str:
    return b[:limit].hex()


def _text(b: bytes) -> str:
    """Fixed-width S7 text: up to the first NUL, trailing blanks removed."""
    return b.split(b"\x00", 1)[0].decode("latin-1").strip()


_PRINTABLE = bytes(range(0x20, 0x7F))


def _printable(b: bytes) -> str | None:
    """The text of bytes that are all printable ASCII (deleting those leaves nothing), else None."""
    return b.decode("latin-1") if b and not b.translate(None, _PRINTABLE) else None


# -- COTP (ISO 8073 section 13.3 CR/CC, 13.5 DR, 13.6 DC) -----------------------------------------------------
def cotp_connection(code: int, tp: bytes, li: int, from_client: bool, f: Fields) -> Problem:
    """CR/CC/DR/DC fixed part and CR/CC parameters (dissect_cotp_cr_cc / dissect_cotp_dr_dc)."""
    need = 5 if code == C.COTP_DC else 6  # code, dst ref, src ref, then class (CR/CC) or reason (DR)
    if li < need or len(tp) < need + 1:
        return (
            "s7comm.invalid_cotp",
            f"COTP {C.COTP_PDU_TYPES[code][:2]} fixed part needs {need} bytes, length indicator {li}",
        )
    f["cotp_dst_ref"], f["cotp_src_ref"] = _U16X2.unpack_from(tp, 2)
    if code == C.COTP_DR:
        reason = tp[6]
        f["disconnect_reason"] = reason
        f["disconnect_reason_name"] = C.COTP_DISCONNECT_REASONS.get(reason, "unknown")
        return None
    if code == C.COTP_DC:
        return None
    f["cotp_class"] = tp[6] >> 4
    pos, end = 7, li + 1
    while pos + 2 <= end:
        pcode, plen = tp[pos], tp[pos + 1]
        val = tp[pos + 2 : pos + 2 + plen]
        if pos + 2 + plen > end:
            return ("s7comm.invalid_cotp", f"COTP parameter 0x{pcode:02x} runs past the length indicator")
        if pcode == C.COTP_PARAM_TPDU_SIZE and plen == 1:
            f["tpdu_size"] = 1 << val[0] if val[0] < 32 else 0
        elif pcode in (C.COTP_PARAM_SRC_TSAP, C.COTP_PARAM_DST_TSAP):
            side = "src" if pcode == C.COTP_PARAM_SRC_TSAP else "dst"
            f[f"{side}_tsap"] = val.hex()
            text = _printable(val)
            if text is not None and plen > 2:
                f[f"{side}_tsap_text"] = text
        pos += 2 + plen
    # The PLC's TSAP: called (dst) in the client's CR, calling (src) in the PLC's CC. S7-300/400 encode the
    # connection type in its first byte and rack * 32 + slot in the second; 1200/1500 use text TSAPs.
    plc_tsap = f.get("dst_tsap" if from_client else "src_tsap")
    if plc_tsap is not None and len(plc_tsap) == 4:
        ctype, rs = int(plc_tsap[:2], 16), int(plc_tsap[2:], 16)
        f["connection_type"] = ctype
        f["connection_type_name"] = C.TSAP_CONNECTION_TYPES.get(ctype, "unknown")
        f["rack"], f["slot"] = rs >> 5, rs & 0x1F
    return None


# -- Read/Write Var (s7comm_decode_param_item, s7comm_decode_response_read_data) --------------------------
_ITEM_FIELDS = ("syntax_id", "syntax_name", "transport_size", "transport_size_name", "length", "db_number", "area",
                "area_name", "area_short", "address", "bit_address")  # fmt: skip
_ITEMS_MEMO: dict[tuple[bytes, int], tuple[Problem, Fields]] = {}
_ITEMS_MEMO_MAX = 1024  # distinct request parameters remembered (a polling client repeats a few)
_ITEMS_MEMO_BYTES = 256  # longer parameters are decoded every time


def items(param: bytes, f: Fields, limit: int) -> Problem:
    """Request items after the function code and item count.

    A pure function of the parameter bytes: pollers repeat the same requests, so results are remembered
    (bounded) as ready fields, and messages of the same parameter share their lists (fields are read-only
    once emitted, as documents are).
    """
    f["item_count"] = param[1]
    key = (param, limit)
    hit = _ITEMS_MEMO.get(key)
    if hit is None:
        problem, cols = _items(param, limit)
        hit = problem, dict(zip(_ITEM_FIELDS, cols, strict=False))  # 2 columns without S7ANY items
        if len(param) <= _ITEMS_MEMO_BYTES:
            if len(_ITEMS_MEMO) >= _ITEMS_MEMO_MAX:
                _ITEMS_MEMO.clear()
            _ITEMS_MEMO[key] = hit
    f.update(hit[1])
    return hit[0]


def _items(param: bytes, limit: int) -> tuple[Problem, tuple[list[Any], ...]]:
    """The item columns in _ITEM_FIELDS order (only the first two when no item has an S7ANY address)."""
    count = param[1]
    sids: list[int | None] = []
    snames: list[str] = []
    tsz: list[int | None] = []
    tnames: list[str | None] = []
    lens: list[int | None] = []
    dbs: list[int | None] = []
    areas: list[int | None] = []
    anames: list[str | None] = []
    ashorts: list[str | None] = []
    addrs: list[int | None] = []
    bits: list[int | None] = []
    any_area = False
    syntax_name, tsize_name, area_meta = C.SYNTAX_IDS.get, C.ITEM_TRANSPORT_SIZES.get, C.AREAS.get
    numbered = C.NUMBERED_AREAS
    problem: Problem = None
    pos, n = 2, len(param)
    for _ in range(min(count, limit)):
        if pos + 2 > n:
            problem = ("s7comm.truncated_parameter", f"item {len(sids) + 1} of {count} missing")
            break
        vlen = param[pos + 1]
        if param[pos] != 0x12 or vlen == 0:
            problem = ("s7comm.invalid_item", f"variable specification 0x{param[pos]:02x} length {vlen}")
            break
        end = pos + 2 + vlen
        if end > n:
            problem = ("s7comm.truncated_parameter", f"item {len(sids) + 1} address runs past the parameter")
            break
        sid = param[pos + 2]
        sids.append(sid)
        snames.append(syntax_name(sid, "unknown"))
        if sid == C.SYNTAX_S7ANY and vlen >= 10:
            ts, ln, db, area, a_hi, a_lo = _ITEM_ANY.unpack_from(param, pos + 3)
            addr = a_hi << 16 | a_lo
            any_area = True
            tsz.append(ts)
            tnames.append(tsize_name(ts, "unknown"))
            lens.append(ln)
            dbs.append(db)
            areas.append(area)
            meta = area_meta(area)
            anames.append(meta[0] if meta else None)
            ashorts.append(meta[1] if meta else None)
            if area in numbered:  # timers and counters are addressed by number, not byte.bit
                addrs.append(addr)
                bits.append(None)
            else:
                addrs.append(addr >> 3)
                bits.append(addr & 7)
        else:
            for lst in (tsz, tnames, lens, dbs, areas, anames, ashorts, addrs, bits):
                lst.append(None)
        pos = end
    if not any_area:
        return problem, (sids, snames)
    return problem, (sids, snames, tsz, tnames, lens, dbs, areas, anames, ashorts, addrs, bits)


_DATA_MEMO: dict[tuple[bytes, int, int], tuple[Problem, Fields]] = {}
_DATA_FIELDS = ("return_code", "return_code_name", "data_transport_size", "data_item_length", "values")


def data_items(data: bytes, count: int, f: Fields, limit: int) -> Problem:
    """Data items (write request, read answer): return code, transport size, length, value, fill byte.

    Remembered like the request items (polled values seldom change), as ready fields shared by messages.
    """
    key = (data, count, limit)
    hit = _DATA_MEMO.get(key)
    if hit is None:
        problem, cols = _data_items(data, count, limit)
        hit = problem, dict(zip(_DATA_FIELDS, cols, strict=True))
        if len(data) <= _ITEMS_MEMO_BYTES:
            if len(_DATA_MEMO) >= _ITEMS_MEMO_MAX:
                _DATA_MEMO.clear()
            _DATA_MEMO[key] = hit
    f.update(hit[1])
    return hit[0]


def _data_items(data: bytes, count: int, limit: int) -> tuple[Problem, tuple[list[Any], ...]]:
    """Columns: return_code, return_code_name, data_transport_size, data_item_length, values."""
    rcs: list[int] = []
    rnames: list[str] = []
    tss: list[int] = []
    lns: list[int] = []
    vals: list[str] = []
    rc_name = C.RETURN_CODES.get
    in_bits = C.DATA_SIZE_IN_BITS
    unpack = _DATA_ITEM.unpack_from
    hx = data.hex()
    problem: Problem = None
    pos, n = 0, len(data)
    last = count - 1
    for k in range(min(count, limit)):
        if pos + 4 > n:
            if pos < n and k == last and data[pos] != 0xFF:  # a failed last item may stop after its code
                rcs.append(data[pos])
                rnames.append(rc_name(data[pos], "unknown"))
                break
            problem = ("s7comm.truncated_data", f"data item {k + 1} of {count} missing")
            break
        rc, ts, ln = unpack(data, pos)
        nbytes = (ln + 7) >> 3 if ts in in_bits else ln
        pos += 4
        if pos + nbytes > n:
            problem = ("s7comm.truncated_data", f"data item {k + 1} announces {nbytes} bytes, {n - pos} left")
            nbytes = n - pos
        rcs.append(rc)
        rnames.append(rc_name(rc, "unknown"))
        tss.append(ts)
        lns.append(nbytes)
        vals.append(hx[2 * pos : 2 * (pos + (nbytes if nbytes < MAX_VALUE_BYTES else MAX_VALUE_BYTES))])
        pos += nbytes
        if nbytes & 1 and k < last:
            pos += 1  # fill byte
    return problem, (rcs, rnames, tss, lns, vals)


def write_answer(data: bytes, count: int, f: Fields, limit: int) -> Problem:
    rcs = list(data[: min(count, limit)])
    f["return_code"] = rcs
    f["return_code_name"] = [C.RETURN_CODES.get(r, "unknown") for r in rcs]
    if len(data) < count:
        return ("s7comm.truncated_data", f"{count} items but {len(data)} return codes")
    return None


# -- Block transfer (s7comm_decode_plc_controls_updownload) and PI service (s7comm_decode_pi_service) ---------
def filename(fn: bytes, f: Fields) -> None:
    """'_0A00001P': file identifier, block type (2 hex digits), block number (5 digits), destination filesystem."""
    name = fn.decode("latin-1")
    f["filename"] = name
    if len(fn) >= 9:
        f["file_identifier"] = name[0]
        code = name[1:3]
        f["block_type_code"] = code
        f["block_type"] = C.BLOCK_TYPES.get(code, "unknown")
        if fn[3:8].isdigit():  # bytes: ASCII digits only
            f["block_number"] = int(name[3:8])
        f["destination_filesystem"] = name[8]


_STATUS: tuple[Fields, ...] = tuple({"function_status": st, "more_data": bool(st & 0x01)} for st in range(256))


def updownload_job(func: int, param: bytes, f: Fields) -> Problem:
    if len(param) < 8:
        return ("s7comm.truncated_parameter", f"{C.FUNCTIONS[func][0]} parameter of {len(param)} bytes, needs 8")
    f.update(_STATUS[param[1]])  # function status and its more-data bit
    f["upload_id"] = U32.unpack_from(param, 4)[0]
    if func in (C.FUNC_UPLOAD, C.FUNC_END_UPLOAD):
        return None
    if len(param) < 9 or len(param) < 9 + param[8]:
        return ("s7comm.truncated_parameter", "block file name missing or truncated")
    fnlen = param[8]
    filename(param[9 : 9 + fnlen], f)
    if func == C.FUNC_REQUEST_DOWNLOAD:
        pos = 9 + fnlen
        if len(param) >= pos + 14 and param[pos] >= 13:
            lm, mc = param[pos + 2 : pos + 8], param[pos + 8 : pos + 14]
            if lm.isdigit():
                f["load_memory_length"] = int(lm)
            if mc.isdigit():
                f["mc7_code_length"] = int(mc)
    return None


def updownload_answer(func: int, param: bytes, data: bytes, f: Fields) -> Problem:
    if func in (C.FUNC_REQUEST_DOWNLOAD, C.FUNC_DOWNLOAD_ENDED, C.FUNC_END_UPLOAD):
        return None
    if len(param) < 2:
        return ("s7comm.truncated_parameter", f"{C.FUNCTIONS[func][0]} answer without function status")
    f.update(_STATUS[param[1]])  # function status and its more-data bit
    if func == C.FUNC_START_UPLOAD:
        if len(param) < 9 or len(param) < 9 + param[8]:
            return ("s7comm.truncated_parameter", "start upload answer without upload id and block length")
        f["upload_id"] = U32.unpack_from(param, 4)[0]
        bl = param[9 : 9 + param[8]]
        if bl.isdigit():
            f["block_length"] = int(bl)
        return None
    if len(data) >= 4:  # Upload / Download block: length, 2 unknown bytes, block bytes
        f["block_length"] = U16.unpack_from(data, 0)[0]
        if f["block_length"] > len(data) - 4:
            return ("s7comm.truncated_data", f"block data of {f['block_length']} bytes, {len(data) - 4} present")
    return None


def pi_service(func: int, param: bytes, f: Fields) -> Problem:
    """PI-Service (0x28): 7 unknown bytes, parameter block, service name; PLC Stop (0x29): 5 unknown bytes."""
    if func == C.FUNC_PLC_STOP:
        if len(param) < 7 or len(param) < 7 + param[6]:
            return ("s7comm.truncated_parameter", "PLC Stop service name missing or truncated")
        svc = param[7 : 7 + param[6]].decode("latin-1")
        block = b""
    else:
        if len(param) < 10:
            return ("s7comm.truncated_parameter", f"PI-Service parameter of {len(param)} bytes, needs 10")
        plen = U16.unpack_from(param, 8)[0]
        pos = 10 + plen
        if len(param) < pos + 1 or len(param) < pos + 1 + param[pos]:
            return ("s7comm.truncated_parameter", "PI service name missing or truncated")
        block = param[10:pos]
        svc = param[pos + 1 : pos + 1 + param[pos]].decode("latin-1")
    f["pi_service"] = svc
    f["pi_service_name"] = C.PI_SERVICES.get(svc, "unknown")
    if block:
        if svc in ("_INSE", "_INS2", "_DELE"):
            found = _BLOCK_NAME.findall(block)[:32]
            if found:
                f["block_type_code"] = [t.decode() for t, _n, _d in found]
                f["block_type"] = [C.BLOCK_TYPES.get(t.decode(), "unknown") for t, _n, _d in found]
                f["block_number"] = [int(num) for _t, num, _d in found]
                f["destination_filesystem"] = [d.decode() for _t, _n, d in found]
        f["pi_arguments"] = [block[:128].decode("latin-1")]
    return None


def setup(param: bytes, f: Fields) -> Problem:
    if len(param) < 8:
        return ("s7comm.truncated_parameter", f"setup communication parameter of {len(param)} bytes, needs 8")
    _r, f["max_amq_calling"], f["max_amq_called"], f["pdu_length"] = _SETUP.unpack_from(param, 1)
    return None


# -- Userdata (s7comm_decode_ud) ---------------------------------------------------------------------------
def _ud_fields(tg: int, subf: int) -> Fields:
    """Fields that follow from the type|group byte and the sub-function alone (names, access)."""
    typ, grp = tg >> 6, tg & 0x3F
    gmeta = C.FUNCTION_GROUPS.get(grp)
    sname = C.SUBFUNCTIONS.get(grp, {}).get(subf, "unknown")
    return {
        "userdata_type": typ, "userdata_type_name": C.USERDATA_TYPES.get(typ, "unknown"), "function_group": grp,
        "function_group_name": gmeta[0] if gmeta else "unknown", "subfunction": subf, "subfunction_name": sname,
        "function_name": sname, "access": C.SUBFUNCTION_ACCESS.get((grp, subf)) or (gmeta[1] if gmeta else "other"),
    }  # fmt: skip


_UD_FIELDS: dict[int, Fields] = {}  # type|group << 8 | sub-function -> _ud_fields, filled on use


def userdata_param(param: bytes, f: Fields) -> tuple[Problem, int, int, int, bool | None]:
    """Userdata parameter head: (problem, type|group byte, sub-function, data unit reference, last data unit).

    The type|group byte is -1 when the parameter is shorter than 8 bytes (nothing decoded); the problem is set
    then and when data unit fields are announced but missing (12 bytes). The data unit reference is 0 and last
    data unit None when the parameter carries none.
    """
    if len(param) < 8:
        return ("s7comm.truncated_parameter", f"userdata parameter of {len(param)} bytes, needs 8"), -1, 0, 0, None
    _head, plen, method, tg, subf, seq = _UD_PARAM.unpack_from(param, 0)
    f["method"] = method
    key = tg << 8 | subf
    udf = _UD_FIELDS.get(key)
    if udf is None:
        udf = _ud_fields(tg, subf)
        if len(_UD_FIELDS) < 4096:
            _UD_FIELDS[key] = udf
    f.update(udf)
    f["sequence_number"] = seq
    if plen >= 8:
        if len(param) < 12:
            problem = ("s7comm.truncated_parameter", "userdata parameter announces 8 bytes, data unit fields missing")
            return problem, tg, subf, 0, None
        dur, last, err = _UD_UNIT.unpack_from(param, 8)
        f["data_unit_reference"] = dur
        f["last_data_unit"] = last = last == 0
        f["param_error_code"] = err
        if err:
            f["param_error_name"] = C.ERROR_CODES.get(err, "unknown")
            f["is_error"] = True
        return None, tg, subf, dur, last
    return None, tg, subf, 0, None


def userdata_data(grp: int, subf: int, typ: int, data: bytes, f: Fields, limit: int) -> Problem:
    """The data part after return code, transport size and length, by function group and sub-function."""
    n = len(data)
    if grp == C.FG_CPU and subf == C.SUBF_READ_SZL:
        if n < 4:
            return None  # follow-up request of a fragmented answer, or an error answer: no SZL header
        szl_id, idx = _U16X2.unpack_from(data, 0)
        f["szl_id"] = szl_id
        f["szl_id_name"] = C.SZL_LISTS.get(szl_id & 0xFF, "unknown")
        f["szl_index"] = idx
        if typ == C.UD_TYPE_RES and n >= 8:
            return szl_records(data, f, limit)
        return None
    if grp == C.FG_TIME:
        if n >= 10:
            f["clock"] = s7_timestamp(data[:10])
        return None
    if grp == C.FG_BLOCK:
        return block_function(subf, typ, data, f, limit)
    return None


_BCD = tuple((b >> 4) * 10 + (b & 0x0F) for b in range(256))  # packed BCD byte -> value (nibbles > 9 kept)


def _bcd(b: int) -> int:
    return _BCD[b]


def s7_timestamp(b: bytes) -> str:
    """BCD DATE_AND_TIME of the time functions (s7comm_add_timestamp_to_tree): year2 00..89 means 20xx."""
    yy = _bcd(b[2])
    year = 2000 + yy if yy < 90 else 1900 + yy
    ms = _bcd(b[8]) * 10 + (b[9] >> 4)
    return f"{year:04d}-{_bcd(b[3]):02d}-{_bcd(b[4]):02d}T{_bcd(b[5]):02d}:{_bcd(b[6]):02d}:{_bcd(b[7]):02d}.{ms:03d}"


def szl_records(data: bytes, f: Fields, limit: int) -> Problem:
    """SZL answer records; module identity (0x0011, 0x001c), CPU mode (0x0424) and the SZL-ID list (0x0000)."""
    szl_id, _idx, rlen, count = _SZL_HEAD.unpack_from(data, 0)
    f["szl_list_length"] = rlen
    f["szl_list_count"] = count
    body = data[8:]
    if rlen == 0 or count == 0:
        return None
    problem: Problem = None
    if rlen * count > len(body):
        problem = ("s7comm.truncated_data", f"SZL {count} records of {rlen} bytes, {len(body)} bytes present")
        count = len(body) // rlen
        if count == 0:
            return problem
    lst = szl_id & 0xFF
    if lst == C.SZL_MODULE_ID and rlen >= 22:
        if rlen < 28:  # index, MlfB (20), BGTyp, Ausbg, Ausbe: decode what is there, as Wireshark does
            problem = problem or ("s7comm.truncated_data", f"SZL 0x0011 record of {rlen} bytes, layout needs 28")
        for k in range(min(count, limit)):
            if rlen >= 28:
                index, mlfb, bgtyp, ausbg, ausbe = _SZL_0011.unpack_from(body, k * rlen)
            else:
                r = body[k * rlen : k * rlen + rlen].ljust(28, b"\x00")
                index, mlfb, bgtyp, ausbg, ausbe = _SZL_0011.unpack_from(r, 0)
            name = C.SZL_0011_INDEX.get(index)
            if index == 0x0001:
                f["szl.order_number"] = _text(mlfb)
                f["szl.module_type_id"] = bgtyp
                f["szl.module_version"] = f"{ausbg}.{ausbe}"
            elif index == 0x0007 and ausbg >> 8 == 0x56:  # 'V' then major, minor.patch in Ausbe
                f["szl.firmware_version"] = f"V{ausbg & 0xFF}.{ausbe >> 8}.{ausbe & 0xFF}"
            elif name == "hardware_order_number" and "szl.order_number" not in f:
                f["szl.order_number"] = _text(mlfb)
    elif lst == C.SZL_COMPONENT_ID and rlen >= 34:
        for k in range(min(count, limit)):
            r = body[k * rlen : k * rlen + 34]
            index = U16.unpack_from(r, 0)[0]
            meta = C.SZL_001C_INDEX.get(index)
            if meta is not None:
                f["szl." + meta[0]] = _text(r[2 : 2 + meta[1]])
    elif lst == C.SZL_MODES and rlen >= 4:
        f["szl.cpu_mode"] = C.CPU_MODES.get(body[3] & 0x0F, "unknown")
    elif szl_id == 0x0000 and rlen == 2:
        f["szl.szl_ids"] = [U16.unpack_from(body, 2 * k)[0] for k in range(min(count, limit))]
    return problem


def block_function(subf: int, typ: int, data: bytes, f: Fields, limit: int) -> Problem:
    """List blocks (counts per type), list blocks of type and block info requests (block type/number)."""
    n = len(data)
    if subf == C.SUBF_BLOCK_LIST and typ == C.UD_TYPE_RES:
        counts: dict[str, int] = {}
        for k in range(min(n // 4, limit)):
            code = data[4 * k : 4 * k + 2].decode("latin-1")
            counts[C.BLOCK_TYPES.get(code, code.encode("latin-1").hex())] = U16.unpack_from(data, 4 * k + 2)[0]
        f["block_counts"] = counts
    elif subf == C.SUBF_BLOCK_LISTTYPE and typ == C.UD_TYPE_REQ and n >= 2:
        code = data[:2].decode("latin-1")
        f["block_type_code"] = code
        f["block_type"] = C.BLOCK_TYPES.get(code, "unknown")
    elif subf == C.SUBF_BLOCK_INFO and typ == C.UD_TYPE_REQ and n >= 8:
        code = data[:2].decode("latin-1")
        f["block_type_code"] = code
        f["block_type"] = C.BLOCK_TYPES.get(code, "unknown")
        if data[2:7].isdigit():
            f["block_number"] = int(data[2:7])
        f["destination_filesystem"] = chr(data[7])
    return None


# -- S7comm-plus (packet-s7comm_plus.c: dissect_s7commp) --------------------------------------------------------
def plus_pdu(pl: bytes, f: Fields, limit: int) -> tuple[Problem, bool]:
    """Header, integrity part and the opcode's fixed fields; the rest is kept raw.

    Returns (problem, complete): complete is False for a PDU without trailer (its continuation follows).
    """
    n = len(pl)
    if n < 4:
        return ("s7comm.invalid_plus_header", f"S7comm-plus PDU of {n} bytes"), True
    ver = pl[1]
    dlen = U16.unpack_from(pl, 2)[0]
    f["protocol_id"] = 0x72
    f["version"] = ver
    f["version_name"] = C.PLUS_VERSIONS.get(ver, "unknown")
    f["data_length"] = dlen
    if n < 4 + dlen:
        return ("s7comm.invalid_plus_header", f"data length {dlen} but {n - 4} bytes follow the header"), True
    complete = n >= 8 + dlen and pl[4 + dlen] == 0x72
    if not complete:
        f["fragment"] = True
    d = pl[4 : 4 + dlen]
    # V3 (and V2 with integrity) prefix the data with a digest: length byte (32) and the digest.
    if d and d[0] == 0x20 and len(d) > 33 and d[33] in C.PLUS_OPCODES:
        f["integrity"] = True
        f["integrity_length"] = d[0]
        d = d[33:]
    if not d or ver == 0xFE:
        if d:
            f["data"] = hexs(d, limit)
        return None, complete
    op = d[0]
    f["opcode"] = op
    f["opcode_name"] = C.PLUS_OPCODES.get(op, "unknown")
    pos = 1
    if op in (C.PLUS_OP_REQUEST, C.PLUS_OP_RESPONSE, C.PLUS_OP_RESPONSE2):
        if len(d) < _PLUS_REQ.size:
            return ("s7comm.invalid_plus_header", f"{f['opcode_name']} shorter than its fixed fields"), complete
        _op, _r1, func, _r2, seq = _PLUS_REQ.unpack_from(d, 0)
        f["function"] = func
        f["function_name"] = C.PLUS_FUNCTIONS.get(func, "unknown")
        f["sequence_number"] = seq
        pos = _PLUS_REQ.size
        if op == C.PLUS_OP_REQUEST and len(d) >= pos + 5:
            f["session_id"] = U32.unpack_from(d, pos)[0]
            f["transport_flags"] = d[pos + 4]
            pos += 5
        elif op != C.PLUS_OP_REQUEST and len(d) > pos:
            f["transport_flags"] = d[pos]
            pos += 1
    elif op == C.PLUS_OP_NOTIFICATION:
        f["function_name"] = "Notification"
        if len(d) >= 5:
            f["subscription_id"] = U32.unpack_from(d, 1)[0]
            pos = 5
    if len(d) > pos:
        f["data"] = hexs(d[pos:], limit)
    return None, complete
