"""Capture sources: pcap, pcapng and gzip-compressed files, several files or a directory in timestamp order.

A source yields raw records and knows nothing about protocols. Damage in a file ends that file, never the
replay: what was read before it is kept and the problem is reported with file and byte offset.
"""

from __future__ import annotations

import gzip
import heapq
import os
import struct
import zlib
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, BinaryIO

import numpy as np

from sensor.messages import PacketRef

# libpcap file format (draft-ietf-opsawg-pcap): magic -> (byte order, nanosecond resolution)
PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", False),
    b"\xa1\xb2\xc3\xd4": (">", False),
    b"\x4d\x3c\xb2\xa1": ("<", True),
    b"\xa1\xb2\x3c\x4d": (">", True),
}
PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"
GZIP_MAGIC = b"\x1f\x8b"
MAX_RECORD = 16 * 1024 * 1024  # larger than any real snap length: a bigger record length is corruption
CHUNK = 1 << 20
_PCAP_HEAD_COLS = np.arange(16)  # seconds, fraction, captured length, original length
_EPB_COLS = np.arange(4, 28)  # block length, interface, timestamp high and low, captured and original length
NEVER_TS = 1 << 126  # a timestamp later than any capture's

# A reader's record filter: skip(buffer, data offset, captured length, timestamp ns, linktype, record offset in
# the file) -> True to drop the record without building it (it is still counted in the SourceReport). Parallel
# replay shards with it, so a worker pays a few struct reads, not a Record, for each packet of another worker's.
Skip = Callable[[bytes, int, int, int, int, int], bool]
# A filter may also carry ``batch``, which the readers prefer for runs of plain packet records (pcap records,
# pcapng enhanced packet blocks of one interface): batch(buffer, buffer's file offset, records before the run,
# record offsets, frame offsets, timestamps ns, captured lengths, linktype) -> ascending indices of the records to
# build. The offsets, timestamps and lengths are numpy int64 arrays over the run's whole records; one call per
# buffer of about a megabyte, so the filter can be vectorised.
Batch = Callable[[bytes, int, int, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int], np.ndarray]


class CaptureError(Exception):
    """A capture that cannot be read at all (missing, wrong magic)."""


@dataclass(slots=True)
class Record(PacketRef):
    """A raw captured packet; it is its own PacketRef so no second object is built per packet."""

    ts: int  # nanoseconds since the epoch
    linktype: int
    data: bytes
    wirelen: int


@dataclass
class SourceReport:
    """What the sources saw: counted per file, problems stated with file and offset."""

    files: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    records: int = 0
    bytes: int = 0


def _open(path: str) -> BinaryIO:
    f = open(path, "rb")  # noqa: SIM115 - returned open to the caller
    if f.read(2) == GZIP_MAGIC:
        f.close()
        return gzip.open(path, "rb")  # type: ignore[return-value]
    f.seek(0)
    return f


