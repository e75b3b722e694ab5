"""Multi-process replay (issue 10): flows sharded over worker processes, documents identical to one process.

How the output stays byte for byte the same as ``Pipeline.run`` in one process:

- Every worker reads every record, but the reader itself drops the Ethernet/IPv4/TCP packets of the other
  workers' flows before building them: a buffer (about a megabyte) of pcap records or pcapng enhanced packet
  blocks at a time, with the headers walked once and the flow hash computed for all of them with numpy
  (``_select``); any other record one at a time (``make_skip``: a few struct reads, no ``Record``). Every other
  record is frame-decoded by every worker, and sharded after IP reassembly, so fragments of one datagram go where
  the datagram goes. The hash (``shard_of``) is symmetric in the endpoints and stable across processes (integer
  arithmetic, never the salted ``hash()``). Its 64 buckets go to the workers by a map the parent weighs on the
  capture's first packets before forking (``weigh_shards``), so a few long connections are split evenly.
- Every worker advances capture time on every record that decodes to a segment, exactly as
  ``FlowTable.process`` does, so idle sweeps, ticks and the end-of-capture close happen at the same records: a
  dropped record only moves the clock (``SkipState.max_dropped``); one that would start a sweep is passed on, and
  a tick due at a dropped record is handed over with the record's position (``SkipState.ticks``).
- Each emitted document gets a sort key ``(record index * 4 + phase, flow creation index)``. Phase: 0 detector
  tick, 1 idle sweep, 2 the record's own flow, 3 end of capture. One process sweeps and closes flows in creation
  order (flow table insertion order, ``flow_id`` order); a worker does the same for its flows, so the creation
  record index of the flow is the tie-break across workers. Within one worker the stream is already in order and
  the parent's merge is a stable sort, so no per-document sequence number is needed.
- The parent merges the per-worker streams by key as they arrive (bounded buffers: a worker far ahead is not read,
  its pipe fills and it waits), and writes the sinks.
- Detectors (the rule engine: threshold rules count across flows, so they cannot run sharded) run once, in the
  parent, on the merged stream of the messages they could match; each worker ships only those (the rule
  engine's own index and predicates decide; an unknown detector gets every message), plus worker 0's ticks. A
  message that matches no rule leaves the engine's state unchanged, so the alerts are those of one process.
  Any detector may offer ``could_match(msg) -> bool`` (False only when the message cannot change its state) to be
  sent less; without it, it is sent every message, which is correct and slower.
- A detector may split itself (``shard(tick_ns)``: the anomaly model): one half runs in every worker on its own
  messages and ticks, and sends keyed ``Part``s that the other half, in the parent, merges (``on_part``). Its
  state must then be per host pair: the flow hash leaves the ports out (``Shards.by_host``), so all connections
  between two hosts go to one worker; and the workers tick at its period (aligned, as every tick:
  ``pipeline.next_tick``), so its windows close at the same records in every worker.

In a worker a flow's ``flow_id`` is the index of the record that created it: unique across workers (the rule
engine aggregates per flow id, the mapper caches per flow id), in creation order (the order one process sweeps
and closes flows in), and never in a document.
Workers are forked (the compiled rules hold closures; fork also shares the loaded config without re-parsing).

Cost (bench/bench_replay.py --workers 2): a worker pays about 0.3 us for each packet of the others' flows, and
each document is copied into a shared ring and merged once more in the parent; see the README for the figures. Stats
``frames`` and the packet and byte counts come from worker 0 (every worker sees every record); other counters
are summed. With several input files the reader's filter works on each file read while no other is open
(rotated captures: all of them), up to its first record at or past the next file's first timestamp; records of
files that interleave are built by every worker (``source._merge_lazily``).

Known differences: when the flow-table cap is hit (stats ``tcp.evicted_cap`` > 0) each worker evicts from its own
table, so which flows are evicted can differ from one process; likewise the model's per-pair tables (remembered
register values, last messages, pairs per window). Both are reported as problems of the replay.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import fcntl
import functools
import mmap
import multiprocessing as mp
import os
import pickle
import struct
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from multiprocessing.connection import wait
from operator import attrgetter, itemgetter
from typing import Any, NamedTuple

import numpy as np
import orjson
from numpy.lib.stride_tricks import sliding_window_view

from sensor.config import Config
from sensor.frames import Segment
from sensor.messages import Alert, Anomaly, Message, PacketRef
from sensor.outputs.base import Document
from sensor.outputs.ecs import Observer
from sensor.outputs.ndjson import NdjsonSink, write_all
from sensor.pipeline import BATCH, DETECT_BATCH, TICK_NS, Outputs, Pipeline, run_detectors
from sensor.pipeline import next_tick as next_tick_at
from sensor.source import NEVER_TS, CaptureError, Record, Skip, SourceReport, read_captures

Msg = Message | Anomaly
_pipeline_on_message = Pipeline._on_message
END = 1 << 50  # record index of the end-of-capture phase: after every real record
PH_TICK, PH_SWEEP, PH_OWN, PH_END = 0, 1, 2, 3
WATERMARK_EVERY = 0xFFFF  # a worker reports progress at least every 64k records, even with nothing to send
MAX_AHEAD = 4 * BATCH  # documents buffered per worker in the parent before it stops reading that worker
PIPE_BYTES = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_MIX_A, _MIX_B = 0x9E3779B1, 0x85EBCA77  # odd 32-bit multipliers (golden ratio; murmur3's) for the flow hash
BUCKETS = 64  # the flow hash's buckets; a Shards map gives each one a worker (weigh_shards)
SAMPLE_PACKETS = 1 << 16  # packets at the head of the capture that weigh the buckets
# Ethernet + IPv4 + TCP fields for the fast path: ethertype, version/IHL, total length, flags/fragment offset,
# protocol, source, destination, source port, destination port, TCP data offset.
_ETH_IP_TCP = struct.Struct("!12xHBxH2xHxB2xIIHH8xB")
_TCP = struct.Struct("!HHIIBBH")  # as sensor.frames
# Message: header, then for DATA n keys (int64 hi), n keys (int64 c), n line sizes (int64), the lines themselves
# unless they were put in the worker's shared ring at the header's ring position (no ring, or a batch too big for
# it), then pickled detector items; for DONE and FAILED a pickle.
# The ring: event lines are most of the bytes (about 600 a document); through a pipe they were copied four times
# and the parent's pipe reads alone cost a microsecond a line. The worker copies a batch into an anonymous shared
# mapping; the parent writes from views of it and then publishes how far it has consumed (``ctrl``), which is
# the only thing a worker waits for when its ring is full.
RING_BYTES = 16 << 20
_HDR = struct.Struct("<BqqqqqqQ")  # kind, watermark, n, lines bytes, pickle bytes, ring position, progress
DATA, DONE, FAILED = 0, 1, 2
_POS = struct.Struct("<q")
_NL = orjson.OPT_APPEND_NEWLINE
_MSG_FIELDS = tuple(f.name for f in dataclasses.fields(Message))
_msg_values = attrgetter(*_MSG_FIELDS)
_PACKET_AT = _MSG_FIELDS.index("packet")
_ITEM_KEY = itemgetter(0, 1)


Mark = Callable[[int, Callable[[], None]], None]


class ParallelError(Exception):
    """A worker failed; the message says which and why."""


class Shards(NamedTuple):
    """Which worker each bucket of the flow hash goes to, and what the hash reads: the endpoints' addresses and
    ports (a flow), or with ``by_host`` the addresses only, so that every connection between two hosts goes to
    one worker (a detector half in the workers keeps per host pair state: AnomalyDetector.shard)."""

    workers: tuple[int, ...]
    by_host: bool = False


@functools.cache
def even_shards(n: int, by_host: bool = False) -> Shards:
    """Buckets split evenly over ``n`` workers, in order (for 2, 4, 8 workers: the top bits of the hash)."""
    return Shards(tuple(b * n // BUCKETS for b in range(BUCKETS)), by_host)


BUCKET_IDS = Shards(tuple(range(BUCKETS)))  # a map that answers the bucket itself


def shards_of(n: int | Shards) -> Shards:
    return even_shards(n) if isinstance(n, int) else n


def shard_of(src: bytes, dst: bytes, sport: int, dport: int, proto: int, n: int | Shards) -> int:
    """Worker index of a flow (``n`` workers, buckets split evenly, or a ``Shards`` map): symmetric in the two
    endpoints, the same in every process."""
    return _mix(int.from_bytes(src, "big") + int.from_bytes(dst, "big"), sport + dport, proto, shards_of(n))


def _mix(addresses: int, ports: int, proto: int, shards: Shards) -> int:
    """The flow hash from the sums (symmetric) of the endpoints' addresses and ports: folded to 32 bits, mixed by
    multiplication, its top 6 bits the bucket (``k * BUCKETS >> 32``), which ``shards`` gives a worker (the ports
    count for nothing ``by_host``). XOR of
    the endpoints cancelled the common prefix of a client and server in one subnet and split the bench captures
    53/47; this splits them 50.0/50.0. Integer arithmetic only, never the salted ``hash()``."""
    while addresses >> 32:  # IPv6, or an IPv4 sum's carry
        addresses = (addresses & 0xFFFFFFFF) ^ (addresses >> 32)
    if shards.by_host:
        ports = 0
    return shards.workers[(((addresses * _MIX_A + ports * _MIX_B + proto) & 0xFFFFFFFF) * BUCKETS) >> 32]


def weigh_shards(files: list[str], n: int, by_host: bool = False) -> Shards:
    """A bucket map that balances the capture's head: the packets that carry data (TCP payload: what the decoders
    read; a bare ACK costs little) of each bucket in the first SAMPLE_PACKETS of the first file, the heaviest
    bucket first to the least loaded worker, then the empty buckets to the workers with the fewest (flows that
    start later spread as evenly as before).

    Why: a plant's capture is often a few long connections (pollers), and a hash splits a few flows unevenly: the
    held-out scenario capture's 8 connections went 212,000 / 69,000 packets to 2 workers; weighed, the split is
    even when the heavy flows fall in different buckets. Weighed by all packets, the same capture's workers got
    142,264 / 138,346 packets but 140,000 / 112,600 carrying data, and spent 3.0 / 2.2 s of CPU (with the model):
    half the packets of some MQTT connections are bare ACKs. Every worker gets the same map (computed once, before the
    fork), so any map gives the documents of one process. Read through the reader's vectorised filter, which
    drops every record: about 0.02 s for the sample. A capture that cannot be read gets the even map (the workers
    report the error)."""
    counts = np.zeros(BUCKETS, np.int64)

    def batch(
        buf: bytes, base: int, first: int, at: np.ndarray, data_at: np.ndarray, ts: np.ndarray,
        caplen: np.ndarray, linktype: int,
    ) -> np.ndarray:  # fmt: skip
        if linktype == 1 and len(at):
            fast, bucket, data = _flow_buckets(buf, data_at, caplen, by_host)
            counts[:] += np.bincount(bucket[fast & data], minlength=BUCKETS)
        if first + len(at) >= SAMPLE_PACKETS:
            raise _Sampled
        return np.empty(0, np.intp)

    seen = [0]
    ids = BUCKET_IDS._replace(by_host=by_host)

    def skip(buf: bytes, at: int, caplen: int, ts: int, linktype: int, offset: int) -> bool:
        k = _fast_shard(buf, at, caplen, ids) if linktype == 1 else -1
        if k >= 0 and (buf[at + 16] << 8 | buf[at + 17]) > 20 + (buf[at + 46] >> 4) * 4:  # carries data
            counts[k] += 1
        seen[0] += 1
        if seen[0] >= SAMPLE_PACKETS:
            raise _Sampled
        return True

    skip.batch = batch  # type: ignore[attr-defined]
    try:
        deque(read_captures(files[:1], SourceReport(), skip), 0)
    except _Sampled:
        pass
    except (CaptureError, OSError):
        return even_shards(n, by_host)
    loads, owned, out = [0] * n, [0] * n, [0] * BUCKETS
    for b in sorted(range(BUCKETS), key=lambda b: (-int(counts[b]), b)):
        c = int(counts[b])
        w = min(range(n), key=(lambda i: (loads[i], owned[i], i)) if c else (lambda i: (owned[i], loads[i], i)))
        out[b] = w
        loads[w] += c
        owned[w] += 1
    return Shards(tuple(out), by_host)


class _Sampled(Exception):
    """weigh_shards has read its sample."""


def _fast_shard(buf: bytes, at: int, caplen: int, shards: Shards) -> int:
    """Worker of an Ethernet frame at ``buf[at:]`` on the fast path (IPv4 without options, not a fragment, TCP with
    sane lengths), read straight from the bytes; -1 for any other frame (FrameDecoder and segment_shard decide)."""
    if caplen < 54:
        return -1
    etype, vihl, total, frag, proto, src, dst, sport, dport, doff = _ETH_IP_TCP.unpack_from(buf, at)
    if (
        etype != 0x0800 or vihl != 0x45 or proto != 6 or frag & 0x3FFF or doff < 0x50
        or 20 + (doff >> 4) * 4 > total or total + 14 > caplen
    ):  # fmt: skip
        return -1
    return _mix(src + dst, sport + dport, 6, shards)


def segment_shard(seg: Segment, n: int | Shards) -> int:
    return shard_of(seg.src, seg.dst, seg.sport, seg.dport, seg.proto, n)


class SkipState:
    """What the reader's filter (``make_skip``) and ShardPipeline.run_shard share.

    ``thr``: a dropped record must not be later than this (so every idle sweep and detector tick happens at the
    record where one process would run it: such records are passed on); ``max_dropped``: the latest dropped
    timestamp (it advances the flow table's clock: at once with the per-record filter, at the end with the batch
    filter); ``left``: records that may still be dropped before a progress watermark is due; ``ts``/``offset``:
    the last dropped record, which may be the capture's last (end-of-capture messages point at it).

    Several files (``read_captures`` with ``shard``): ``path`` is the file being read through the filter,
    ``base`` the records of the replay before its first (a record's position is ``frame + base``), ``horizon``
    the next file's first timestamp: from the file's first record at or past it (``crossed``) nothing is dropped,
    as its records may interleave with the next file's. One file: ``base`` 0, no horizon.
    """

    __slots__ = ("base", "crossed", "horizon", "left", "max_dropped", "mine", "offset", "owner", "path", "report",
                 "start", "thr", "ticks", "ts")  # fmt: skip

    def __init__(self, path: str, report: SourceReport) -> None:
        self.path, self.report = path, report
        self.thr = -1  # the first record is always passed on
        self.left = WATERMARK_EVERY
        self.ts = 0
        self.offset = -1
        self.owner: ShardPipeline | None = None  # the worker, whose clock the filter reads and moves (run_shard)
        self.start = 0  # records a resumed replay passes over (run_shard): never dropped, so they are counted
        # Offsets of records the filter found to be this worker's (fast path): run_shard need not hash them again.
        # One set, updated in place: the batch filter's for its buffer, the per-record filter's last record.
        self.mine: set[int] = set()
        self.max_dropped = 0
        # (record position, time) of the ticks due at records the batch filter dropped, in order: run_shard runs
        # each before the next record it sees (the buffer's last record is always passed on, so none is left).
        self.ticks: deque[tuple[int, int]] = deque()
        self.base, self.horizon, self.crossed = 0, NEVER_TS, False


def make_skip(me: int, n: int | Shards, st: SkipState) -> Skip:
    """The reader's filter for worker ``me`` of ``n``: drops fast-path packets of the other workers' flows
    (``_fast_shard``), unless their time matters (``st.thr``, ``st.left``)."""

    mine = st.mine
    shards = shards_of(n)
    table = np.asarray(shards.workers)  # for _select, once

    def skip(buf: bytes, at: int, caplen: int, ts: int, linktype: int, offset: int) -> bool:
        if linktype != 1 or ts > st.thr:
            return False
        if ts >= st.horizon or st.crossed:  # several files: this one may interleave with the next from here on
            st.crossed = True
            mine.clear()
            return False
        k = _fast_shard(buf, at, caplen, shards)
        if k < 0:
            return False
        if k == me:
            mine.clear()
            mine.add(offset)
            return False
        st.left -= 1
        if st.left < 0:
            return False
        if ts > st.max_dropped:
            st.max_dropped = ts
            flows = st.owner.flows if st.owner is not None else None
            if flows is not None and ts > flows.now:  # what one process's clock does at this record
                flows.now = ts
        st.ts, st.offset = ts, offset
        return True

    skip.batch = lambda buf, base, first, at, data_at, ts, caplen, linktype: _select(  # type: ignore[attr-defined]
        buf, base, first, at, data_at, ts, caplen, linktype, me, table, shards.by_host, st
    )
    return skip


_ROW = 48  # bytes read per frame: Ethernet, IPv4 and TCP up to the TCP data offset (byte 46)
_PAD = bytes(_ROW)


def _select(
    buf: bytes, base: int, first: int, at: np.ndarray, data_at: np.ndarray, ts: np.ndarray, caplen: np.ndarray,
    linktype: int, me: int, shards: np.ndarray, by_host: bool, st: SkipState,  # shards: the workers as an array
) -> np.ndarray:  # fmt: skip
    """``make_skip`` for a whole buffer of records (``source.Batch``), vectorised: which ones worker ``me`` must see.

    The same decisions as the per-record filter, with the clock rules simulated across the buffer: a record is
    passed on when it is this worker's, off the fast path, later than the time up to which nothing can happen
    (the next idle sweep), or the buffer's last (so the worker's watermark keeps moving). Where a worker that
    ticks has a tick due at a record dropped here, the tick is handed over instead (``st.ticks``): a tick needs
    the record's position and time only, and passing such records on (every third one of the held-out capture,
    for the worker that ticks every second) cost that worker about 0.1 s of its 2.5. After a passed record the
    sweep time is advanced as the worker will advance it; after a passed record off the fast path (a segment or
    not: unknown here) it is not, and every later record of the buffer past the old time is passed on: never
    fewer records than needed.

    The dropped records' time is not handed over record by record: it only matters to a sweep decision, and a
    record that sweeps is later than every record dropped before it (the clock is never ahead of the sweep time),
    so the worker's clock takes the latest dropped time at the end (``max_dropped``). ``st.mine``: the offsets of
    this worker's own fast-path records in the buffer, which run_shard need not hash again.
    """
    count = len(at)
    owner = st.owner
    first += st.base  # position in the replay (several files)
    if linktype != 1 or count == 0 or owner is None or first + count <= st.start or st.crossed:
        st.mine.clear()
        return np.arange(count)  # a resumed replay passes over the records before its start: all of them, as read
    fast, bucket, _ = _flow_buckets(buf, data_at, caplen, by_host)
    mine = fast & (shards[bucket] == me)
    keep = ~fast | mine
    keep[-1] = True
    if first < st.start:
        keep[: st.start - first] = True
    if st.horizon != NEVER_TS:
        past = ts >= st.horizon
        h = int(past.argmax())
        if past[h]:  # several files: the next one's records may interleave with this one's from here on
            keep[h:] = True
            st.crossed = True
    s0 = max(st.start - first, 0)  # the first record run_shard processes (a resumed replay passes over the others)
    # The sweeps, as the worker will run them over this buffer (its state now: every earlier record is processed).
    # A sweep is due at the first record past ``last_sweep + sweep_ns``: its time then moves the clock (which is
    # never past that time), so that record sweeps. Found by bisecting the running maximum of the times.
    last_sweep, sweep_ns = owner.flows.last_sweep, owner.flows.sweep_ns
    latest = np.maximum.accumulate(ts[s0:])
    while True:
        thr = last_sweep + sweep_ns
        i = s0 + int(np.searchsorted(latest, thr, "right"))
        if i >= count:
            break
        keep[i] = True
        if not fast[i]:  # maybe a segment, maybe not: stop simulating, pass on all that is later than thr
            keep[i:] |= ts[i:] > thr
            break
        last_sweep = int(ts[i])
    if owner.tick_ns:  # ticks depend on every record's time only: found at once, handed over where dropped
        due = np.flatnonzero(_ticks(ts[s0:], owner._next_tick, owner.tick_ns) & ~keep[s0:]) + s0
        st.ticks.extend(zip((due + (first + 1)).tolist(), ts[due].tolist(), strict=True))
    gone = np.flatnonzero(~keep)
    if len(gone):
        st.max_dropped = max(st.max_dropped, int(ts[gone].max()))
        st.ts, st.offset = int(ts[gone[-1]]), base + int(at[gone[-1]])
    st.mine.clear()
    st.mine.update((at[mine] + base).tolist())
    return np.flatnonzero(keep)


def _ticks(ts: np.ndarray, tick_at: int, period: int) -> np.ndarray:
    """Which of these records tick, the next tick being due at ``tick_at`` (pipeline.next_tick with ``period``):
    a record ticks when its whole period is past every earlier one's (ticks are aligned, so the latest tick's
    period is the latest of any record's). A Python loop from tick to tick cost the worker that ticks 0.15 s of
    its 3.1 s on the held-out capture, where it ticks at every third record."""
    if not len(ts):
        return np.zeros(0, bool)
    sec = ts // period
    before = np.empty_like(sec)
    before[0] = tick_at // period - 1
    np.maximum.accumulate(sec[:-1], out=before[1:])
    np.maximum(before, before[0], out=before)
    return sec > before


def _flow_buckets(
    buf: bytes, data_at: np.ndarray, caplen: np.ndarray, by_host: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For the frames at ``data_at``: which are on the fast path (as ``_fast_shard``), the bucket of their flow
    hash (``_mix``'s) and which carry TCP payload (both meaningless off the fast path)."""
    if int(data_at[-1]) + _ROW > len(buf):  # the last frame is shorter than a row: read zeros past the buffer
        buf += _PAD
    rows = sliding_window_view(np.frombuffer(buf, np.uint8), _ROW)[data_at]  # (count, 48) bytes, one copy
    be16, be32 = np.dtype(">u2"), np.dtype(">u4")
    total = rows[:, 16:18].view(be16)[:, 0].astype(np.int64)
    doff = rows[:, 46].astype(np.int64)
    fast = (
        (caplen >= 54) & (rows[:, 12:14].view(be16)[:, 0] == 0x0800) & (rows[:, 14] == 0x45) & (rows[:, 23] == 6)
        & ((rows[:, 20:22].view(be16)[:, 0] & 0x3FFF) == 0) & (doff >= 0x50) & (20 + (doff >> 4) * 4 <= total)
        & (total + 14 <= caplen)
    )  # fmt: skip
    addresses = rows[:, 26:30].view(be32)[:, 0].astype(np.uint64) + rows[:, 30:34].view(be32)[:, 0]
    addresses = (addresses & 0xFFFFFFFF) ^ (addresses >> 32)  # an IPv4 sum carries at most one bit
    ports = rows[:, 34:36].view(be16)[:, 0].astype(np.uint64) + rows[:, 36:38].view(be16)[:, 0]
    if by_host:
        ports[:] = 0
    mixed = (addresses * np.uint64(_MIX_A) + ports * np.uint64(_MIX_B) + np.uint64(6)) & np.uint64(0xFFFFFFFF)
    return fast, ((mixed * np.uint64(BUCKETS)) >> np.uint64(32)).astype(np.intp), total > 20 + (doff >> 4) * 4


