"""The Detector seam: every detector sees the same message stream and yields alerts."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from sensor.messages import Alert, Anomaly, Message


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
