"""In-memory sink for tests and for the report."""

from __future__ import annotations

from sensor.outputs.base import Document


class MemorySink:
    def __init__(self) -> None:
        self.docs: list[Document] = []
        self.opened = self.closed = False

    def open(self) -> None:
        self.opened = True

    def write(self, batch: list[Document]) -> None:
        self.docs.extend(batch)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True
