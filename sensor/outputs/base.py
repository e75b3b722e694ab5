"""The Sink seam: every output (file, Elasticsearch, report, memory) has the same small interface."""

from __future__ import annotations

from typing import Any, Protocol

Document = dict[str, Any]


class Sink(Protocol):
    """A sink with ``accepts_json = True`` also has ``write_lines(lines: list[bytes])``: when every event sink
    has it, the pipeline serialises events itself and hands over ready NDJSON lines."""

    def open(self) -> None: ...

    def write(self, batch: list[Document]) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...
