"""The Sink seam: every output (file, Elasticsearch, report, memory) has the same small interface."""

from __future__ import annotations

from typing import Any, Protocol

Document = dict[str, Any]


class Sink(Protocol):
    def open(self) -> None: ...

    def write(self, batch: list[Document]) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...
