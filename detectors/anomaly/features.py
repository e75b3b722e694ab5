"""What the baseline and the model read from a message, and the per-pair time-window features.

A *pair* is (client address, server address, protocol, server port): one HMI polling one PLC, one MQTT client and
its broker. Windows are aligned on multiples of the window length in capture time, so training and scoring cut
the same windows out of the same capture.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from operator import ne
from typing import Any

from sensor.messages import Message

# Bump when a feature is added, removed, reordered or computed differently: models of another schema are refused.
SCHEMA_VERSION = 1
FEATURES: tuple[tuple[str, str], ...] = (
    ("requests", "requests in the window, log(1+n)"),
    ("write_fraction", "share of requests that write (Modbus write FCs, S7 write/download/control, MQTT publish)"),
    ("diagnostic_fraction", "share of requests that are diagnostics, identification or other non read/write"),
    ("exception_ratio", "exception or error responses per response"),
    ("distinct_functions", "distinct function codes / S7 functions / MQTT packet types requested"),
    ("iat_mean", "mean inter-arrival of requests in seconds, log(1+s)"),
    ("iat_cv", "coefficient of variation of the request inter-arrival"),
    ("distinct_addresses", "distinct start addresses / S7 areas+DBs / MQTT topics"),
    ("value_change_rate", "share of read values that changed since the previous read of the same address"),
    ("write_value_delta", "mean |change| of written register values against the previous write, log(1+x)"),
    ("bytes", "application bytes in both directions, log(1+n)"),
    ("mean_size", "application bytes per message"),
)
FEATURE_NAMES: tuple[str, ...] = tuple(n for n, _ in FEATURES)

# Derived intent per protocol (the decoders' ``access``): what counts as a write.
S7_WRITE_ACCESS = {"write", "download", "control", "program", "security"}
MQTT_PUBLISH, MQTT_SUBSCRIBE = 3, 8

Pair = tuple[str, str, str, int]  # client ip, server ip, protocol, server port


def pair_of(m: Message) -> Pair:
    f = m.flow
    return (f.client_ip, f.server_ip, m.protocol, f.server_port)


_PAIR_STRS: dict[Pair, str] = {}
MAX_PAIR_STRS = 50_000  # cached pair names; cleared when full (a cache, not state)


def pair_str(p: Pair) -> str:
    """'client>server:port/protocol'. Cached: it is asked for on every message and the pairs are few."""
    s = _PAIR_STRS.get(p)
    if s is None:
        if len(_PAIR_STRS) >= MAX_PAIR_STRS:
            _PAIR_STRS.clear()
        s = _PAIR_STRS[p] = f"{p[0]}>{p[1]}:{p[3]}/{p[2]}"
    return s


def is_request(m: Message) -> bool:
    """Sent by the client side as a request (Modbus request, S7 job/userdata, any MQTT client packet)."""
    if m.protocol == "mqtt":
        return m.from_client
    return bool(m.fields.get("is_request"))


def action_of(m: Message) -> int | str | None:
    """The function code (Modbus), function (S7) or packet type (MQTT) of a message."""
    f = m.fields
    if m.protocol == "modbus":
        return f.get("function_code")
    if m.protocol == "s7comm":
        fn = f.get("function")
        if fn is None and f.get("function_group") is not None:
            return f"userdata {f.get('function_group')}/{f.get('subfunction')}"
        if fn is None and f.get("cotp_pdu_type") is not None:
            return f"cotp {f['cotp_pdu_type']}"
        return fn
    return f.get("msgtype")


def access_of(m: Message) -> str:
    """read | write | other, derived once so the window features and the baseline agree."""
    f = m.fields
    if m.protocol == "modbus":
        a = f.get("access")
        return "write" if a in ("write", "read_write") else "read" if a == "read" else "other"
    if m.protocol == "s7comm":
        a = f.get("access")
        return "write" if a in S7_WRITE_ACCESS else "read" if a == "read" else "other"
    t = f.get("msgtype")
    return "write" if t == MQTT_PUBLISH else "read" if t == MQTT_SUBSCRIBE else "other"


def is_error(m: Message) -> bool:
    f = m.fields
    return bool(f.get("is_exception") or f.get("is_error") or f.get("error_class"))


def address_of(m: Message) -> Any:
    f = m.fields
    if m.protocol == "modbus":
        return f.get("reference_number")
    if m.protocol == "s7comm":
        area = f.get("area")
        if isinstance(area, list):
            return tuple(zip(area, f.get("db_number") or [0] * len(area), f.get("address") or [0] * len(area), strict=False))
        return None
    return f.get("topic")


def size_of(m: Message) -> int:
    f = m.fields
    if m.protocol == "s7comm":
        return (f.get("parameter_length") or 0) + (f.get("data_length") or 0)
    n = f.get("length") if m.protocol == "modbus" else f.get("len")
    return n if isinstance(n, int) else 0


@dataclass(slots=True)
class Window:
    """One pair's activity in one window."""

    requests: int = 0
    responses: int = 0
    writes: int = 0
    diagnostics: int = 0
    errors: int = 0
    functions: set[Any] = field(default_factory=set)
    addresses: set[Any] = field(default_factory=set)
    last_req_ts: int = 0
    gaps: int = 0
    gap_sum: float = 0.0
    gap_sq: float = 0.0
    values_read: int = 0
    values_changed: int = 0
    writes_with_delta: int = 0
    delta_sum: float = 0.0
    bytes: int = 0
    messages: int = 0
    # request signature -> timestamps (ns) of its requests, for polling periods
    signatures: dict[Any, list[int]] = field(default_factory=dict)
    first: Any = None  # the tracker's ``key`` when the window's first message came (PairScorer.score)

    def vector(self, seconds: float) -> list[float]:
        """The feature vector in FEATURE_NAMES order."""
        r = self.requests
        if self.gaps:
            mean = self.gap_sum / self.gaps
            var = max(self.gap_sq / self.gaps - mean * mean, 0.0)
            cv = math.sqrt(var) / mean if mean > 0 else 0.0
        else:
            mean, cv = seconds, 0.0
        return [
            math.log1p(r),
            self.writes / r if r else 0.0,
            self.diagnostics / r if r else 0.0,
            self.errors / self.responses if self.responses else 0.0,
            float(len(self.functions)),
            math.log1p(mean),
            cv,
            float(len(self.addresses)),
            self.values_changed / self.values_read if self.values_read else 0.0,
            math.log1p(self.delta_sum / self.writes_with_delta) if self.writes_with_delta else 0.0,
            math.log1p(self.bytes),
            self.bytes / self.messages if self.messages else 0.0,
        ]


