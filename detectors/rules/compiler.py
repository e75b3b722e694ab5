"""Compile a validated rule condition into one closure ``pred(msg) -> bool`` over fast field accessors.

Why closures: the condition tree is walked once at load; per message only the accessors and comparisons run.
``ics.<protocol>.<name>`` reads ``msg.fields[name]``; ECS paths read the flow (source.* follows the message
direction), ``msg.protocol`` or the anomaly's name. Semantics: a missing field fails every test except
``exists: false`` (and ``not``); a list-valued field passes when any element passes.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Callable, Mapping
from typing import Any

from sensor.messages import Anomaly, Message

Msg = Message | Anomaly
Pred = Callable[[Msg], bool]
Getter = Callable[[Msg], Any]


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


def _flow_getter(attr_client: str, attr_server: str, follow_direction: bool) -> Getter:
    if follow_direction:  # source.* is the sender of this message, destination.* its receiver

        def get(m: Msg) -> Any:
            f = m.flow
            if f is None:
                return MISSING
            return getattr(f, attr_client) if m.from_client else getattr(f, attr_server)
    else:

        def get(m: Msg) -> Any:
            f = m.flow
            return MISSING if f is None else getattr(f, attr_client)

    return get


def _error_getter(attr: str) -> Getter:
    def get(m: Msg) -> Any:
        return getattr(m, attr) if type(m) is Anomaly else MISSING

    return get


def _duration(m: Msg) -> Any:
    d = m.duration_ns if type(m) is Message else None
    return MISSING if d is None else d


def _flow_attr(attr: str) -> Getter:
    def get(m: Msg) -> Any:
        f = m.flow
        return MISSING if f is None else getattr(f, attr)

    return get


def source_ip(m: Msg) -> Any:
    f = m.flow
    if f is None:
        return MISSING
    return f.client_ip if m.from_client else f.server_ip


def destination_ip(m: Msg) -> Any:
    f = m.flow
    if f is None:
        return MISSING
    return f.server_ip if m.from_client else f.client_ip


ECS_GETTERS: dict[str, Getter] = {
    "source.ip": source_ip,  # the two most used: plain attribute access rather than getattr
    "destination.ip": destination_ip,
    "source.port": _flow_getter("client_port", "server_port", True),
    "destination.port": _flow_getter("server_port", "client_port", True),
    "client.ip": _flow_getter("client_ip", "", False),
    "client.port": _flow_getter("client_port", "", False),
    "server.ip": _flow_getter("server_ip", "", False),
    "server.port": _flow_getter("server_port", "", False),
    "network.protocol": lambda m: m.protocol,
    "network.transport": _flow_attr("transport"),
    "network.community_id": _flow_attr("community_id"),
    "event.duration": _duration,
    "error.code": _error_getter("name"),
    "error.message": _error_getter("reason"),
}


def getter(path: str) -> Getter:
    """Accessor for a document path; ics.<protocol>.<name>[.<sub>...] reads the message's short field names."""
    g = ECS_GETTERS.get(path)
    if g is not None:
        return g
    parts = path.split(".")
    name = parts[2]
    subs = parts[3:]
    if not subs:

        def get(m: Msg) -> Any:
            return m.fields.get(name, MISSING)

        return get

    def get_sub(m: Msg) -> Any:
        v: Any = m.fields.get(name, MISSING)
        for s in subs:
            if not isinstance(v, dict):
                return MISSING
            v = v.get(s, MISSING)
        return v

    return get_sub


# ---------------------------------------------------------------------------------------------------------
# Value tests: value -> bool, on one (scalar) value
# ---------------------------------------------------------------------------------------------------------

Test = Callable[[Any], bool]


class IpSet:
    """Membership of an address in a set of addresses/networks, with a bounded cache (few hosts, many packets)."""

    __slots__ = ("cache", "exact", "nets")

    def __init__(self, entries: list[str]) -> None:
        self.nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self.exact: set[str] = set()
        for e in entries:
            net = ipaddress.ip_network(str(e), strict=False)
            if net.num_addresses == 1:
                self.exact.add(str(net.network_address))
            else:
                self.nets.append(net)
        self.cache: dict[str, bool] = {}

    def __contains__(self, ip: Any) -> bool:
        hit = self.cache.get(ip)
        if hit is None:
            hit = ip in self.exact
            if not hit and self.nets:
                try:
                    addr = ipaddress.ip_address(ip)
                except ValueError:
                    addr = None
                hit = addr is not None and any(addr in n for n in self.nets)
            if len(self.cache) >= 65536:
                self.cache.clear()
            self.cache[ip] = hit
        return hit


def _members(arg: Any, ftype: str, lists: Mapping[str, list[str]]) -> Any:
    """The set an in/not_in tests against: an IpSet for ip fields, else a frozenset of values."""
    items = [arg] if isinstance(arg, dict) else list(arg)
    values: list[Any] = []
    for it in items:
        if isinstance(it, dict):
            values += list(lists[it["list"]])
        else:
            values.append(it)
    if ftype == "ip":
        return IpSet([str(v) for v in values])
    return frozenset(values)


