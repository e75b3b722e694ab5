"""Shared message types that join the stages.

Per-message types use ``slots=True`` but not ``frozen=True``: building a frozen dataclass costs about four
times as much on CPython 3.11 and these are built once per packet or PDU.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import Any


@dataclass(slots=True)
class PacketRef:
    """Where a message came from, so an analyst can go back to the packets."""

    file: str | None  # capture path, None on a live interface
    frame: int  # 1-based packet number in that file (tshark's frame.number)
    offset: int  # byte offset of the record in the (uncompressed) capture, -1 when unknown


@dataclass(slots=True)
class FlowInfo:
    """One transport conversation as seen by the flow table; ``client`` opened it (or is our best guess)."""

    client_ip: str
    client_port: int
    server_ip: str
    server_port: int
    transport: str  # "tcp" | "udp"
    community_id: str
    flow_id: int  # sensor-local sequence number, stable for a deterministic replay
    vlan: tuple[int, ...] = ()
    midstream: bool = False  # opening handshake not seen

    def __reduce__(self) -> tuple[type[FlowInfo], tuple[Any, ...]]:
        """Pickled as its constructor call: a parallel replay ships about one per message to the parent, and a
        slots dataclass's default (copyreg with __getstate__/__setstate__) costs 2.5 times as much each way."""
        return FlowInfo, _flow_values(self)


_flow_values = attrgetter(*(f.name for f in fields(FlowInfo)))


@dataclass(slots=True)
class Message:
    """One decoded protocol PDU. ``fields`` use the protocol's field registry names (``ics.<protocol>.<name>``)."""

    ts: int  # capture time, nanoseconds since the epoch
    protocol: str
    flow: FlowInfo
    from_client: bool
    fields: dict[str, Any]
    packet: PacketRef
    duration_ns: int | None = None  # request-to-response latency, on responses


@dataclass(slots=True)
class Anomaly:
    """Malformed or suspicious input of a protocol: counted, reported and matched by rules, never raised.

    ``name`` comes from the closed set that the protocol's registry declares (``modbus.invalid_length``).
    """

    ts: int
    protocol: str
    flow: FlowInfo | None
    from_client: bool
    name: str
    reason: str
    packet: PacketRef
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Field:
    """One protocol field: the single place that names it for rules, templates, docs and tests."""

    name: str
    type: str  # ECS/Elasticsearch type: keyword, long, boolean, float, ip, date, object, flattened
    description: str
    wireshark: str | None = None  # Wireshark display filter field, when one exists


class FieldRegistry:
    """The fields and anomaly names one protocol may emit."""

    def __init__(
        self, protocol: str, fields: list[Field], anomalies: dict[str, str], action_field: str = "function_name"
    ) -> None:
        self.protocol = protocol
        self.fields = {f.name: f for f in fields}
        self.anomalies = anomalies  # name -> description
        self.action_field = action_field  # the field whose value becomes ECS event.action

    def path(self, name: str) -> str:
        return f"ics.{self.protocol}.{name}"

    def paths(self) -> dict[str, Field]:
        return {self.path(n): f for n, f in self.fields.items()}


SEVERITY_SCORES = {"low": 21, "medium": 47, "high": 73, "critical": 99}  # ECS event.severity, as Elastic's rules


@dataclass(frozen=True, slots=True)
class Alert:
    """A detection: which rule or baseline deviation fired, on which message, how severe, which technique.

    ``count``, ``first_ts`` and ``last_ts`` aggregate repeats of the same rule on the same flow within the
    aggregation window, so a flood is one alert with a count rather than a flood of alerts.
    """

    ts: int
    rule_id: str
    rule_name: str
    description: str
    severity: str  # low | medium | high | critical
    techniques: tuple[str, ...]  # MITRE ATT&CK for ICS technique ids
    attack_version: str
    detector: str  # "rules" | "baseline" | "model"
    message: Message | Anomaly
    references: tuple[str, ...] = ()
    count: int = 1
    first_ts: int = 0
    last_ts: int = 0
    explanation: str | None = None
    score: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    rule_version: str = "1"
    rule_category: str = ""
