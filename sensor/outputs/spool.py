"""A bounded on-disk queue: documents wait here while the cluster is unreachable or slow, and survive a restart.

Layout (one directory per sensor; a lock file keeps a second process out)::

    <dir>/lock
    <dir>/alerts/0000000000000001.ndjson ...   alerts, stats and assets (the "alerts" lane)
    <dir>/alerts/cursor                       {"seq", "offset", "index"}: the next record to deliver
    <dir>/events/...                          protocol events and decode errors (the "events" lane)

Each lane is a sequence of append-only segment files of one record per line, read in order from its cursor.
A segment is fsync'ed when it is rotated (and on flush/close); every append is pushed to the OS, so a killed
process loses nothing, a power cut at most the unsynced tail. The cursor is replaced atomically after each
delivered batch; a crash between delivery and cursor update resends that batch, which is harmless because
documents carry deterministic ids.

Drop policy when the cap (total bytes of segment files) is reached: whole segments are deleted, oldest first,
from the events lane; the alerts lane loses its oldest segments only once the events lane is empty. Every drop
is counted per lane, logged, and reported in ``stats()``. The alerts lane is also drained first.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("sensor.outputs.spool")

LANES = ("alerts", "events")  # drain order; drop order is the reverse
_SUFFIX = ".ndjson"


class SpoolError(OSError):
    pass


@dataclass
class _Segment:
    seq: int
    path: Path
    size: int = 0  # bytes written and pushed to the OS
    count: int = 0  # records


@dataclass
class _Lane:
    name: str
    dir: Path
    segments: list[_Segment] = field(default_factory=list)
    cursor_seq: int = 0
    cursor_offset: int = 0
    cursor_index: int = 0
    writer: Any = None  # open binary file of the last segment, or None
    dropped: int = 0
    dropped_bytes: int = 0


@dataclass(frozen=True)
class Batch:
    """Records read from one segment of one lane; ``commit(batch)`` moves the cursor past them."""

    lane: str
    records: list[bytes]
    seq: int
    start: int
    end: int
    end_index: int


class Spool:
    def __init__(self, directory: str | os.PathLike[str], max_bytes: int, segment_bytes: int = 16 << 20) -> None:
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        # Drops are per segment: keep segments a small fraction of the cap so a drop loses little.
        self.segment_bytes = max(4096, min(segment_bytes, max_bytes // 8 or 4096))
        self.lock = threading.RLock()
        self.lanes = {name: _Lane(name, self.dir / name) for name in LANES}
        self._lockfile: Any = None
        self.appended = 0
        self.total_bytes = 0
        self.closed = True

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def open(self) -> None:
        """Take the directory lock, find segments and cursors left by an earlier run, repair a torn last line."""
        with self.lock:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._lockfile = open(self.dir / "lock", "a+b")  # noqa: SIM115 - held until close()
            try:
                fcntl.flock(self._lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._lockfile.close()
                self._lockfile = None
                raise SpoolError(f"spool {self.dir} is in use by another sensor process") from None
            self.total_bytes = 0
            for lane in self.lanes.values():
                self._load_lane(lane)
            self.closed = False
            pending = self.pending()
            if pending["records"]:
                log.info("spool %s: %d documents (%d bytes) left by an earlier run", self.dir, pending["records"], pending["bytes"])

    def _load_lane(self, lane: _Lane) -> None:
        lane.dir.mkdir(exist_ok=True, mode=0o700)
        segs = []
        for p in sorted(lane.dir.glob("*" + _SUFFIX)):
            try:
                seq = int(p.name[: -len(_SUFFIX)])
            except ValueError:
                continue
            segs.append(_Segment(seq, p))
        segs.sort(key=lambda s: s.seq)
        for i, s in enumerate(segs):
            data = s.path.read_bytes()
            if data and not data.endswith(b"\n"):
                keep = data.rfind(b"\n") + 1
                log.warning("spool %s: dropping a torn last record (%d bytes) of %s", self.dir, len(data) - keep, s.path.name)
                with open(s.path, "r+b") as f:
                    f.truncate(keep)
                data = data[:keep]
            s.size, s.count = len(data), data.count(b"\n")
            if i == len(segs) - 1:
                lane.writer = open(s.path, "ab")  # noqa: SIM115 - closed on rotation or close()
        lane.segments = segs
        self.total_bytes += sum(s.size for s in segs)
        lane.cursor_seq, lane.cursor_offset, lane.cursor_index = 0, 0, 0
        try:
            c = orjson.loads((lane.dir / "cursor").read_bytes())
            lane.cursor_seq, lane.cursor_offset, lane.cursor_index = int(c["seq"]), int(c["offset"]), int(c["index"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        self._normalise_cursor(lane)

    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            for lane in self.lanes.values():
                if lane.writer is not None:
                    lane.writer.flush()
                    os.fsync(lane.writer.fileno())
                    lane.writer.close()
                    lane.writer = None
                self._save_cursor(lane)
            if self._lockfile is not None:
                fcntl.flock(self._lockfile, fcntl.LOCK_UN)
                self._lockfile.close()
                self._lockfile = None
            self.closed = True

    def sync(self) -> None:
        """Make everything appended so far durable (fsync of the open segments)."""
        with self.lock:
            for lane in self.lanes.values():
                if lane.writer is not None:
                    lane.writer.flush()
                    os.fsync(lane.writer.fileno())

    # -- writing -------------------------------------------------------------------------------------------------
    def append(self, lane_name: str, records: list[bytes]) -> None:
        """Append records (each one line ending in a newline), dropping old segments first if over the cap."""
        if not records:
            return
        with self.lock:
            if self.closed:
                raise SpoolError(f"spool {self.dir} is closed")
            lane = self.lanes[lane_name]
            for rec in records:
                n = len(rec)
                if self.total_bytes + n > self.max_bytes and not self._make_room(n):
                    lane.dropped += 1
                    lane.dropped_bytes += n
                    log.warning("spool %s full: a %d-byte %s record larger than the cap was dropped", self.dir, n, lane_name)
                    continue
                seg = lane.segments[-1] if lane.segments and lane.writer is not None else None
                if seg is None or seg.size >= self.segment_bytes:
                    seg = self._rotate(lane)
                lane.writer.write(rec)
                seg.size += n
                seg.count += 1
                self.total_bytes += n
                self.appended += 1
            if lane.writer is not None:
                lane.writer.flush()  # to the OS: a killed process loses nothing

    def _rotate(self, lane: _Lane) -> _Segment:
        if lane.writer is not None:
            lane.writer.flush()
            os.fsync(lane.writer.fileno())
            lane.writer.close()
            lane.writer = None
        seq = max(lane.segments[-1].seq if lane.segments else 0, lane.cursor_seq) + 1
        seg = _Segment(seq, lane.dir / f"{seq:016d}{_SUFFIX}")
        lane.writer = open(seg.path, "ab")  # noqa: SIM115 - closed on rotation or close()
        lane.segments.append(seg)
        dfd = os.open(lane.dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return seg

    def _make_room(self, n: int) -> bool:
        """Delete whole segments, oldest first, events lane before alerts lane, until ``n`` more bytes fit."""
        for name in reversed(LANES):
            lane = self.lanes[name]
            while lane.segments and self.total_bytes + n > self.max_bytes:
                self._drop_segment(lane, lane.segments[0])
            if self.total_bytes + n <= self.max_bytes:
                return True
        return self.total_bytes + n <= self.max_bytes

    def _drop_segment(self, lane: _Lane, seg: _Segment) -> None:
        lost = seg.count - (lane.cursor_index if seg.seq == lane.cursor_seq else 0)
        lost_bytes = seg.size - (lane.cursor_offset if seg.seq == lane.cursor_seq else 0)
        if seg is lane.segments[-1] and lane.writer is not None:
            lane.writer.close()
            lane.writer = None
        lane.segments.remove(seg)
        self.total_bytes -= seg.size
        seg.path.unlink(missing_ok=True)
        if lost > 0:
            lane.dropped += lost
            lane.dropped_bytes += lost_bytes
            log.warning(
                "spool %s full (cap %d bytes): dropped the %d oldest %s documents (%d bytes); %d dropped so far",
                self.dir, self.max_bytes, lost, lane.name, lost_bytes, lane.dropped,
            )  # fmt: skip
        self._normalise_cursor(lane)

    # -- reading -------------------------------------------------------------------------------------------------
    def _normalise_cursor(self, lane: _Lane) -> None:
        """Point the cursor at an existing segment, deleting segments that are fully delivered (except the open one)."""
        while lane.segments:
            first = lane.segments[0]
            if lane.cursor_seq < first.seq:
                lane.cursor_seq, lane.cursor_offset, lane.cursor_index = first.seq, 0, 0
            consumed = lane.cursor_seq > first.seq or lane.cursor_offset >= first.size
            if not consumed:
                break
            if first is lane.segments[-1] and lane.writer is not None:  # all delivered: start afresh on next append
                lane.writer.close()
                lane.writer = None
            lane.segments.pop(0)
            self.total_bytes -= first.size
            first.path.unlink(missing_ok=True)

    def read(self, max_records: int, max_bytes: int) -> Batch | None:
        """The next records at the cursor of the first non-empty lane (alerts first), without consuming them."""
        with self.lock:
            if self.closed:
                return None
            for lane in (self.lanes[n] for n in LANES):
                self._normalise_cursor(lane)
                if not lane.segments:
                    continue
                seg = lane.segments[0]
                start = lane.cursor_offset if lane.cursor_seq == seg.seq else 0
                avail = seg.size - start
                if avail <= 0:
                    continue
                with open(seg.path, "rb") as f:
                    f.seek(start)
                    data = f.read(min(avail, max(max_bytes, 1)))
                    if b"\n" not in data:  # one record larger than max_bytes: take it whole
                        data += f.readline()
                lines = data.split(b"\n")
                lines.pop()  # the part after the last newline: incomplete or empty
                records = [ln + b"\n" for ln in lines[:max_records]]
                end = start + sum(len(r) for r in records)
                return Batch(lane.name, records, seg.seq, start, end, lane.cursor_index + len(records))
            return None

    def commit(self, batch: Batch) -> None:
        """Consume a delivered batch. A no-op if its segment was dropped meanwhile (the cursor moved on)."""
        with self.lock:
            if self.closed:
                return
            lane = self.lanes[batch.lane]
            if lane.cursor_seq != batch.seq or lane.cursor_offset != batch.start:
                return
            lane.cursor_offset, lane.cursor_index = batch.end, batch.end_index
            self._normalise_cursor(lane)
            self._save_cursor(lane)

    def _save_cursor(self, lane: _Lane) -> None:
        tmp = lane.dir / "cursor.tmp"
        tmp.write_bytes(orjson.dumps({"seq": lane.cursor_seq, "offset": lane.cursor_offset, "index": lane.cursor_index}))
        os.replace(tmp, lane.dir / "cursor")

    # -- accounting ----------------------------------------------------------------------------------------------
    def pending(self) -> dict[str, int]:
        """Records and bytes not yet delivered, over both lanes."""
        with self.lock:
            records = nbytes = 0
            for lane in self.lanes.values():
                for s in lane.segments:
                    at = s.seq == lane.cursor_seq
                    records += s.count - (lane.cursor_index if at else 0)
                    nbytes += s.size - (lane.cursor_offset if at else 0)
            return {"records": records, "bytes": nbytes}

    def empty(self) -> bool:
        return self.pending()["records"] == 0

    def stats(self) -> dict[str, Any]:
        with self.lock:
            p = self.pending()
            return {
                "pending": p["records"], "pending_bytes": p["bytes"], "disk_bytes": self.total_bytes,
                "max_bytes": self.max_bytes, "appended": self.appended,
                "dropped": {n: lane.dropped for n, lane in self.lanes.items()},
                "dropped_bytes": {n: lane.dropped_bytes for n, lane in self.lanes.items()},
            }  # fmt: skip