# ---------------------------------------------------------------------------------------------------------------
# What the parent's detectors need to see
# ---------------------------------------------------------------------------------------------------------------


def _rule_engine_test(d: Any) -> Callable[[Msg], bool] | None:
    """Could message m change the rule engine's state? Mirrors RuleEngine.on_message's index lookup.

    Uses ``could_match`` when the engine offers it; else its index and compiled predicates; None when neither
    is there (then every message is shipped: correct, only slower).
    """
    cm = getattr(d, "could_match", None)
    if callable(cm):
        return cm
    try:
        from detectors.rules import RuleEngine
    except ImportError:  # pragma: no cover - detectors ship with the sensor
        return None
    if not isinstance(d, RuleEngine) or not all(hasattr(d, a) for a in ("_msg", "_anom", "_anom_any")):
        return None
    msg_index, anom_index, anom_any = d._msg, d._anom, d._anom_any

    def test(m: Msg) -> bool:
        try:
            if type(m) is Message:
                node: Any = msg_index.get(m.protocol)
                if node is None:
                    return False
                f = m.fields
                while type(node) is list:  # index tree: [field, {value: subtree}, default subtree]
                    field, by_value, default = node
                    node = by_value.get(f.get(field), default)
            else:
                node = anom_index.get(m.protocol, anom_any)
                while type(node) is list:
                    node = node[1].get(m.name, node[2])
            return bool(node) and any(c.pred is None or c.pred(m) for c in node)
        except Exception:  # the engine's layout changed under us: ship, which is always correct
            return True

    return test


