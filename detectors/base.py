"""The Detector seam: every detector sees the same message stream and yields alerts."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from sensor.messages import Alert, Anomaly, Message


@dataclass(frozen=True, slots=True)
class Part:
    """What a detector's half in a worker of a parallel replay sends the detector in the parent (``on_part``).
    A detector that can be split offers ``shard(tick_ns)``: see AnomalyDetector.shard and sensor.parallel."""

    kind: int
    data: Any


class Detector(Protocol):
    name: str

    def on_message(self, msg: Message | Anomaly) -> Iterable[Alert]:
        """Called for every decoded message and anomaly, in capture order."""
        ...

    def on_time(self, ts: int) -> Iterable[Alert]:
        """Capture time moved on (about once a second): close windows, release aggregated alerts."""
        ...

    def close(self) -> Iterable[Alert]:
        """End of input: release everything still held."""
        ...
