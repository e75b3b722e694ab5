"""The replay/live spine: records -> frames -> flows/decoders -> detectors -> outputs, in one thread.

Detectors and sinks are handed in, so the pipeline knows their seams only. Everything is driven by capture
time, so the same capture always gives the same documents.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from detectors.base import Detector, Part
from sensor.assets import AssetTracker
from sensor.config import Config
from sensor.flows import FlowConfig, FlowTable
from sensor.frames import FrameDecoder
from sensor.messages import Alert, Anomaly, Message, PacketRef
from sensor.messages.asset import AssetState
from sensor.outputs.base import Sink
from sensor.outputs.ecs import EcsMapper, Observer
from sensor.protocols import registry
from sensor.source import Record

BATCH = 2048
TICK_NS = 1_000_000_000


def next_tick(ts: int, period: int = TICK_NS) -> int:
    """The next tick after one at ``ts``: the next whole multiple of ``period``. Aligned, so a time window that
    starts at a whole second (the model's) closes at a tick in every process that ticks, whichever records it
    saw (sensor.parallel: the workers tick at the same records)."""
    return ts - ts % period + period

DETECT_BATCH = 512  # messages and ticks handed to the detectors at once: see run_detectors


def run_detectors(detectors: list[Detector], items: list[Any], alert: Callable[[Alert], None]) -> None:
    """Each detector over a whole batch of messages, ticks (int capture times) and, in a parallel replay's parent,
    Parts from the detectors' halves in the workers (to ``on_part``; a detector without it has none), one
    detector after the other.

    Why: called message by message, each detector found its state evicted from the CPU caches by the decoders
    and the other detectors; over a batch it stays hot. Measured on the held-out scenario capture in one
    process: the anomaly model cost 2.2 s called per message, 1.3 s over batches of 512. Detectors share no
    state, so only the order of their alerts could change, and it does not: they are handed to ``alert`` as one
    detector after the other per message would (message order, then detector order). A detector's iterable of
    alerts is taken at once, so a generator runs at its turn, as before."""
    found: list[tuple[int, int, list[Alert]]] = []
    one = len(detectors) == 1
    for j, d in enumerate(detectors):
        on_message, on_time, on_part = d.on_message, d.on_time, getattr(d, "on_part", _no_part)
        for i, x in enumerate(items):
            t = type(x)
            out = on_time(x) if t is int else on_part(x) if t is Part else on_message(x)
            if out:
                if one:
                    for a in out:
                        alert(a)
                elif got := list(out):
                    found.append((i, j, got))
    found.sort(key=itemgetter(0, 1))
    for _, _, got in found:
        for a in got:
            alert(a)


def _no_part(part: Part) -> tuple[()]:
    return ()


@dataclass
class Outputs:
    """Sinks per document kind: protocol events (and decode errors), alerts, stats, asset inventory."""

    events: list[Sink] = field(default_factory=list)
    alerts: list[Sink] = field(default_factory=list)
    stats: list[Sink] = field(default_factory=list)
    assets: list[Sink] = field(default_factory=list)

    def all(self) -> list[Sink]:
        seen: dict[int, Sink] = {}
        for s in (*self.events, *self.alerts, *self.stats, *self.assets):
            seen[id(s)] = s
        return list(seen.values())


@dataclass
class Counters:
    packets: int = 0
    bytes: int = 0
    messages: dict[str, int] = field(default_factory=dict)
    decode_errors: dict[str, int] = field(default_factory=dict)
    alerts: int = 0
    alerts_by_rule: dict[str, int] = field(default_factory=dict)
    first_ts: int | None = None
    last_ts: int | None = None


class Pipeline:
    def __init__(
        self,
        config: Config,
        outputs: Outputs | None = None,
        detectors: Iterable[Detector] = (),
        observer: Observer | None = None,
        on_alert: Callable[[Alert], None] | None = None,
    ) -> None:
        self.config = config
        opts = config.raw["decoders"]
        self.decoders = {name: registry.create(name, **opts.get(name, {})) for name in registry.names()}
        fc = config.raw["flows"]
        self.frames = FrameDecoder()
        self.flows = FlowTable(
            self.decoders,
            config.ports,
            self._on_message,
            FlowConfig(fc["max_flows"], fc["max_stream_buffer"], fc["max_ooo_segments"], float(fc["idle_timeout"])),
        )
        self.outputs = outputs or Outputs()
        self.detectors = list(detectors)
        registries = {n: d.registry for n, d in self.decoders.items()}
        for d in self.decoders.values():  # a decoder that emits a second protocol (s7comm -> s7comm_plus)
            for reg in getattr(d, "extra_registries", ()):
                registries.setdefault(reg.protocol, reg)
        self.mapper = EcsMapper(observer or Observer(name=config.sensor_name), registries)
        self.counters = Counters()
        self.on_alert = on_alert
        self.assets = AssetTracker.from_config(config.raw.get("assets")) if self.outputs.assets else None
        self._events: list[dict[str, Any]] = []
        self._alerts: list[dict[str, Any]] = []
        self._next_tick = 0
        self._pending: list[Any] = []  # messages and ticks not yet seen by the detectors (_detect)
        # Every event sink takes ready NDJSON lines: serialise without building documents (the hot path).
        self._events_json = bool(self.outputs.events) and all(
            getattr(s, "accepts_json", False) for s in self.outputs.events
        )
        self.started = 0.0
        self.elapsed = 0.0
        self._last_packet: PacketRef = PacketRef(None, 0, -1)  # where end-of-input messages point

    # -- message path ------------------------------------------------------------------------------------------
    def _on_message(self, m: Message | Anomaly) -> None:
        c = self.counters
        if type(m) is Message:
            c.messages[m.protocol] = c.messages.get(m.protocol, 0) + 1
            if self.assets is not None:
                self.assets.on_message(m)
            if self._events_json:
                self._events.append(self.mapper.message_json(m))
            elif self.outputs.events:
                self._events.append(self.mapper.message(m))
        else:
            assert isinstance(m, Anomaly)
            c.decode_errors[m.name] = c.decode_errors.get(m.name, 0) + 1
            if self._events_json:
                self._events.append(self.mapper.anomaly_json(m))
            elif self.outputs.events:
                self._events.append(self.mapper.anomaly(m))
        if self.detectors:
            pending = self._pending
            pending.append(m)
            if len(pending) >= DETECT_BATCH:
                self._detect()
        if len(self._events) >= BATCH:
            self._flush_events()

    def _alert(self, a: Alert) -> None:
        c = self.counters
        c.alerts += 1
        c.alerts_by_rule[a.rule_id] = c.alerts_by_rule.get(a.rule_id, 0) + 1
        if self.on_alert:
            self.on_alert(a)
        if self.outputs.alerts:
            self._alerts.append(self.mapper.alert(a))
            if len(self._alerts) >= BATCH:
                self._flush_alerts()

    def _flush_events(self) -> None:
        batch, self._events = self._events, []
        if self._events_json:  # every entry is a ready line: no per-line check in the sink
            for s in self.outputs.events:
                s.write_lines(batch)
        else:
            for s in self.outputs.events:
                s.write(batch)

    def _flush_alerts(self) -> None:
        batch, self._alerts = self._alerts, []
        for s in self.outputs.alerts:
            s.write(batch)

    def _write_assets(self, states: list[AssetState]) -> None:
        if states:
            docs = [self.mapper.asset(st) for st in states]
            for s in self.outputs.assets:
                s.write(docs)

    def _tick(self, ts: int) -> None:
        self._next_tick = next_tick(ts)
        if self.assets is not None:
            self._write_assets(self.assets.due(ts))
        if self.detectors:
            self._pending.append(ts)

    def _detect(self) -> None:
        """Hand the pending messages and ticks to the detectors (run_detectors). Done at every DETECT_BATCH, at
        the end of every ``run`` (live mode: every burst of packets, so alerts are not held back), before a
        checkpoint mark and at close."""
        items, self._pending = self._pending, []
        if items:
            run_detectors(self.detectors, items, self._alert)

    # -- driving -----------------------------------------------------------------------------------------------
    def open(self) -> None:
        for s in self.outputs.all():
            s.open()
        self.started = time.perf_counter()

    def run(
        self,
        records: Iterable[Record],
        progress: Callable[[int, int], None] | None = None,
        mark: Callable[[int], None] | None = None,
    ) -> None:
        """Process every record. ``progress(packets, bytes)`` is called every 64k packets, ``mark(packets)`` every
        4096 (between records, every document of the records so far generated: a checkpoint can be taken)."""
        decode = self.frames.decode
        process = self.flows.process
        c = self.counters
        packets = c.packets
        nbytes = c.bytes
        rec: Record | None = None
        for rec in records:
            packets += 1
            nbytes += len(rec.data)
            ts = rec.ts
            if ts >= self._next_tick:
                if c.first_ts is None:
                    c.first_ts = ts
                c.packets, c.bytes = packets, nbytes
                self._tick(ts)
            seg = decode(ts, rec.linktype, rec.data)
            if seg is not None:
                process(seg, rec)
            if not packets & 0xFFF:
                if progress is not None and not packets & 0xFFFF:
                    progress(packets, nbytes)
                if mark is not None:
                    c.packets, c.bytes = packets, nbytes
                    self._detect()
                    mark(packets)
        c.packets, c.bytes = packets, nbytes
        self._detect()
        if rec is not None:
            c.last_ts = max(c.last_ts or 0, rec.ts)
            if c.first_ts is None:
                c.first_ts = rec.ts
            self._last_packet = rec

    def flush_outputs(self) -> None:
        """Hand every buffered document to the sinks and have them push it out (a checkpoint follows)."""
        self._detect()
        self._flush_events()
        self._flush_alerts()
        for s in self.outputs.all():
            s.flush()

    def flush(self, extra_stats: dict[str, Any] | None = None, ts: int | None = None) -> None:
        """Live mode, about once a minute: push buffered documents and a stats document to the sinks."""
        self._detect()
        self._flush_events()
        self._flush_alerts()
        if self.outputs.stats:
            stats = self.stats()
            if extra_stats:
                stats.update(extra_stats)
            doc = self.mapper.stats(ts if ts is not None else time.time_ns(), stats)
            for s in self.outputs.stats:
                s.write([doc])
        for s in self.outputs.all():
            s.flush()

    def close(self) -> dict[str, Any]:
        """End of input: close flows (unanswered requests), detectors, write stats, close sinks."""
        last = self._last_packet
        self.flows.close_all(last)
        self._detect()
        for d in self.detectors:
            for a in d.close():
                self._alert(a)
        self._flush_events()
        self._flush_alerts()
        if self.assets is not None:
            self._write_assets(self.assets.final())
        self.elapsed = time.perf_counter() - self.started
        stats = self.stats()
        if self.outputs.stats:
            doc = self.mapper.stats(self.counters.last_ts or 0, stats)
            for s in self.outputs.stats:
                s.write([doc])
        for s in self.outputs.all():
            s.close()
        return stats

    def stats(self) -> dict[str, Any]:
        c, fl, fr = self.counters, self.flows.stats, self.frames.stats
        secs = self.elapsed or (time.perf_counter() - self.started)
        return {
            "packets": c.packets,
            "bytes": c.bytes,
            "flows": fl.flows,
            "messages": dict(sorted(c.messages.items())),
            "decode_errors": sum(c.decode_errors.values()),
            "decode_errors_by_name": dict(sorted(c.decode_errors.items())),
            "alerts": c.alerts,
            "alerts_by_rule": dict(sorted(c.alerts_by_rule.items())),
            "seconds": round(secs, 3),
            "packets_per_second": round(c.packets / secs) if secs > 0 else 0,
            "frames": {
                "not_ip": fr.not_ip, "not_tcp_udp": fr.not_tcp_udp, "malformed": fr.malformed,
                "unsupported_link": fr.unsupported_link, "fragments": fr.fragments, "reassembled": fr.reassembled,
                "fragments_evicted": self.frames.frags.evicted, "malformed_reasons": dict(sorted(fr.malformed_reasons.items())),
            },
            "tcp": {
                "flows": fl.tcp_flows, "udp_flows": fl.udp_flows, "midstream": fl.midstream,
                "evicted_idle": fl.evicted_idle, "evicted_cap": fl.evicted_cap,
                "retransmissions": fl.retransmissions, "overlaps": fl.overlaps, "out_of_order": fl.out_of_order,
                "gaps": fl.gaps, "gap_bytes": fl.gap_bytes, "buffer_cap_hits": fl.buffer_cap_hits,
                "decoder_exceptions": fl.decoder_exceptions, "protocol_mismatches": fl.protocol_mismatches,
            },
            "flows_by_protocol": dict(sorted(fl.per_protocol.items())),
            "decoders": dict(sorted(fl.decoder_counters.items())),
            **({"assets": self.assets.stats()} if self.assets is not None else {}),
            **({"detectors": ds} if (ds := self._detector_stats()) else {}),
        }  # fmt: skip

    def _detector_stats(self) -> dict[str, Any]:
        """State sizes and evictions of the detectors that report them (``stats()``), by detector name."""
        return {
            getattr(d, "name", type(d).__name__): d.stats()
            for d in self.detectors
            if callable(getattr(d, "stats", None))
        }