def detector_filter(detectors: Iterable[Any]) -> Callable[[Msg], bool] | None:
    """A test of which messages the parent's detectors must see; None when there are no detectors."""
    tests: list[Callable[[Msg], bool]] = []
    for d in detectors:
        t = _rule_engine_test(d)
        if t is None:
            return lambda m: True
        tests.append(t)
    if not tests:
        return None
    if len(tests) == 1:
        return tests[0]
    return lambda m: any(t(m) for t in tests)


# ---------------------------------------------------------------------------------------------------------------
# Worker
# ---------------------------------------------------------------------------------------------------------------


class _LineSink:
    """The worker's only event sink: NDJSON lines (the bytes NdjsonSink would write), kept for the next send."""

    accepts_json = True

    def __init__(self) -> None:
        self.lines: list[bytes] = []

    def open(self) -> None:
        pass

    def write(self, batch: list[Any]) -> None:
        dumps = orjson.dumps
        self.write_lines([d if type(d) is bytes else dumps(d, option=_NL) for d in batch])

    def write_lines(self, lines: list[bytes]) -> None:
        """What the pipeline calls: it serialises events itself for a sink that ``accepts_json``."""
        self.lines += lines

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def _packetless(m: Message) -> Message:
    """m pointing at its packet without the packet's bytes (a Record is its own PacketRef), to ship. Built from
    its values: ``dataclasses.replace`` costs three times as much."""
    p = m.packet
    vals = list(_msg_values(m))
    vals[_PACKET_AT] = PacketRef(p.file, p.frame, p.offset)
    return Message(*vals)


