"""The Decoder seam (one per protocol), after Suricata's app-layer parsers and Zeek's analyzers."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Any, Protocol

from sensor.messages import Anomaly, FieldRegistry, FlowInfo, Message, PacketRef


class Probe(enum.Enum):
    YES = "yes"
    NO = "no"
    NEED_MORE = "need_more"


class ProtocolMismatch(Exception):
    """Raised *inside* a decoder's feed to say "this flow is not my protocol"; the flow stage catches it,
    reports it as an anomaly and detaches the decoder (Zeek's analyzer violation). Never escapes the pipeline."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Decoder(Protocol):
    name: str  # "modbus": also the ECS network.protocol value and the ics.<name>.* namespace
    transport: str  # "tcp" or "udp"
    registry: FieldRegistry

    def probe(self, data: bytes, from_client: bool) -> Probe:
        """Cheap content heuristic on the first bytes of a stream, for flows on unexpected ports."""
        ...

    def new_state(self, flow: FlowInfo) -> Any:
        """Per-flow state: framing buffers for both directions, outstanding requests, session facts."""
        ...

    def feed(
        self, state: Any, from_client: bool, data: bytes, ts: int, packet: PacketRef, gap: bool
    ) -> Iterable[Message | Anomaly]:
        """In-order stream bytes of one direction. ``gap`` says bytes were lost before ``data``."""
        ...

    def close(self, state: Any, ts: int, packet: PacketRef) -> Iterable[Message | Anomaly]:
        """End of flow (FIN, RST, idle eviction, end of capture): unanswered requests, partial PDUs."""
        ...

    def stats(self, state: Any) -> dict[str, int]:
        """Per-flow counters folded into the sensor stats at close (unanswered requests, ...)."""
        ...