def _value_test(op: str, arg: Any, ftype: str, lists: Mapping[str, list[str]]) -> Test:
    if op in ("eq", "ne"):
        if ftype == "ip":
            s = IpSet([str(arg)])
            return (lambda x: x in s) if op == "eq" else (lambda x: x not in s)
        if op == "eq":
            return lambda x: x == arg
        return lambda x: x != arg
    if op in ("in", "not_in"):
        s = _members(arg, ftype, lists)
        if op == "in":
            return lambda x: x in s
        return lambda x: x not in s
    if op == "gt":
        return lambda x: isinstance(x, int | float) and x > arg
    if op == "gte":
        return lambda x: isinstance(x, int | float) and x >= arg
    if op == "lt":
        return lambda x: isinstance(x, int | float) and x < arg
    if op == "lte":
        return lambda x: isinstance(x, int | float) and x <= arg
    if op == "range":
        lo, hi = arg
        return lambda x: isinstance(x, int | float) and lo <= x <= hi
    if op == "re":
        search = re.compile(arg).search
        return lambda x: search(x if isinstance(x, str) else str(x)) is not None
    if op == "glob":
        match = re.compile(fnmatch.translate(arg)).match
        return lambda x: match(x if isinstance(x, str) else str(x)) is not None
    raise ValueError(f"unknown operator {op}")  # the loader rejected it already


def _fast_leaf(path: str, op: str, ftype: str, arg: Any, lists: Mapping[str, list[str]]) -> Pred | None:
    """One closure (no getter or test call) for the common leaves: equality and membership on a message field
    or on source/destination address. The generic path gives the same answers, three calls deeper."""
    if op not in ("eq", "in", "not_in"):
        return None
    if path in ("source.ip", "destination.ip"):
        s = _members(arg, ftype, lists) if op != "eq" else IpSet([str(arg)])
        src = path == "source.ip"
        if op == "not_in":

            def addr_not_in(m: Msg) -> bool:
                f = m.flow
                return f is not None and (f.client_ip if m.from_client is src else f.server_ip) not in s

            return addr_not_in

        def addr_in(m: Msg) -> bool:
            f = m.flow
            return f is not None and (f.client_ip if m.from_client is src else f.server_ip) in s

        return addr_in
    parts = path.split(".")
    if parts[0] != "ics" or len(parts) != 3 or ftype == "ip":
        return None
    name = parts[2]
    if op == "eq":
        v = arg

        def eq(m: Msg) -> bool:
            x = m.fields.get(name, MISSING)
            if x == v:
                return True
            return type(x) is list and any(e == v for e in x)

        return eq
    members = _members(arg, ftype, lists)
    if op == "in":

        def is_in(m: Msg) -> bool:
            x = m.fields.get(name, MISSING)
            if type(x) is list:
                return any(e in members for e in x)
            return x in members

        return is_in

    def not_in(m: Msg) -> bool:
        x = m.fields.get(name, MISSING)
        if x is MISSING:
            return False
        if type(x) is list:
            return any(e not in members for e in x)
        return x not in members

    return not_in


def _leaf(path: str, ftype: str, spec: Any, lists: Mapping[str, list[str]]) -> Pred:
    get = getter(path)
    if isinstance(spec, dict):
        items = list(spec.items())
    else:
        items = [("eq", spec)]
    preds: list[Pred] = []
    for op, arg in items:
        fast = _fast_leaf(path, op, ftype, arg, lists)
        if fast is not None:
            preds.append(fast)
            continue
        if op == "exists":
            want = bool(arg)
            preds.append(lambda m, want=want: (get(m) is not MISSING) is want)
            continue
        test = _value_test(op, arg, ftype, lists)
        preds.append(_apply(get, test))
    return preds[0] if len(preds) == 1 else _all(preds)


def _apply(get: Getter, test: Test) -> Pred:
    """Run ``test`` on the value; a list-valued field passes when any element passes (also for ne/not_in)."""

    def pred(m: Msg) -> bool:
        x = get(m)
        if x is MISSING:
            return False
        if type(x) is list:
            return any(test(e) for e in x)
        return test(x)

    return pred


def _all(preds: list[Pred]) -> Pred:
    if len(preds) == 2:
        a, b = preds
        return lambda m: a(m) and b(m)
    if len(preds) == 3:
        a, b, c = preds
        return lambda m: a(m) and b(m) and c(m)
    ps = tuple(preds)

    def pred(m: Msg) -> bool:
        for p in ps:  # noqa: SIM110 - a loop avoids a generator per message
            if not p(m):
                return False
        return True

    return pred


def _any(preds: list[Pred]) -> Pred:
    ps = tuple(preds)

    def pred(m: Msg) -> bool:
        for p in ps:  # noqa: SIM110 - a loop avoids a generator per message
            if p(m):
                return True
        return False

    return pred


def compile_condition(
    cond: Mapping[str, Any], types: Mapping[str, str], lists: Mapping[str, list[str]], skip: frozenset[str] = frozenset()
) -> Pred:
    """One predicate for a mapping of tests (all must pass), with nested any/all/not.

    ``skip`` names top-level tests the engine's index already guarantees (the rule is only reached through them).
    """
    preds: list[Pred] = []
    for key, value in cond.items():
        if key in skip:
            continue
        if key == "all":
            preds += [compile_condition(c, types, lists) for c in value]
        elif key == "any":
            preds.append(_any([compile_condition(c, types, lists) for c in value]))
        elif key == "not":
            inner = compile_condition(value, types, lists)
            preds.append(lambda m, inner=inner: not inner(m))
        else:
            preds.append(_leaf(key, types[key], value, lists))
    if not preds:
        return lambda m: True
    return preds[0] if len(preds) == 1 else _all(preds)