class ShardPipeline(Pipeline):
    """One worker's pipeline: every record advances time, only this shard's flows are processed."""

    def __init__(
        self, config: Config, observer: Observer | None, index: int, n: int | Shards, fd: int | None,
        events: bool, ship: Callable[[Msg], bool] | None, ticks: bool, scorer: Any = None, tick_ns: int = 0,
    ) -> None:  # fmt: skip
        self.sink = _LineSink()
        super().__init__(config, Outputs(events=[self.sink] if events else []), detectors=(), observer=observer)
        self.index, self.shards, self.fd = index, shards_of(n), fd  # n workers (buckets split evenly) or a map
        self.ship, self.ticks = ship, ticks  # ticks: ship the ticks (worker 0, for the parent's detectors)
        # A detector's per-pair half (AnomalyDetector.shard's PairScorer), fed in batches (_score), and the period
        # this worker ticks at (a record where one is due is passed on, or its tick handed over, by the filter):
        # a second for the one that ships ticks, the scorer's window for the others (its windows close at those
        # ticks), else none.
        self.scorer = scorer
        self.tick_ns = TICK_NS if ticks else tick_ns
        self._scoring: list[tuple[int, int, Any]] = []
        self._scored: list[tuple[int, int, Any]] = []  # its Parts, keyed as the shipped items
        self.keyed = events  # one key per event document
        self.hi = 0  # record index * 4 + phase of what is being processed
        self.keys_hi: list[int] = []
        self.keys_c: list[int] = []
        self.det: list[tuple[int, int, Any]] = []
        self.sent: list[bytes] = []  # batches, when there is no connection (tests)
        self.ring: mmap.mmap | None = None  # set by _work: this worker's ring and the parent's consumed positions
        self.ctrl: mmap.mmap | None = None
        self.skip_state: SkipState | None = None
        self.wpos = 0  # absolute ring position of the next byte written (ring offset: wpos % RING_BYTES)
        self.progress = (0, 0)
        self.failure: Exception | None = None

    def _portable(self, m: Msg) -> Any:
        """A copy of m for the parent: no packet bytes (the flow id is already unique across workers)."""
        p = m.packet
        if type(m) is Message:  # a plain tuple: pickling a slots dataclass costs ten times as much
            vals = list(_msg_values(m))
            vals[_PACKET_AT] = (p.file, p.frame, p.offset)
            return tuple(vals)  # type: ignore[return-value]
        return dataclasses.replace(m, packet=PacketRef(p.file, p.frame, p.offset))  # type: ignore[arg-type]

    def _on_message(self, m: Msg) -> None:
        try:
            c = 0 if self.hi & 3 == PH_OWN or m.flow is None else m.flow.flow_id  # own flow: one per record
            if self.keyed:
                self.keys_hi.append(self.hi)
                self.keys_c.append(c)
            ship = self.ship
            if ship is not None and ship(m):
                self.det.append((self.hi, c, self._portable(m)))
            if self.scorer is not None and type(m) is Message:
                self._scoring.append((self.hi, c, m))
                if len(self._scoring) >= DETECT_BATCH:
                    self._score()
        except Exception as e:  # the flow table would count it as a decoder exception: fail the worker instead
            self.failure = self.failure or e
        _pipeline_on_message(self, m)

    def _score(self) -> None:
        """The scorer over the pending messages and ticks (in batches, as pipeline.run_detectors and for the same
        reason); its Parts join the shipped items at ``send``."""
        items, self._scoring = self._scoring, []
        if items:
            self.scorer.score(items, self._scored, _packetless)

    def _flush_events(self) -> None:
        super()._flush_events()
        if len(self.sink.lines) >= BATCH:
            self.send(self.hi >> 2)

    def send(self, watermark: int, kind: int = DATA) -> None:
        """Ship what is buffered; every document of a record before ``watermark`` has been shipped."""
        if self.scorer is not None:
            self._score()
            if self._scored:  # in key order with the rest: a stable sort of two sorted runs (a merge)
                self.det += self._scored
                self.det.sort(key=_ITEM_KEY)
                self._scored = []
        if self.failure is not None:
            raise self.failure
        lines, self.sink.lines = self.sink.lines, []
        n = len(lines)
        hi, c = self.keys_hi[:n], self.keys_c[:n]
        del self.keys_hi[:n], self.keys_c[:n]
        det, self.det = self.det, []
        sizes = np.fromiter(map(len, lines), np.int64, n)
        total = int(sizes.sum())
        if n and self.ring is not None and total <= RING_BYTES // 4:
            at = self._put(lines, total)
            blob = sizes.tobytes()
        else:  # the lines themselves follow their sizes
            at = -1
            blob = sizes.tobytes() + b"".join(lines)
        dpk = pickle.dumps(det, pickle.HIGHEST_PROTOCOL) if det else b""
        head = _HDR.pack(kind, watermark, n, len(blob), len(dpk), at, *self.progress)
        parts = [head, np.array(hi, np.int64).tobytes(), np.array(c, np.int64).tobytes(), blob, dpk]
        if self.fd is not None:
            write_all(self.fd, parts)
        else:
            self.sent.append(b"".join(parts))

    def _put(self, lines: list[bytes], n: int) -> int:
        """Copy a batch of ``n`` bytes into the ring (never across its end); its absolute position. Waits while the
        parent has not consumed enough: it consumes in key order, and the batches it holds back are bounded
        (_merge). Line by line with ``mmap.write``: a third cheaper than joining them first and copying that."""
        assert self.ring is not None and self.ctrl is not None
        start = self.wpos
        off = start % RING_BYTES
        if off + n > RING_BYTES:
            start += RING_BYTES - off
            off = 0
        unpack, ctrl, at = _POS.unpack_from, self.ctrl, 8 * self.index
        while start + n - unpack(ctrl, at)[0] > RING_BYTES:
            time.sleep(0.0002)
        self.ring.seek(off)
        deque(map(self.ring.write, lines), 0)
        self.wpos = start + n
        return start

    def _tick_at(self, r: int, ts: int) -> None:
        """A tick is due at record ``r`` (time ``ts``): shipped for the parent's detectors (worker 0), given to the
        scorer; the filter may drop records up to the next one."""
        c = self.counters
        if c.first_ts is None:
            c.first_ts = ts
        self._next_tick = next_tick_at(ts, self.tick_ns or TICK_NS)
        if self.ticks:
            self.det.append(((r << 2) | PH_TICK, 0, ts))
        if self.scorer is not None:
            self._scoring.append(((r << 2) | PH_TICK, 0, ts))
        if self.skip_state is not None:
            self._set_thr()

    def _sweep(self, ts: int, rec: Record, r: int) -> None:
        """The idle sweep FlowTable.process would run at this record (every worker runs it at the same records)."""
        self.hi = (r << 2) | PH_SWEEP
        self.flows.sweep(ts, rec)
        self._set_thr()

    def _set_thr(self) -> None:
        """Tell the reader's filter the last time it may drop a record at: before the next sweep or tick."""
        st = self.skip_state
        if st is not None:
            thr = self.flows.last_sweep + self.flows.sweep_ns
            st.thr = min(thr, self._next_tick - 1) if self.tick_ns else thr

    def run_shard(self, records: Iterable[Record], st: SkipState | None = None, start: int = 0) -> None:
        """Pipeline.run for one shard. With ``st`` the reader already dropped most of the other shards' packets
        (``make_skip``): the record index is then ``Record.frame`` and the dropped records' time is in ``st``.
        ``start``: records already done (a resumed replay): without ``st`` the caller left them out of
        ``records``; with it they are passed over here, before they touch any state."""
        self.skip_state = st
        mine: set[int] = set()
        if st is not None:
            st.owner, st.start, mine = self, start, st.mine
        decode = self.frames.decode
        flows = self.flows
        process = flows.process
        sweep_ns = flows.sweep_ns
        me, shards = self.index, self.shards
        c = self.counters
        packets = c.packets
        nbytes = c.bytes
        next_wm = start + WATERMARK_EVERY
        rec: Record | None = None
        r = start
        before = 0  # bytes of the records passed over (resumed, with st)
        next_tick = self._next_tick
        tcp = _TCP.unpack_from
        dropped_ticks = st.ticks if st is not None else deque()
        for rec in records:
            if st is None:
                r += 1
                nbytes += len(rec.data)
            else:
                r = rec.frame + st.base
                if r <= start:  # the filter drops nothing before start (st.thr is -1, st.start)
                    before += len(rec.data)
                    rec = None
                    continue
                if dropped_ticks and dropped_ticks[0][0] < r:
                    while dropped_ticks and dropped_ticks[0][0] < r:
                        self._tick_at(*dropped_ticks.popleft())
                    next_tick = self._next_tick
            if r >= next_wm:
                next_wm = r + WATERMARK_EVERY
                self._flush_events()
                self.progress = (r - start, nbytes if st is None else st.report.bytes)
                self.send(r)
                if st is not None:
                    st.left = WATERMARK_EVERY
            data = rec.data
            ts = rec.ts
            if ts >= next_tick:
                c.packets, c.bytes = r - start, nbytes
                self._tick_at(r, ts)
                next_tick = self._next_tick
            # The fast path (Ethernet, IPv4 without options, TCP) is sharded from the raw bytes, and a Segment is
            # built only for this worker's packets (as FrameDecoder's fast path builds it); any other frame goes
            # through FrameDecoder.
            if rec.offset in mine and rec.file == st.path:  # type: ignore[union-attr]  # the filter found it ours
                k = me
            else:
                k = _fast_shard(data, 0, len(data), shards) if rec.linktype == 1 else -1
            if k == me:
                sport, dport, seq, ack, _off, flags, _win = tcp(data, 34)
                seg: Segment | None = Segment(ts, data[26:30], data[30:34], sport, dport, 6, flags, seq, ack,
                                              data[34 + (data[46] >> 4) * 4 : 14 + ((data[16] << 8) | data[17])])  # fmt: skip
            elif k >= 0:  # another worker's fast-path packet: only its time
                seg = None
            else:
                seg = decode(ts, rec.linktype, data)
                if seg is None:  # not a segment: time does not move
                    continue
                if segment_shard(seg, shards) != me:
                    seg = None
            if ts > flows.now:  # FlowTable.process's own first step, here so sweeps get their phase
                flows.now = ts
                if ts - flows.last_sweep > sweep_ns:
                    self._sweep(ts, rec, r)
            if seg is None:
                continue
            self.hi = (r << 2) | PH_OWN
            flows.next_id = r - 1  # a flow created now gets this record's index as its id
            process(seg, rec)
        if st is None and r > start:
            packets = r - start
        last: PacketRef | None = rec
        if st is not None:
            flows.now = max(flows.now, st.max_dropped)
            packets, nbytes = st.report.records - start, st.report.bytes - before
            if st.offset >= 0 and (rec is None or r < st.report.records):  # the last record was dropped
                last = PacketRef(st.path, st.report.records - st.base, st.offset)
                c.last_ts = max(c.last_ts or 0, st.ts)
                if c.first_ts is None:
                    c.first_ts = st.ts
                rec = None
        c.packets, c.bytes = packets, nbytes
        self.progress = (packets, nbytes)
        if rec is not None:
            c.last_ts = max(c.last_ts or 0, rec.ts)
            if c.first_ts is None:
                c.first_ts = rec.ts
        if last is not None:
            self._last_packet = last

    def finish(self) -> dict[str, Any]:
        """End of capture: close every flow (phase END), ship the rest; the shard's stats."""
        self.hi = (END << 2) | PH_END
        stats = self.close()
        if self.scorer is not None:  # after the messages of the flows closed at the end (they sort before it)
            self._scoring.append((self.hi, 1 << 62, None))
        self.send(END + 1)
        return stats


