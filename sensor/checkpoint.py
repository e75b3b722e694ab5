"""Resumable replays (issue 10): a checkpoint file says how far a replay got and how long its outputs were then.

The position is a record index in the replay's merged record order, which is deterministic (same files, same
order), so a resumed replay reads past that many records without processing them, truncates every NDJSON output
to its length at the checkpoint (whatever was written after it is written again) and appends from there. What
was written before the checkpoint is byte for byte what an uninterrupted replay writes; nothing is lost or
written twice. Elasticsearch needs nothing: document ids are deterministic, so a re-sent document is a no-op.
With ``--workers`` the parent checkpoints whenever every worker has passed a record, and a resume skips the same
records in every worker; a test checks it gives what one process gives when resuming from the same checkpoint.

Limit, as when any sensor restarts: flow and detector state is not saved, so flows open at the checkpoint are
picked up midstream after it (a request answered after the checkpoint is reported unanswered before it and its
answer unpaired after it; a threshold window straddling the checkpoint starts again).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

VERSION = 1


class CheckpointError(Exception):
    """A checkpoint that does not belong to this replay, or cannot be read or written."""


def _file_id(path: str) -> list[Any]:
    st = os.stat(path)
    return [path, st.st_size, st.st_mtime_ns]


@dataclass
class Checkpoint:
    path: str
    files: list[list[Any]]  # [path, size, mtime_ns] of every input, in replay order
    records: int = 0  # records of the merged stream fully processed and written
    outputs: dict[str, int] = field(default_factory=dict)  # NDJSON output path -> length at the checkpoint
    complete: bool = False
    every_s: float = 30.0
    _last: float = field(default_factory=time.monotonic, repr=False)

    @classmethod
    def open(cls, path: str, files: list[str], every_s: float = 30.0) -> Checkpoint:
        """The checkpoint at ``path`` for a replay of ``files``; a new one when there is none yet."""
        ids = [_file_id(f) for f in files]
        try:
            with open(path, "rb") as f:
                data = orjson.loads(f.read())
        except FileNotFoundError:
            return cls(path, ids, every_s=every_s)
        except (OSError, orjson.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: unreadable checkpoint: {e}") from None
        if not isinstance(data, dict) or data.get("version") != VERSION:
            raise CheckpointError(f"{path}: not a checkpoint of this sensor version")
        if data.get("files") != ids:
            raise CheckpointError(
                f"{path}: checkpoint of another replay (its input files, sizes or times differ); remove it to start over"
            )
        return cls(path, ids, int(data["records"]), dict(data["outputs"]), bool(data["complete"]), every_s)

    def due(self) -> bool:
        return time.monotonic() - self._last >= self.every_s

    def save(self, records: int, outputs: dict[str, int], complete: bool = False) -> None:
        """Write atomically (temporary file, fsync, rename): a crash leaves the old or the new checkpoint."""
        self.records, self.outputs, self.complete = records, outputs, complete
        body = orjson.dumps(
            {"version": VERSION, "files": self.files, "records": records, "outputs": outputs, "complete": complete}
        )
        tmp = f"{self.path}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise CheckpointError(f"{self.path}: cannot write checkpoint: {e.strerror or e}") from None
        self._last = time.monotonic()
