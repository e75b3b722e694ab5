"""Passive asset inventory: who is on the wire, what each host does, and what the wire revealed about it.

``AssetTracker`` sees every decoded ``Message`` and keeps one record per IP address (no MAC: ``Segment`` does not
carry link addresses, and adding them would cost every packet). The role is inferred from behaviour:

- ``plc``: answered Modbus/TCP or S7comm as a server; ``mqtt_broker``: answered MQTT as a server;
- ``engineering_workstation``: sent writes, uploads/downloads, PI services (start/stop), security functions or
  diagnostics/identification (FC 8/43/17, SZL reads, block lists);
- ``hmi``: an ICS client that only read; ``mqtt_client``: spoke MQTT as a client.

Revealed facts: Modbus device identification (FC 43/14) and report server id (FC 17), S7 SZL module facts,
rack/slot/TSAP from COTP connect requests, S7 connection types, MQTT client ids, user names and protocol versions
(never passwords).

State is bounded: at most ``max_assets`` hosts (least recently seen evicted and counted, with a final document if
it had unreported changes), ``max_peers`` peers counted per host, ``max_values`` values per list. A document is due
when something structural changed (a role, protocol, fact or peer; not mere counters), at most once per host per
``update_seconds`` of capture time, plus one final document per host at close.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from sensor.messages import Message
from sensor.messages.asset import ACTIVITIES, AssetState

ICS_SERVER_PROTOCOLS = frozenset({"modbus", "s7comm", "s7comm_plus"})
ENGINEERING = ("write", "upload", "download", "control", "security", "diagnostic", "identify")
# Modbus FC 43/14 object names (decoder) -> asset field names
MODBUS_OBJECTS = {
    "vendor_name": "modbus.vendor_name", "product_code": "modbus.product_code",
    "major_minor_revision": "modbus.revision", "vendor_url": "modbus.vendor_url",
    "product_name": "modbus.product_name", "model_name": "modbus.model_name",
    "user_application_name": "modbus.user_application_name",
}  # fmt: skip
S7_SZL = ("order_number", "module_type_id", "module_version", "firmware_version", "system_name", "module_name",
          "plant_id", "serial_number", "module_type_name", "memory_card_serial", "location_id", "cpu_mode")  # fmt: skip
S7_SZL_FIELDS = tuple((f"szl.{k}", f"s7comm.{k}") for k in S7_SZL)
MODBUS_ACCESS = {"read": "read", "write": "write", "read_write": "write", "diagnostic": "diagnostic", "other": "other"}
S7_ACCESS = {"read": "read", "write": "write", "upload": "upload", "download": "download", "control": "control",
             "program": "control", "security": "security", "diagnostic": "diagnostic", "other": "other"}  # fmt: skip
MQTT_ACTIVITY = {3: "publish", 8: "subscribe", 10: "subscribe"}
COTP_CR = 14


@dataclass(slots=True)
class _Asset:
    ip: str
    first: int
    last: int
    protocols: set[str] = field(default_factory=set)
    served: set[str] = field(default_factory=set)  # protocols answered as the server
    clients_of: set[str] = field(default_factory=set)  # protocols spoken as the client
    server_ports: set[int] = field(default_factory=set)
    peers: set[str] = field(default_factory=set)
    peers_capped: bool = False
    sent: int = 0
    received: int = 0
    activity: dict[str, int] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)  # single-valued, by asset field name
    lists: dict[str, list[Any]] = field(default_factory=dict)  # bounded ordered sets, by asset field name
    emitted: int | None = None  # capture time of the last document, None before the first


class AssetTracker:
    """Bounded per-host inventory fed with every message; ``due(now)`` and ``final()`` give ``AssetState``s."""

    def __init__(
        self, max_assets: int = 10_000, update_seconds: float | None = 60.0, max_peers: int = 1024, max_values: int = 64
    ) -> None:
        self.max_assets = max(2, max_assets)  # a message touches two hosts
        self.interval = None if update_seconds is None else int(update_seconds * 1e9)
        self.max_peers = max_peers
        self.max_values = max_values
        self.assets: OrderedDict[str, _Asset] = OrderedDict()  # least recently seen first
        self.dirty: dict[str, None] = {}  # hosts with changes not yet in a document, in order of change
        self.evicted = 0
        self.documents = 0
        self._pending: list[AssetState] = []  # final documents of evicted hosts
        self._facts = {"modbus": self._modbus, "s7comm": self._s7comm, "mqtt": self._mqtt}

    @classmethod
    def from_config(cls, section: dict[str, Any] | None) -> AssetTracker:
        s = section or {}
        return cls(int(s.get("max_assets", 10_000)), s.get("update_seconds", 60.0), int(s.get("max_peers", 1024)),
                   int(s.get("max_values", 64)))  # fmt: skip

    # -- feeding -----------------------------------------------------------------------------------------------
    def _get(self, ip: str, ts: int) -> _Asset:
        a = self.assets.get(ip)
        if a is not None:
            self.assets.move_to_end(ip)
            if ts > a.last:
                a.last = ts
            return a
        if len(self.assets) >= self.max_assets:
            old_ip, old = self.assets.popitem(last=False)
            self.evicted += 1
            if self.dirty.pop(old_ip, 1) is None:  # it had changes never reported: report them now
                self._pending.append(self._state(old, "evicted"))
        a = self.assets[ip] = _Asset(ip, ts, ts)
        self.dirty[ip] = None
        return a

    def _add(self, a: _Asset, key: str, value: Any) -> None:
        """Add to a bounded list field; a new value is a change."""
        values = a.lists.get(key)
        if values is None:
            values = a.lists[key] = []
        if value not in values and len(values) < self.max_values:
            values.append(value)
            self.dirty[a.ip] = None

    def _set(self, a: _Asset, key: str, value: Any) -> None:
        if value is not None and value != "" and a.facts.get(key) != value:
            a.facts[key] = value
            self.dirty[a.ip] = None

    def on_message(self, m: Message) -> None:
        fl = m.flow
        ts = m.ts
        proto = m.protocol
        c = self._get(fl.client_ip, ts)
        s = self._get(fl.server_ip, ts)
        if proto not in c.protocols or proto not in s.protocols:
            c.protocols.add(proto)
            s.protocols.add(proto)
            self.dirty[c.ip] = self.dirty[s.ip] = None
        if fl.server_ip not in c.peers:
            self._peer(c, fl.server_ip)
            self._peer(s, fl.client_ip)
        if m.from_client:
            c.sent += 1
            s.received += 1
            if proto not in c.clients_of:
                c.clients_of.add(proto)
                self.dirty[c.ip] = None
        else:
            s.sent += 1
            c.received += 1
            if proto not in s.served or fl.server_port not in s.server_ports:
                s.served.add(proto)
                if len(s.server_ports) < self.max_values:
                    s.server_ports.add(fl.server_port)
                self.dirty[s.ip] = None
        facts = self._facts.get(proto)
        if facts is not None:
            facts(m, c, s)

    def _peer(self, a: _Asset, peer: str) -> None:
        if peer in a.peers:
            return
        if len(a.peers) >= self.max_peers:
            a.peers_capped = True
            return
        a.peers.add(peer)
        self.dirty[a.ip] = None

    def _act(self, a: _Asset, kind: str) -> None:
        n = a.activity.get(kind, 0)
        a.activity[kind] = n + 1
        if not n:  # a first of its kind can change the role
            self.dirty[a.ip] = None

    def _modbus(self, m: Message, c: _Asset, s: _Asset) -> None:
        f = m.fields
        unit = f.get("unit_id")
        if unit is not None:
            self._add(s, "modbus.unit_ids", unit)
            self._add(c, "modbus.unit_ids", unit)
        fc = f.get("function_code")
        if m.from_client:
            kind = "identify" if fc in (17, 43) else MODBUS_ACCESS.get(f.get("access") or "other", "other")
            self._act(c, kind)
            return
        objects = f.get("objects")
        if objects:
            for name, key in MODBUS_OBJECTS.items():
                v = objects.get(name)
                if isinstance(v, str):
                    self._set(s, key, v)
        sid = f.get("server_id")
        if sid:
            self._set(s, "modbus.server_id", sid)
            try:
                text = bytes.fromhex(sid).decode("ascii")
            except (ValueError, UnicodeDecodeError):
                text = ""
            if text.isprintable():
                self._set(s, "modbus.server_id_text", text.strip())
            if f.get("run_indicator") is not None:
                self._set(s, "modbus.run_indicator", bool(f["run_indicator"]))

    def _s7comm(self, m: Message, c: _Asset, s: _Asset) -> None:
        f = m.fields
        if m.from_client:
            if f.get("cotp_pdu_type") == COTP_CR:
                for key in ("rack", "slot"):
                    if f.get(key) is not None:
                        self._add(s, f"s7comm.{key}", f[key])
                if f.get("dst_tsap"):
                    self._add(s, "s7comm.tsaps", f["dst_tsap"])
                if f.get("connection_type_name"):
                    self._add(c, "s7comm.connection_types", f["connection_type_name"])
                return
            access = f.get("access")
            if access and access != "setup":
                self._act(c, S7_ACCESS.get(access, "other"))
            return
        if f.get("szl_id") is not None:
            for src, key in S7_SZL_FIELDS:
                v = f.get(src)
                if v is not None:
                    self._set(s, key, v)

    def _mqtt(self, m: Message, c: _Asset, s: _Asset) -> None:
        f = m.fields
        cid = f.get("clientid")
        if cid:
            self._add(c, "mqtt.client_ids", cid)
            self._add(s, "mqtt._clients", cid)  # counted on the broker, not listed
        user = f.get("username")
        if user:
            self._add(c, "mqtt.usernames", user)
        ver = f.get("protocol_version_name")
        if ver and ver != "unknown":
            self._add(c, "mqtt.protocol_versions", ver)
        if m.from_client:
            kind = MQTT_ACTIVITY.get(f.get("msgtype"))  # type: ignore[arg-type]
            if kind:
                self._act(c, kind)

    # -- reporting ---------------------------------------------------------------------------------------------
    @staticmethod
    def roles(a: _Asset) -> list[str]:
        roles = []
        if a.served & ICS_SERVER_PROTOCOLS:
            roles.append("plc")
        if "mqtt" in a.served:
            roles.append("mqtt_broker")
        act = a.activity
        if any(act.get(k) for k in ENGINEERING):
            roles.append("engineering_workstation")
        elif act.get("read"):
            roles.append("hmi")
        if "mqtt" in a.clients_of:
            roles.append("mqtt_client")
        return roles or ["unknown"]

    def _state(self, a: _Asset, action: str) -> AssetState:
        roles = self.roles(a)
        f: dict[str, Any] = {
            "role": roles[0], "roles": roles, "protocols": sorted(a.protocols),
            "peers": len(a.peers), "messages_sent": a.sent, "messages_received": a.received,
        }  # fmt: skip
        if a.peers_capped:
            f["peers_capped"] = True
        if a.server_ports:
            f["server_ports"] = sorted(a.server_ports)
        for k in ACTIVITIES:
            if a.activity.get(k):
                f[f"activity.{k}"] = a.activity[k]
        f.update(a.facts)
        for k, values in a.lists.items():
            if k == "mqtt._clients":
                if "mqtt" in a.served:
                    f["mqtt.clients"] = len(values)
            elif values:
                f[k] = sorted(values) if k.endswith(("unit_ids", "rack", "slot")) else list(values)
        self.documents += 1
        return AssetState(a.last, a.first, a.ip, f, action)

    def due(self, now: int) -> list[AssetState]:
        """Documents for hosts that changed and were not reported in the last ``update_seconds`` (capture time)."""
        out, self._pending = self._pending, []
        if self.interval is None or not self.dirty:
            return out
        for ip in list(self.dirty):
            a = self.assets.get(ip)
            if a is None:
                del self.dirty[ip]
            elif a.emitted is None or now - a.emitted >= self.interval:
                out.append(self._state(a, "discovered" if a.emitted is None else "changed"))
                a.emitted = now
                del self.dirty[ip]
        return out

    def final(self) -> list[AssetState]:
        """End of input: evicted hosts' pending documents, then every host once, in address order."""
        out, self._pending = self._pending, []
        self.dirty.clear()
        for ip in sorted(self.assets, key=_ip_key):
            out.append(self._state(self.assets[ip], "inventory"))
        return out

    def stats(self) -> dict[str, int]:
        return {"tracked": len(self.assets), "evicted": self.evicted, "documents": self.documents}


def _ip_key(ip: str) -> tuple[int, int, str]:
    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        return (9, 0, ip)
    return (a.version, int(a), "")