def _work(
    index: int, shards: Shards, files: list[str], config: Config, observer: Observer | None, events: bool,
    ship: Callable[[Msg], bool] | None, ticks: bool, fd: int, ring: mmap.mmap | None, ctrl: mmap.mmap | None,
    start: int = 0, scorer: tuple[Callable[[], Any], int] | None = None,
) -> None:  # fmt: skip
    """Worker process body: replay one shard, stream its documents to the parent, then its stats."""
    try:
        report = SourceReport()
        make, period = scorer or (None, 0)
        p = ShardPipeline(config, observer, index, shards, fd, events, ship, ticks, make and make(), period)
        p.ring, p.ctrl = ring, ctrl
        p.open()
        st = SkipState("", report)  # read_captures sets its path to each file it reads through the filter
        records: Iterable[Record] = read_captures(files, report, make_skip(index, shards, st), st)
        p.run_shard(records, st, start)
        stats = p.finish()
        done = {
            "stats": stats, "last_ts": p.counters.last_ts, "files": report.files, "problems": report.problems,
            "records": report.records, "bytes": report.bytes,
            "scorer_evictions": p.scorer.evictions() if p.scorer is not None else 0,
        }  # fmt: skip
        body = pickle.dumps(done, pickle.HIGHEST_PROTOCOL)
        write_all(fd, [_HDR.pack(DONE, END + 1, 0, 0, len(body), -1, *p.progress), body])
    except BaseException as e:  # reported to the parent, which raises
        kind = "capture" if isinstance(e, CaptureError) else "crash"
        text = str(e) if kind == "capture" else traceback.format_exc()
        body = pickle.dumps((kind, text))
        with contextlib.suppress(OSError):
            write_all(fd, [_HDR.pack(FAILED, 0, 0, 0, len(body), -1, 0, 0), body])
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------------------------
# Parent: merge
# ---------------------------------------------------------------------------------------------------------------