class _Chunks:
    """A forward-only buffer over a file object; keeps the absolute offset for error messages."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.buf = b""
        self.pos = 0
        self.base = 0  # absolute offset of buf[0]
        self.eof = False

    def ensure(self, n: int) -> bool:
        """Make n bytes available at pos; False at end of file."""
        if len(self.buf) - self.pos >= n:
            return True
        if self.eof:
            return False
        rest = self.buf[self.pos :]
        self.base += self.pos
        parts = [rest]
        have = len(rest)
        while have < n:
            chunk = self.f.read(max(CHUNK, n - have))
            if not chunk:
                self.eof = True
                break
            parts.append(chunk)
            have += len(chunk)
        self.buf = b"".join(parts)
        self.pos = 0
        return have >= n

    @property
    def offset(self) -> int:
        return self.base + self.pos

    def remaining(self) -> int:
        return len(self.buf) - self.pos


def read_capture(path: str, report: SourceReport, skip: Skip | None = None, listed: bool = False) -> Iterator[Record]:
    """Records of one pcap or pcapng file (optionally gzip-compressed), less those ``skip`` drops.

    The file is added to ``report.files`` when opened, unless the caller ``listed`` it already."""
    try:
        f = _open(path)
        head = f.read(4)
    except OSError as e:
        raise CaptureError(f"{path}: cannot open: {e.strerror or e}") from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise CaptureError(f"{path}: bad gzip data: {e}") from None
    if not listed:
        report.files.append(path)
    try:
        if head in PCAP_MAGICS:
            yield from _read_pcap(path, f, head, report, skip)
        elif head == PCAPNG_SHB:
            yield from _read_pcapng(path, f, head, report, skip)
        else:
            raise CaptureError(f"{path}: not a pcap or pcapng capture (magic {head.hex() or 'empty'})")
    except (EOFError, gzip.BadGzipFile, OSError, zlib.error) as e:
        report.problems.append(f"{path}: read error after {report.records} records: {e}")
    finally:
        f.close()


def _read_pcap(path: str, f: BinaryIO, magic: bytes, report: SourceReport, skip: Skip | None) -> Iterator[Record]:
    order, nano = PCAP_MAGICS[magic]
    c = _Chunks(f)
    c.buf, c.base = magic, 0
    if not c.ensure(24):
        report.problems.append(f"{path}: truncated pcap file header at offset 0")
        return
    _, _major, _minor, _tz, _sig, snaplen, network = struct.unpack_from(order + "IHHiIII", c.buf, 0)
    c.pos = 24
    linktype = network & 0x0FFFFFFF  # upper bits carry FCS information (pcap spec section 6)
    if snaplen == 0:
        report.problems.append(f"{path}: snap length 0 in the file header; reading records by their own lengths")
    hdr = struct.Struct(order + "IIII")
    mult = 1 if nano else 1000
    frame = 0
    unpack = hdr.unpack_from
    batch: Batch | None = getattr(skip, "batch", None)
    caplen_at = struct.Struct(order + "I").unpack_from
    while True:
        # Fast inner loop over whole records already in the buffer; the outer loop refills and reports damage.
        buf, pos, base = c.buf, c.pos, c.base
        end = len(buf)
        first = frame
        nbytes = 0
        if batch is not None:  # the filter decides for the whole buffer at once: only the records it keeps are built
            offs: list[int] = []
            put = offs.append
            while pos <= end - 16:  # walk the headers; whether each record is whole and sane is checked below
                put(pos)
                pos += 16 + caplen_at(buf, pos + 8)[0]
            if offs:
                at = np.array(offs, np.int64)
                head = np.frombuffer(buf, np.uint8)[at[:, None] + _PCAP_HEAD_COLS].view(order + "u4").astype(np.int64)
                caplens = head[:, 2]
                whole = (caplens <= MAX_RECORD) & (at + 16 + caplens <= end)
                if not whole.all():
                    k = int(whole.argmin())
                    at, head, caplens = at[:k], head[:k], caplens[:k]
                if len(at):
                    frame += len(at)
                    nbytes = int(caplens.sum())
                    pos = int(at[-1] + 16 + caplens[-1])
                    ts = head[:, 0] * 1_000_000_000 + head[:, 1] * mult
                    yield from _built(path, buf, base, first, at, 16, ts, caplens, head[:, 3], linktype, batch)
                else:
                    pos = c.pos
        else:
            while pos + 16 <= end:
                sec, frac, caplen, wirelen = unpack(buf, pos)
                nxt = pos + 16 + caplen
                if nxt > end or caplen > MAX_RECORD:
                    break
                frame += 1
                nbytes += caplen
                ts = sec * 1_000_000_000 + frac * mult
                if skip is None or not skip(buf, pos + 16, caplen, ts, linktype, base + pos):
                    yield Record(path, frame, base + pos, ts, linktype, buf[pos + 16 : nxt], wirelen)
                pos = nxt
        c.pos = pos
        report.records += frame - first
        report.bytes += nbytes
        if not c.ensure(16):
            if c.remaining():
                report.problems.append(
                    f"{path}: truncated record header at offset {c.offset} ({c.remaining()} of 16 bytes)"
                )
            return
        off = c.offset
        caplen = unpack(c.buf, c.pos)[2]
        if caplen > MAX_RECORD:
            report.problems.append(f"{path}: corrupt record at offset {off}: captured length {caplen} is impossible")
            return
        if not c.ensure(16 + caplen):
            report.problems.append(
                f"{path}: truncated record at offset {off}: needs {caplen} bytes of data, {c.remaining() - 16} left"
            )
            return


def _built(
    path: str, buf: bytes, base: int, first: int, at: np.ndarray, hdr: int, ts: np.ndarray, caplen: np.ndarray,
    wirelen: np.ndarray, linktype: int, batch: Batch,
) -> Iterator[Record]:  # fmt: skip
    """The records of a run (offsets ``at``, frames ``hdr`` bytes in) that ``batch`` keeps, built from the arrays."""
    data_at = at + hdr
    idx = batch(buf, base, first, at, data_at, ts, caplen, linktype)
    if not len(idx):
        return
    d = data_at[idx]
    # Built by map, with no Python-level loop body: the columns, then one Record per kept row.
    datas = map(buf.__getitem__, map(slice, d.tolist(), (d + caplen[idx]).tolist()))
    yield from map(Record, repeat(path), (idx + (first + 1)).tolist(), (at[idx] + base).tolist(), ts[idx].tolist(),
                   repeat(linktype), datas, wirelen[idx].tolist())  # fmt: skip


def _tsresol_to_ns(v: int) -> tuple[int, int]:
    """if_tsresol (pcapng section 4.2) as (multiplier, divisor) to nanoseconds."""
    if v & 0x80:
        return 1_000_000_000, 1 << (v & 0x7F)
    if v <= 9:
        return 10 ** (9 - v), 1
    return 1, 10 ** (v - 9)


def _read_pcapng(path: str, f: BinaryIO, magic: bytes, report: SourceReport, skip: Skip | None) -> Iterator[Record]:
    """pcapng (draft-ietf-opsawg-pcapng): SHB, IDB, EPB, SPB and the obsolete PB; other blocks skipped."""
    c = _Chunks(f)
    c.buf, c.base = magic, 0
    order = "<"
    ifaces: list[tuple[int, int, int, int, int]] = []  # linktype, snaplen, mult, div, tsoffset (s)
    frame = 0
    batch: Batch | None = getattr(skip, "batch", None)
    while True:
        if ifaces:  # the whole enhanced packet blocks in the buffer, in one go; anything else below, block by block
            frame = yield from _epb_run(path, c, order, ifaces, frame, report, skip, batch)
        if not c.ensure(12):
            if c.remaining():
                report.problems.append(f"{path}: truncated block header at offset {c.offset}")
            return
        off = c.offset
        btype = c.buf[c.pos : c.pos + 4]
        if btype == PCAPNG_SHB:
            bom = c.buf[c.pos + 8 : c.pos + 12]
            if bom == b"\x4d\x3c\x2b\x1a":
                order = "<"
            elif bom == b"\x1a\x2b\x3c\x4d":
                order = ">"
            else:
                report.problems.append(f"{path}: bad byte-order magic {bom.hex()} in section header at offset {off}")
                return
            ifaces = []
        (btype_i, blen) = struct.unpack_from(order + "II", c.buf, c.pos)
        if blen < 12 or blen % 4 or blen > MAX_RECORD:
            report.problems.append(f"{path}: impossible block length {blen} at offset {off}")
            return
        if not c.ensure(blen):
            report.problems.append(f"{path}: truncated block at offset {off}: length {blen}, {c.remaining()} left")
            return
        body = c.pos + 8
        end = c.pos + blen - 4
        (trailer,) = struct.unpack_from(order + "I", c.buf, end)
        if trailer != blen:
            report.problems.append(f"{path}: block at offset {off}: trailing length {trailer} != {blen}")
            return
        buf = c.buf
        c.pos += blen
        if btype_i == 1:  # Interface Description Block
            if end - body < 8:
                report.problems.append(f"{path}: short interface block at offset {off}")
                return
            linktype, _, snaplen = struct.unpack_from(order + "HHI", buf, body)
            mult, div, tsoff = 1000, 1, 0
            for code, val in _options(buf, body + 8, end, order):
                if code == 9 and val:
                    mult, div = _tsresol_to_ns(val[0])
                elif code == 14 and len(val) == 8:
                    (tsoff,) = struct.unpack(order + "q", val)
            ifaces.append((linktype, snaplen, mult, div, tsoff))
        elif btype_i in (6, 2):  # Enhanced Packet Block, obsolete Packet Block
            if end - body < 20:
                report.problems.append(f"{path}: packet block at offset {off} too short ({blen} bytes)")
                return
            if btype_i == 6:
                iface, hi, lo, caplen, wirelen = struct.unpack_from(order + "IIIII", buf, body)
            else:
                iface, _drops, hi, lo, caplen, wirelen = struct.unpack_from(order + "HHIIII", buf, body)
            if iface >= len(ifaces):
                report.problems.append(f"{path}: packet block at offset {off} names undefined interface {iface}")
                return
            data_at = body + 20
            if data_at + caplen > end:
                report.problems.append(f"{path}: packet block at offset {off}: captured length {caplen} past block")
                return
            linktype, _, mult, div, tsoff = ifaces[iface]
            ts = (((hi << 32) | lo) * mult) // div + tsoff * 1_000_000_000
            frame += 1
            report.records += 1
            report.bytes += caplen
            if skip is None or not skip(buf, data_at, caplen, ts, linktype, off):
                yield Record(path, frame, off, ts, linktype, buf[data_at : data_at + caplen], wirelen)
        elif btype_i == 3:  # Simple Packet Block: interface 0, no timestamp
            if not ifaces:
                report.problems.append(f"{path}: simple packet block at offset {off} before any interface")
                return
            if end - body < 4:
                report.problems.append(f"{path}: simple packet block at offset {off} too short ({blen} bytes)")
                return
            (wirelen,) = struct.unpack_from(order + "I", buf, body)
            linktype, snaplen, *_ = ifaces[0]
            caplen = min(wirelen, end - body - 4, snaplen or wirelen)
            frame += 1
            report.records += 1
            report.bytes += caplen
            # SPB carries no timestamp; 0 keeps it first in a merge and deterministic.
            if skip is None or not skip(buf, body + 4, caplen, 0, linktype, off):
                yield Record(path, frame, off, 0, linktype, buf[body + 4 : body + 4 + caplen], wirelen)


def _epb_run(
    path: str, c: _Chunks, order: str, ifaces: list[tuple[int, int, int, int, int]], frame: int,
    report: SourceReport, skip: Skip | None, batch: Batch | None,
) -> Generator[Record, None, int]:  # fmt: skip
    """The enhanced packet blocks from ``c.pos`` that are whole in the buffer and sane (the checks of
    ``_read_pcapng``'s own path, which reads the first one that is not and reports it); the frame count after them.

    Where dumpcap and Wireshark write pcapng, nearly every block is one of these: one struct read each instead of
    the block-by-block path's five, and with ``batch`` (one interface, 64-bit timestamps) a buffer at a time."""
    buf, pos, base = c.buf, c.pos, c.base
    end = len(buf)
    first = frame
    if batch is not None:
        walk = struct.Struct(order + "II").unpack_from
        offs: list[int] = []
        put = offs.append
        while pos + 32 <= end:
            btype, blen = walk(buf, pos)
            if btype != 6 or blen < 32 or blen & 3 or pos + blen > end:
                break
            put(pos)
            pos += blen
        if not offs:
            return frame
        at = np.array(offs, np.int64)
        u8 = np.frombuffer(buf, np.uint8)
        head = u8[at[:, None] + _EPB_COLS].view(order + "u4").astype(np.int64)  # length, iface, hi, lo, cap, orig
        blen, iface, caplen = head[:, 0], head[:, 1], head[:, 4]
        trailer = u8[(at + blen - 4)[:, None] + np.arange(4)].view(order + "u4")[:, 0]
        if int(iface[0]) >= len(ifaces):  # an undefined interface: the block-by-block path reports it
            return frame
        linktype, _, mult, div, tsoff = ifaces[int(iface[0])]
        if abs(tsoff) >= 1 << 32:  # an absurd offset: nanoseconds would not fit in 64 bits
            return frame
        raw = (head[:, 2] << 32) | head[:, 3]
        good = (blen <= MAX_RECORD) & (trailer == blen) & (iface == iface[0]) & (caplen <= blen - 32)
        good &= (raw >= 0) & (raw < (1 << 63) // mult)  # the timestamp fits in 64 bits (else: Python ints)
        k = len(at) if good.all() else int(good.argmin())
        if k == 0:
            return frame
        at, caplen = at[:k], caplen[:k]
        ts = raw[:k] * mult // div + tsoff * 1_000_000_000
        c.pos = int(at[-1] + blen[k - 1])
        report.records += k
        report.bytes += int(caplen.sum())
        yield from _built(path, buf, base, first, at, 28, ts, caplen, head[:k, 5], linktype, batch)
        return first + k
    epb = struct.Struct(order + "IIIIIII").unpack_from
    length_at = struct.Struct(order + "I").unpack_from
    nif = len(ifaces)
    nbytes = 0
    while pos + 32 <= end:
        btype, blen, iface, hi, lo, caplen, wirelen = epb(buf, pos)
        if (btype != 6 or blen < 32 or blen & 3 or blen > MAX_RECORD or pos + blen > end or iface >= nif
                or caplen > blen - 32 or length_at(buf, pos + blen - 4)[0] != blen):  # fmt: skip
            break
        linktype, _, mult, div, tsoff = ifaces[iface]
        ts = (((hi << 32) | lo) * mult) // div + tsoff * 1_000_000_000
        frame += 1
        nbytes += caplen
        if skip is None or not skip(buf, pos + 28, caplen, ts, linktype, base + pos):
            yield Record(path, frame, base + pos, ts, linktype, buf[pos + 28 : pos + 28 + caplen], wirelen)
        pos += blen
    c.pos = pos
    report.records += frame - first
    report.bytes += nbytes
    return frame


def _options(buf: bytes, pos: int, end: int, order: str) -> Iterator[tuple[int, bytes]]:
    while pos + 4 <= end:
        code, length = struct.unpack_from(order + "HH", buf, pos)
        if code == 0:
            return
        val = buf[pos + 4 : pos + 4 + length]
        pos += 4 + ((length + 3) & ~3)
        yield code, val


CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap", ".pcap.gz", ".pcapng.gz", ".gz", ".dmp")


def expand_paths(paths: list[str]) -> list[str]:
    """Files as given; directories walked for captures, in name order for determinism."""
    out: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            for root, dirs, files in os.walk(p):
                dirs.sort()
                for name in sorted(files):
                    if name.lower().endswith(CAPTURE_SUFFIXES):
                        out.append(os.path.join(root, name))
        elif os.path.exists(p):
            out.append(p)
        else:
            raise CaptureError(f"{p}: no such file or directory")
    return out


def read_captures(
    paths: list[str], report: SourceReport, skip: Skip | None = None, shard: Any = None
) -> Iterator[Record]:
    """Every record of every capture, merged in timestamp order (ties keep file order, so a replay is stable).

    ``skip`` filters records inside the reader. For a single file the record number (``Record.frame``) is also
    the position in the replay (a caller counting skipped records relies on that). For several files it is
    honoured only with ``shard`` (parallel replay's SkipState), and only where one file is read alone: see
    ``_merge_lazily``; the position in the replay of each record handed out is then ``frame + shard.base``.
    """
    files = expand_paths(paths)
    if not files:
        raise CaptureError("no capture files found in " + ", ".join(paths))
    # Open every file first so that a missing or foreign file is a clear error before any output.
    for path in files:
        try:
            with _open(path) as f:
                head = f.read(4)
        except OSError as e:  # includes gzip.BadGzipFile
            raise CaptureError(f"{path}: cannot read: {e.strerror or e}") from None
        except (EOFError, zlib.error) as e:
            raise CaptureError(f"{path}: bad gzip data: {e}") from None
        if head not in PCAP_MAGICS and head != PCAPNG_SHB:
            raise CaptureError(f"{path}: not a pcap or pcapng capture (magic {head.hex() or 'empty'})")
    if len(files) == 1:
        if shard is not None:
            shard.path = files[0]  # the records' own string: run_shard compares it with theirs
        yield from read_capture(files[0], report, skip)
        return
    yield from _merge_lazily(files, report, skip if shard is not None else None, shard)


def _first_ts(path: str) -> int:
    """Timestamp of a file's first record; -1 when it has none (it is opened at once, to report why)."""
    for rec in read_capture(path, SourceReport()):
        return rec.ts
    return -1


def _merge_lazily(
    files: list[str], report: SourceReport, skip: Skip | None = None, shard: Any = None
) -> Iterator[Record]:
    """The order of ``heapq.merge`` by timestamp (ties: earlier file first), opening each file only when its
    first record is due: a directory of thousands of rotated captures holds one or two open at a time, not all.

    With ``skip`` and ``shard``: a file opened while no other is open (rotated captures: every file) is read
    through ``skip`` until the merge must interleave it with the next file. Its records before the next file's
    first timestamp (``shard.horizon``) come before every record of the later files, so their positions in the
    replay are the records before the file (``shard.base``) plus their frame numbers, dropped or not; from its
    first record at or past the horizon the filter drops nothing more (it sets ``shard.crossed``). Records handed
    out while files interleave are numbered one by one (``shard.base`` is set for each)."""
    report.files += files  # in the order given, as if all were opened now
    pending = sorted((_first_ts(p), i, p) for i, p in enumerate(files))
    pending.reverse()  # pop() from the end: earliest first
    heap: list[tuple[int, int, Record, Iterator[Record]]] = []
    r = 0  # with shard: position in the replay of the last record handed out or dropped before it
    while heap or pending:
        if shard is not None and not heap:  # alone: read through the filter up to the next file's first record
            _, i, path = pending.pop()
            due = pending[-1][:2] if pending else None
            base = report.records  # every earlier file is read to its end
            shard.path, shard.base, shard.crossed = path, base, False
            shard.horizon = due[0] if due is not None else NEVER_TS
            it = read_capture(path, report, skip, listed=True)
            for rec in it:
                if due is not None and (rec.ts, i) >= due:
                    heapq.heappush(heap, (rec.ts, i, rec, it))
                    r = base + rec.frame - 1  # the next record handed out, this one or the next file's, follows
                    break
                yield rec
            continue
        while pending and (not heap or pending[-1][:2] <= heap[0][:2]):
            _, i, path = pending.pop()
            it = read_capture(path, report, listed=True)
            for rec in it:
                heapq.heappush(heap, (rec.ts, i, rec, it))
                break
        if not heap:
            continue
        _, i, rec, it = heap[0]
        if shard is not None:
            r += 1
            shard.base = r - rec.frame
        yield rec
        for nxt in it:
            heapq.heapreplace(heap, (nxt.ts, i, nxt, it))
            break
        else:
            heapq.heappop(heap)
