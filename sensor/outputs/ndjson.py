"""Newline-delimited JSON file sink (``-`` is standard output)."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import BinaryIO

import orjson

from sensor.outputs.base import Document

_OPTS = orjson.OPT_APPEND_NEWLINE
WRITEV_MIN = 256  # lines; a smaller batch goes through the file's buffer
IOV_MAX = min(os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024, 1024)  # buffers per writev


class NdjsonSink:
    accepts_json = True  # the pipeline may hand it ready NDJSON lines (write_lines) instead of documents

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
        dumps = orjson.dumps
        self.write_lines([d if type(d) is bytes else dumps(d, option=_OPTS) for d in batch])

    def write_lines(self, lines: list[bytes]) -> None:
        """Ready NDJSON lines (what the pipeline hands a sink that ``accepts_json``)."""
        assert self.f is not None
        if len(lines) >= WRITEV_MIN:  # a pipeline batch: one writev, no joined copy of a megabyte
            self.write_views(lines)
        else:
            self.f.write(b"".join(lines))

    def write_views(self, lines: Sequence[bytes | memoryview]) -> None:
        """Write ready NDJSON lines (views of a parallel replay's shared ring) with writev: no joined copy."""
        assert self.f is not None
        self.f.flush()  # the buffer goes out first, then the lines after it, straight to the descriptor
        fd = self.f.fileno()
        for i in range(0, len(lines), IOV_MAX):
            write_all(fd, lines[i : i + IOV_MAX])

    def flush(self) -> None:
        if self.f is not None:
            self.f.flush()

    def close(self) -> None:
        if self.f is not None:
            self.f.flush()
            if self.f is not sys.stdout.buffer:
                self.f.close()
            self.f = None


def write_all(fd: int, parts: Sequence[bytes | memoryview]) -> None:
    """Every byte of ``parts`` (at most IOV_MAX) to ``fd``: one writev, then the rest of a partial write (a pipe,
    a full disk) in order."""
    done = os.writev(fd, parts)
    if done < sum(map(len, parts)):
        rest = memoryview(b"".join(parts))[done:]
        while rest:
            rest = rest[os.write(fd, rest) :]