class _Buffer:
    """One worker's documents not yet released, in the worker's order: per line its keys and where its bytes are
    (``src``: -1 the worker's ring, else a message of lines that did not fit the ring; ``a``/``b``: byte offsets
    in it). The lines are sliced out at release, runs of adjacent lines as one slice (``_views``).

    Lines in the ring are valid until the parent publishes them consumed (``ends``: absolute ring end of each
    line, -1 off the ring)."""

    def __init__(self, ring: mmap.mmap | None = None) -> None:
        empty = np.empty(0, np.int64)
        self.hi = self.c = self.src = self.a = self.b = self.ends = empty
        self.backs: dict[int, memoryview] = {} if ring is None else {-1: memoryview(ring)}
        self.serial = 0
        self.det: list[tuple[int, int, Any]] = []
        self.watermark = 0
        self.done: dict[str, Any] | None = None
        self.progress = (0, 0)

    def __len__(self) -> int:
        return len(self.hi)

    def add(self, fd: int) -> tuple[int, Any]:
        """Read one message of the worker: its documents are appended; (kind, body of DONE/FAILED)."""
        head = _read_exact(fd, _HDR.size)
        if len(head) < _HDR.size:
            raise EOFError
        kind, wm, n, blen, dlen, at, packets, nbytes = _HDR.unpack(head)
        self.progress = (packets, nbytes)
        buf = _read_exact(fd, (16 * n + blen + dlen) if kind == DATA else dlen)
        if kind != DATA:
            return kind, pickle.loads(buf)
        pos = 0
        if n:
            hi = np.frombuffer(buf, np.int64, n, pos)
            c = np.frombuffer(buf, np.int64, n, pos + 8 * n)
            pos += 16 * n
            sizes = np.frombuffer(buf, np.int64, n, pos)
            cum = np.cumsum(sizes)
            if at >= 0:
                assert -1 in self.backs
                ends = cum + at
                b = ends + (at % RING_BYTES - at)  # ring offset = absolute position + that (a batch never wraps)
                src = -1
            else:  # the lines follow their sizes in the message
                ends = np.full(n, -1, np.int64)
                b = cum + (pos + 8 * n)
                self.serial += 1
                src = self.serial
                self.backs[src] = memoryview(buf)
            parts = (hi, c, np.full(n, src, np.int64), b - sizes, b, ends)
            if len(self.hi):
                parts = tuple(np.concatenate((old, new)) for old, new in
                              zip((self.hi, self.c, self.src, self.a, self.b, self.ends), parts, strict=True))  # fmt: skip
            self.hi, self.c, self.src, self.a, self.b, self.ends = parts
            pos += blen
        if dlen:
            self.det += pickle.loads(buf[pos : pos + dlen])
        self.watermark = wm
        return kind, None

    def take(self, limit: int) -> tuple[tuple[np.ndarray, ...], int]:
        """(hi, c, src, a, b) of the documents with key below ``limit``, and the ring position consumed once
        they are written (-1: none)."""
        k = int(np.searchsorted(self.hi, limit, "left")) if len(self.hi) else 0
        out = (self.hi[:k], self.c[:k], self.src[:k], self.a[:k], self.b[:k])
        consumed = int(self.ends[k - 1]) if k else -1
        self.hi, self.c, self.src, self.a, self.b, self.ends = (
            self.hi[k:], self.c[k:], self.src[k:], self.a[k:], self.b[k:], self.ends[k:])  # fmt: skip
        return out, consumed

    def written(self) -> None:
        """The lines taken are written: forget the messages (off the ring) that no line left refers to."""
        if len(self.backs) > (-1 in self.backs):
            first = int(self.src[self.src >= 0].min(initial=self.serial + 1))
            for key in [key for key in self.backs if 0 <= key < first]:
                del self.backs[key]

    def take_det(self, limit: int) -> list[tuple[int, int, Any]]:
        det = self.det
        k = bisect.bisect_left(det, limit, key=itemgetter(0))
        out = det[:k]
        del det[:k]
        return out


