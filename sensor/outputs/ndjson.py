"""Newline-delimited JSON file sink (``-`` is standard output)."""

from __future__ import annotations

import sys
from typing import BinaryIO

import orjson

from sensor.outputs.base import Document

_OPTS = orjson.OPT_APPEND_NEWLINE


class NdjsonSink:
    accepts_json = True  # the pipeline may hand it ready NDJSON lines (bytes) instead of documents

    def __init__(self, path: str) -> None:
        self.path = path
        self.f: BinaryIO | None = None

    def open(self) -> None:
        if self.path == "-":
            self.f = sys.stdout.buffer
        else:
            self.f = open(self.path, "wb", buffering=1 << 20)  # noqa: SIM115 - closed in close()

    def write(self, batch: list[Document]) -> None:
        assert self.f is not None
        dumps = orjson.dumps
        self.f.write(b"".join([d if type(d) is bytes else dumps(d, option=_OPTS) for d in batch]))

    def flush(self) -> None:
        if self.f is not None:
            self.f.flush()

    def close(self) -> None:
        if self.f is not None:
            self.f.flush()
            if self.f is not sys.stdout.buffer:
                self.f.close()
            self.f = None