MAX_SIGNATURES_PER_WINDOW = 64
MAX_VALUE_MEMORY = 100_000  # remembered (pair, unit, table, address) -> last value entries
MAX_PAIRS_PER_WINDOW = 20_000  # host pairs featurised in one window
MAX_BLOCKS = 4_096  # cached key tuples of polled register blocks (a cache: cleared when full)


class WindowTracker:
    """Cuts messages into per-pair windows and keeps the cross-window memory the features need (bounded)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.width = int(seconds * 1e9)
        self.start: int | None = None  # start of the current window, ns
        self.windows: dict[Pair, Window] = {}
        # (pair, unit, table, address) -> last value read or written; the key is a string for the usual types
        # FIFO-evicted at MAX_VALUE_MEMORY: an OrderedDict pops its oldest entry in O(1), where a dict's
        # ``pop(next(iter(d)))`` at capacity walks the deleted slots before the first live one (10-40 us each).
        self.last_values: OrderedDict[Any, int] = OrderedDict()
        self.evicted = 0
        self.pairs_dropped = 0
        self._blocks: dict[tuple[Any, ...], tuple[str, ...]] = {}  # see _block
        self.key: Any = None  # where the message being added is in the replay (set by PairScorer.score)

    def due(self, ts: int) -> bool:
        return self.start is not None and ts >= self.start + self.width

    def close(self) -> tuple[int, dict[Pair, Window]]:
        """Hand over the current window's start and per-pair activity and begin the next (empty) window."""
        assert self.start is not None
        out = (self.start, self.windows)
        self.start += self.width
        self.windows = {}
        return out

    def advance_to(self, ts: int) -> None:
        """Skip whole empty windows so the current window contains ``ts``."""
        if self.start is None:
            self.start = ts - ts % self.width
        elif ts >= self.start + self.width:
            self.start += (ts - self.start) // self.width * self.width

    def _remember(self, key: Any, value: int) -> int | None:
        lv = self.last_values
        old = lv.get(key)
        if old is None and len(lv) >= MAX_VALUE_MEMORY:
            lv.popitem(last=False)
            self.evicted += 1
        lv[key] = value
        return old

    def _block(self, pair: Pair, unit: int, table: str, ref: int, n: int) -> tuple[str, ...]:
        """The ``last_values`` keys of ``n`` registers from ``ref``, built once per polled block (polls repeat).

        Keys of int unit, str table and int address are strings ('pair|unit|table|address'), not tuples: a string
        caches its hash, so the per-register lookups of a block cost one probe each instead of hashing a nested
        tuple. Other (odd) types keep the tuple key (see _read)."""
        bk = (pair, unit, table, ref, n)
        keys = self._blocks.get(bk)
        if keys is None:
            if len(self._blocks) >= MAX_BLOCKS:
                self._blocks.clear()
            head = f"{pair_str(pair)}|{unit}|{table}|"
            keys = self._blocks[bk] = tuple([f"{head}{a}" for a in range(ref, ref + n)])
        return keys

    def _recall(self, keys: tuple[str, ...], vals: list[Any]) -> list[Any] | None:
        """Previous values of a whole block, remembering the new ones, when every register is already remembered
        (the steady state of polling): no entry is added or evicted, so ``_remember`` per register would do the
        same. None (and nothing changed) when some register is new: the caller then goes register by register."""
        lv = self.last_values
        olds = list(map(lv.get, keys))
        if None in olds:
            return None
        if olds != vals:  # equal: storing them again would change nothing
            lv.update(zip(keys, vals, strict=True))
        return olds

    def add(self, m: Message, pair: Pair) -> None:
        w = self.windows.get(pair)
        if w is None:
            if len(self.windows) >= MAX_PAIRS_PER_WINDOW:
                # Spoofed sources cannot grow the table: pairs past the cap are not featurised in this window
                # (the baseline still checks each message), and the drop is counted.
                self.pairs_dropped += 1
                return
            w = self.windows[pair] = Window(first=self.key)
        proto = m.protocol
        if proto == "modbus":
            self._add_modbus(w, m, pair)
        elif proto == "mqtt":
            self._add_mqtt(w, m)
        elif proto == "s7comm":
            self._add_s7(w, m)
        else:
            self._add_generic(w, m, pair)

    # The per-protocol paths below inline size_of, is_request, action_of, access_of, address_of and signature for
    # one protocol each (the hot path); _add_generic is the reference they must agree with. What a request or a
    # response does to the window is the same for every protocol: _request and _response.
    @staticmethod
    def _request(w: Window, ts: int, act: Any, addr: Any, access: str, sig: Any) -> bool:
        """A request's share of the window: its function, address and gap since the previous request, and
        (reads and writes only: polls, not acks and pings) its signature. False for ``access`` "other"."""
        w.requests += 1
        w.functions.add(act)
        if addr is not None:
            w.addresses.add(addr)
        last = w.last_req_ts
        if last:
            g = (ts - last) / 1e9
            w.gaps += 1
            w.gap_sum += g
            w.gap_sq += g * g
        w.last_req_ts = ts
        if access == "write":
            w.writes += 1
        elif access == "other":
            w.diagnostics += 1
            return False
        lst = w.signatures.get(sig)
        if lst is None:
            if len(w.signatures) < MAX_SIGNATURES_PER_WINDOW:
                w.signatures[sig] = [ts]
        else:
            lst.append(ts)
        return True

    @staticmethod
    def _response(w: Window, f: dict[str, Any]) -> None:
        w.responses += 1
        if f.get("is_exception") or f.get("is_error") or f.get("error_class"):  # is_error
            w.errors += 1

    def _add_modbus(self, w: Window, m: Message, pair: Pair) -> None:
        f = m.fields
        w.messages += 1
        n = f.get("length")
        if isinstance(n, int):
            w.bytes += n
        if f.get("is_request"):
            act = f.get("function_code")
            a = f.get("access")
            addr = f.get("reference_number")
            access = "write" if a == "write" or a == "read_write" else "read" if a == "read" else "other"
            sig = (f.get("unit_id"), act, addr, f.get("quantity"))
            if self._request(w, m.ts, act, addr, access, sig) and access == "write":
                vals = f.get("values")
                if vals and addr is not None and f.get("table") == "holding_registers":
                    self._written(w, pair, f.get("unit_id"), addr, vals[:16])
        else:
            self._response(w, f)
            if f.get("access") == "read":
                vals = f.get("values")
                ref = f.get("request_reference_number")
                if vals and ref is not None:
                    self._read(w, pair, f.get("unit_id"), f.get("table"), ref, vals[:32])

    def _written(self, w: Window, pair: Pair, unit: Any, ref: Any, vals: list[Any]) -> None:
        if type(ref) is int and type(unit) is int:
            keys = self._block(pair, unit, "holding_registers", ref, len(vals))
            olds = self._recall(keys, vals)
            if olds is None:
                olds = [self._remember(k, v) for k, v in zip(keys, vals, strict=True)]
            for old, v in zip(olds, vals, strict=True):  # in order: the same float sum as register by register
                if old is not None:
                    w.writes_with_delta += 1
                    w.delta_sum += abs(v - old)
            return
        for i, v in enumerate(vals):
            old = self._remember((pair, unit, "holding_registers", ref + i), v)
            if old is not None:
                w.writes_with_delta += 1
                w.delta_sum += abs(v - old)

    def _read(self, w: Window, pair: Pair, unit: Any, table: Any, ref: Any, vals: list[Any]) -> None:
        if type(ref) is int and type(unit) is int and type(table) is str:
            keys = self._block(pair, unit, table, ref, len(vals))
            olds = self._recall(keys, vals)
            if olds is not None:
                w.values_read += len(olds)
                if olds != vals:
                    w.values_changed += sum(map(ne, olds, vals))
                return
            olds = [self._remember(k, v) for k, v in zip(keys, vals, strict=True)]
            for old, v in zip(olds, vals, strict=True):
                if old is not None:
                    w.values_read += 1
                    if old != v:
                        w.values_changed += 1
            return
        for i, v in enumerate(vals):
            old = self._remember((pair, unit, table, ref + i), v)
            if old is not None:
                w.values_read += 1
                if old != v:
                    w.values_changed += 1

    def _add_mqtt(self, w: Window, m: Message) -> None:
        f = m.fields
        w.messages += 1
        n = f.get("len")
        if isinstance(n, int):
            w.bytes += n
        if m.from_client:
            t = f.get("msgtype")
            addr = f.get("topic")
            access = "write" if t == MQTT_PUBLISH else "read" if t == MQTT_SUBSCRIBE else "other"
            self._request(w, m.ts, t, addr, access, (t, addr))
        else:
            self._response(w, f)

    def _add_s7(self, w: Window, m: Message) -> None:
        f = m.fields
        w.messages += 1
        w.bytes += (f.get("parameter_length") or 0) + (f.get("data_length") or 0)
        if f.get("is_request"):
            act = f.get("function")
            if act is None:
                act = action_of(m)
            a = f.get("access")
            area = f.get("area")
            if isinstance(area, list):
                n = len(area)
                addr: Any = tuple(zip(area, f.get("db_number") or [0] * n, f.get("address") or [0] * n, strict=False))
            else:
                addr = None
            access = "write" if a in S7_WRITE_ACCESS else "read" if a == "read" else "other"
            self._request(w, m.ts, act, addr, access, (act, addr))
        else:
            self._response(w, f)

    def _add_generic(self, w: Window, m: Message, pair: Pair) -> None:
        f = m.fields
        w.messages += 1
        w.bytes += size_of(m)
        if is_request(m):
            act = action_of(m)
            acc = access_of(m)
            addr = address_of(m)
            sig = signature(m, act, addr) if acc != "other" else None
            if self._request(w, m.ts, act, addr, acc, sig) and m.protocol == "modbus" and acc == "write":
                vals = f.get("values")
                ref = f.get("reference_number")
                if vals and ref is not None and f.get("table") == "holding_registers":
                    self._written(w, pair, f.get("unit_id"), ref, vals[:16])
        else:
            self._response(w, f)
            if m.protocol == "modbus" and f.get("access") == "read":
                vals = f.get("values")
                ref = f.get("request_reference_number")
                if vals and ref is not None:
                    self._read(w, pair, f.get("unit_id"), f.get("table"), ref, vals[:32])


def signature(m: Message, act: Any, addr: Any) -> tuple[Any, ...]:
    """What makes two requests 'the same poll': unit, function, address and quantity (or the MQTT topic)."""
    f = m.fields
    if m.protocol == "modbus":
        return (f.get("unit_id"), act, addr, f.get("quantity"))
    return (act, addr)


def signature_str(sig: tuple[Any, ...], protocol: str) -> str:
    if protocol == "modbus":
        unit, fc, ref, qty = sig
        return f"FC {fc} unit {unit} address {ref} quantity {qty}"
    if protocol == "mqtt":
        return f"packet type {sig[0]} topic {sig[1]}"
    return f"function {sig[0]} {sig[1]}"