def _views(
    bufs: list[_Buffer], w: np.ndarray, src: np.ndarray, a: np.ndarray, b: np.ndarray, runs: bool
) -> list[Any]:
    """The lines (buffer ``w``, bytes ``a:b`` of ``src``) as views, in order; with ``runs``, lines that follow
    each other in one buffer's ring or message as one view (the order of the bytes is the same)."""
    if runs and len(a) > 1:
        start = np.empty(len(a), bool)
        start[0] = True
        np.not_equal(w[1:], w[:-1], out=start[1:])
        start[1:] |= (src[1:] != src[:-1]) | (a[1:] != b[:-1])
        first = np.flatnonzero(start)
        last = np.empty_like(first)
        last[:-1] = first[1:] - 1
        last[-1] = len(a) - 1
        w, src, a, b = w[first], src[first], a[first], b[last]
    backs = [buf.backs for buf in bufs]
    return [backs[i][s][x:y] for i, s, x, y in zip(w.tolist(), src.tolist(), a.tolist(), b.tolist(), strict=True)]


class _Parent:
    """Writes the merged streams to the sinks and runs the detectors on the merged message stream."""

    def __init__(self, outputs: Outputs, detectors: list[Any], mapper: Any) -> None:
        self.outputs = outputs
        self.detectors = detectors
        self.mapper = mapper
        self.json_events = all(getattr(s, "accepts_json", False) for s in outputs.events)
        # NdjsonSink writes the lines from the views with writev (no copy in the parent).
        self.chunks = all(type(s) is NdjsonSink for s in outputs.events)
        self.alert_docs: list[Document] = []
        self.alerts = 0
        self.alerts_by_rule: dict[str, int] = {}

    def events(self, lines: Sequence[Any]) -> None:
        if not lines:
            return
        if self.chunks:  # NdjsonSink: written from the views (runs of adjacent lines: _views), no joined copy
            for s in self.outputs.events:
                s.write_views(lines)
            return
        if self.json_events:
            batch: list[Any] = [bytes(x) for x in lines]  # views of a worker's ring: copied before it is reused
        else:
            batch = [orjson.loads(x) for x in lines]
        for s in self.outputs.events:
            s.write(batch)

    def detect(self, items: list[tuple[int, int, Any]]) -> None:
        """The detectors over the merged messages and ticks (int: capture time reached a new second), as one
        process runs them (pipeline.run_detectors)."""
        batch: list[Any] = []
        for _hi, _c, obj in items:
            if type(obj) is tuple:
                vals = list(obj)
                vals[_PACKET_AT] = PacketRef(*vals[_PACKET_AT])
                obj = Message(*vals)
            batch.append(obj)
            if len(batch) >= DETECT_BATCH:
                run_detectors(self.detectors, batch, self.alert)
                batch = []
        if batch:
            run_detectors(self.detectors, batch, self.alert)

    def alert(self, a: Alert) -> None:
        self.alerts += 1
        self.alerts_by_rule[a.rule_id] = self.alerts_by_rule.get(a.rule_id, 0) + 1
        if self.outputs.alerts:
            self.alert_docs.append(self.mapper.alert(a))
            if len(self.alert_docs) >= BATCH:
                self.flush_alerts()

    def flush_alerts(self) -> None:
        batch, self.alert_docs = self.alert_docs, []
        if batch:
            for s in self.outputs.alerts:
                s.write(batch)

    def close_detectors(self) -> None:
        for d in self.detectors:
            for a in d.close():
                self.alert(a)
        self.flush_alerts()


def _release(bufs: list[_Buffer], limit: int, parent: _Parent, ctrl: mmap.mmap | None = None) -> None:
    """Write, in key order, every buffered document whose record is before ``limit`` (a record index * 4)."""
    taken = [b.take(limit) for b in bufs]
    parts = [(i, t[0]) for i, t in enumerate(taken) if len(t[0][0])]
    if parts:
        w = np.concatenate([np.full(len(p[0]), i, np.int64) for i, p in parts])
        src, a, b = (np.concatenate([p[j] for _, p in parts]) for j in (2, 3, 4))
        if len(parts) > 1:
            hi, c = (np.concatenate([p[j] for _, p in parts]) for j in (0, 1))
            order = np.lexsort((c, hi))
            w, src, a, b = w[order], src[order], a[order], b[order]  # stable: within one worker its own order
        parent.events(_views(bufs, w, src, a, b, parent.chunks))
        for i, _ in parts:
            bufs[i].written()
    if ctrl is not None:  # written: the workers may reuse that part of their rings
        for i, t in enumerate(taken):
            if t[1] >= 0:
                _POS.pack_into(ctrl, 8 * i, t[1])
    if parent.detectors:
        dets = [d for d in (b.take_det(limit) for b in bufs) if d]
        if len(dets) == 1:
            parent.detect(dets[0])
        elif dets:
            det = [item for d in dets for item in d]
            det.sort(key=_ITEM_KEY)  # stable: within one worker its own order is kept
            parent.detect(det)


_SAME_IN_EVERY_WORKER = ("packets", "bytes", "frames")  # every worker reads and frame-decodes every record
_NOT_SUMMED = ("seconds", "packets_per_second", "alerts", "alerts_by_rule")


