"""Newline-delimited JSON file sink (``-`` is standard output)."""

from __future__ import annotations

import os
import sys
from typing import BinaryIO

import orjson

from sensor.outputs.base import Document

_OPTS = orjson.OPT_APPEND_NEWLINE


class NdjsonSink:
    accepts_json = True  # the pipeline may hand it ready NDJSON lines (bytes) instead of documents

    def __init__(self, path: str, resume_at: int | None = None) -> None:
        self.path = path
        self.resume_at = resume_at  # a resumed replay: keep this many bytes of the file, append after them
        self.f: BinaryIO | None = None

    def open(self) -> None:
        if self.path == "-":
            self.f = sys.stdout.buffer
        elif self.resume_at is not None and os.path.exists(self.path):
            self.f = open(self.path, "r+b", buffering=1 << 20)  # noqa: SIM115 - closed in close()
            self.f.truncate(self.resume_at)
            self.f.seek(self.resume_at)
        else:
            self.f = open(self.path, "wb", buffering=1 << 20)  # noqa: SIM115 - closed in close()

    def position(self) -> int:
        """Bytes written so far, all on disk (for a checkpoint)."""
        assert self.f is not None
        self.f.flush()
        os.fsync(self.f.fileno())
        return self.f.tell()

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