def _sum(values: list[Any]) -> Any:
    first = values[0]
    if isinstance(first, bool) or not isinstance(first, int | float | dict):
        return first
    if isinstance(first, dict):
        keys: dict[str, None] = {}
        for v in values:
            keys.update(dict.fromkeys(v))
        out = {k: _sum([v[k] for v in values if k in v]) for k in keys}
        if all(list(v) == sorted(v) for v in values):
            out = dict(sorted(out.items()))
        return out
    return sum(values)


def merge_stats(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Stats of the whole replay from the workers' stats (seconds, rate and alerts are the caller's)."""
    out: dict[str, Any] = {}
    for key, v in parts[0].items():
        if key in _SAME_IN_EVERY_WORKER or key in _NOT_SUMMED:
            out[key] = v
        else:
            out[key] = _sum([p[key] for p in parts])
    return out


def _pipe_size(fd: int) -> None:
    with contextlib.suppress(OSError):  # the default size works, with more context switches
        fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_BYTES)


def _read_exact(fd: int, n: int) -> bytearray:
    """n bytes from a pipe; fewer only at end of file."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = os.readv(fd, [view[got:]])
        if not k:
            return buf[:got]
        got += k
    return buf


def replay_parallel(
    config: Config, files: list[str], outputs: Outputs, detectors: Iterable[Any], observer: Observer | None,
    workers: int, report: SourceReport,
    progress: Callable[[], tuple[Callable[[int, int], None] | None, Any]] | None = None,
    start: int = 0, mark: Mark | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Replay ``files`` with ``workers`` processes; writes ``outputs`` exactly as one Pipeline would.

    ``progress`` starts a progress display (called after the workers are forked, so no thread is forked).
    ``start``: records done before (a resumed replay; as ``Pipeline.run`` on the records after them).
    ``mark(done, flush)``: called whenever every document of the first ``done`` records has been handed to the
    sinks; ``flush()`` pushes buffered alerts and sink buffers out (for a checkpoint).
    Raises CaptureError for unreadable captures and ParallelError when a worker fails.
    """
    detectors = list(detectors)
    n = max(1, workers)
    started = time.perf_counter()
    ctx = mp.get_context("fork")  # detectors hold compiled closures; fork shares them and the loaded config
    mapper = Pipeline(config, Outputs(), observer=observer).mapper  # the same mapping as one process
    scorer, sharded = None, None
    for d in detectors:  # a detector split in two: one half in every worker, the other merging them here (on_part)
        split = getattr(d, "shard", None)
        if callable(split) and (scorer := split(TICK_NS)) is not None:
            sharded = d
            break
    ship = detector_filter([d for d in detectors if d is not sharded])
    shards = weigh_shards(files, n, by_host=scorer is not None)
    procs: list[Any] = []
    fds: list[int] = []
    prog = None
    events = bool(outputs.events)
    rings = [mmap.mmap(-1, RING_BYTES) if events else None for _ in range(n)]  # anonymous, shared with the forks
    ctrl = mmap.mmap(-1, 8 * n) if events else None
    try:
        for i in range(n):
            recv, send = os.pipe()
            _pipe_size(send)
            args = (
                i,
                shards,
                files,
                config,
                observer,
                events,
                ship,
                i == 0 and bool(detectors),
                send,
                rings[i],
                ctrl,
                start,
                scorer,
            )
            p = ctx.Process(target=_work, args=args, name=f"ics-sensor-worker-{i}", daemon=True)
            p.start()
            os.close(send)
            procs.append(p)
            fds.append(recv)
        update = None
        if progress is not None:
            update, prog = progress()
        for s in outputs.all():
            s.open()
        parent = _Parent(outputs, detectors, mapper)

        def flush() -> None:
            parent.flush_alerts()
            for s in outputs.all():
                s.flush()

        on_release = (lambda done: mark(done, flush)) if mark is not None else None
        done = _merge(fds, procs, parent, update, rings, ctrl, on_release)
        parent.close_detectors()
    finally:
        if prog is not None:
            prog.stop()
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join()
    first = done[0]
    total = merge_stats([d["stats"] for d in done])
    secs = time.perf_counter() - started
    total["alerts"] = parent.alerts
    total["alerts_by_rule"] = dict(sorted(parent.alerts_by_rule.items()))
    det_stats = {
        getattr(d, "name", type(d).__name__): d.stats() for d in detectors if callable(getattr(d, "stats", None))
    }
    if det_stats:  # the detectors run here, in the parent: as Pipeline.stats reports them
        total["detectors"] = det_stats
    total["seconds"] = round(secs, 3)
    total["packets_per_second"] = round(total["packets"] / secs) if secs > 0 else 0
    report.files[:] = first["files"]
    report.problems[:] = first["problems"]
    report.records, report.bytes = first["records"], first["bytes"]
    if total.get("tcp", {}).get("evicted_cap"):
        report.problems.append(
            "flow table cap reached: with --workers each worker evicts from its own table, so the evicted flows"
            " (and their documents) can differ from a single-process replay"
        )
    if any(d.get("scorer_evictions") for d in done):
        report.problems.append(
            "the model's per-pair tables reached their caps: with --workers each worker evicts from its own, so the"
            " model's window features (and alerts) can differ from a single-process replay"
        )
    if outputs.stats:
        doc = mapper.stats(first["last_ts"] or 0, total)
        for s in outputs.stats:
            s.write([doc])
    for s in outputs.all():
        s.close()
    return total


def _merge(
    fds: list[int],
    procs: list[Any],
    parent: _Parent,
    update: Callable[[int, int], None] | None,
    rings: list[mmap.mmap | None] | None = None,
    ctrl: mmap.mmap | None = None,
    on_release: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """Read every worker until it is done, releasing documents as soon as every worker has passed them.

    Memory stays bounded: a worker more than MAX_AHEAD documents ahead is not read (its pipe fills and it
    waits), except the one holding the release back, which is always read.
    """
    n = len(fds)
    bufs = [_Buffer(rings[i] if rings else None) for i in range(n)]
    live = set(range(n))
    index = {fd: i for i, fd in enumerate(fds)}
    while live:
        low = min(bufs[i].watermark for i in live)
        want = [fds[i] for i in live if bufs[i].watermark == low or len(bufs[i]) < MAX_AHEAD]
        for fd in wait(want):
            i = index[fd]  # type: ignore[index]
            try:
                kind, body = bufs[i].add(fd)  # type: ignore[arg-type]
            except EOFError:
                procs[i].join(5)
                raise ParallelError(f"worker {i} ended without a result (exit code {procs[i].exitcode})") from None
            if kind == FAILED:
                what, text = body
                if what == "capture":
                    raise CaptureError(text)
                raise ParallelError(f"worker {i} failed:\n{text}")
            if kind == DONE:
                bufs[i].done = body
                bufs[i].watermark = END + 1
                live.discard(i)
        if update is not None:
            update(*bufs[0].progress)
        low = min((bufs[i].watermark for i in live), default=END + 1)
        _release(bufs, low << 2, parent, ctrl)
        if on_release is not None and low <= END:
            on_release(low - 1)  # records 1 .. low - 1 are written
    return [b.done for b in bufs]  # type: ignore[misc]
