"""``replay --workers N`` (sensor/parallel.py): the same documents, byte for byte, as one process (issue 10)."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from sensor.cli_rules import rule_detectors
from sensor.config import load_config
from sensor.frames import FrameDecoder
from sensor.outputs.memory import MemorySink
from sensor.outputs.ndjson import NdjsonSink
from sensor.parallel import (
    BUCKET_IDS,
    ParallelError,
    ShardPipeline,
    SkipState,
    _ticks,
    even_shards,
    make_skip,
    merge_stats,
    replay_parallel,
    segment_shard,
    shard_of,
    weigh_shards,
)
from sensor.pipeline import Outputs, Pipeline, next_tick
from sensor.source import CaptureError, SourceReport, expand_paths, read_captures

ROOT = Path(__file__).resolve().parents[1]
SHARED_PCAPS = ROOT.parent / "shared" / "pcaps"
TIMING = ("seconds", "packets_per_second")


def _need(*paths: Path) -> None:
    for p in paths:
        if not p.exists():
            pytest.skip(f"{p} is missing")


def replay(
    files: list[str], workers: int, out: Path, rules: bool = True, config_path: Path | None = None
) -> tuple[bytes, bytes, dict[str, Any]]:
    """Events, alerts and stats (without timings) of a replay with ``workers`` processes, as the CLI wires it."""
    out.mkdir(parents=True, exist_ok=True)
    ev, al, st = out / f"events-{workers}.ndjson", out / f"alerts-{workers}.ndjson", out / f"stats-{workers}.ndjson"
    outputs = Outputs(events=[NdjsonSink(str(ev))], alerts=[NdjsonSink(str(al))], stats=[NdjsonSink(str(st))])
    config = load_config(str(config_path) if config_path else None)
    detectors = rule_detectors(config) if rules else []
    report = SourceReport()
    if workers == 1:
        pipe = Pipeline(config, outputs, detectors=detectors)
        pipe.open()
        pipe.run(read_captures(files, report))
        stats = pipe.close()
    else:
        stats = replay_parallel(config, files, outputs, detectors, None, workers, report)
    doc = orjson.loads(st.read_bytes())
    for k in TIMING:
        stats.pop(k)
        doc["ics"]["stats"].pop(k)
    assert doc["ics"]["stats"] == stats
    return ev.read_bytes(), al.read_bytes(), {"returned": stats, "document": doc}


def _same_as_one_process(
    files: list[str], tmp_path: Path, rules: bool = True, min_events: int = 100, config_path: Path | None = None
) -> dict[str, Any]:
    ev1, al1, st1 = replay(files, 1, tmp_path, rules, config_path)
    assert ev1.count(b"\n") > min_events
    for n in (2, 4):
        ev, al, st = replay(files, n, tmp_path, rules, config_path)
        assert ev == ev1, f"events differ with {n} workers"
        assert al == al1, f"alerts differ with {n} workers"
        assert st == st1, f"stats differ with {n} workers"
    return st1["returned"]


def test_modbus_big_events_identical(tmp_path: Path) -> None:
    cap = SHARED_PCAPS / "zeek" / "modbusBig.pcap"
    _need(cap)
    stats = _same_as_one_process([str(cap)], tmp_path, rules=False)
    assert stats["messages"]["modbus"] > 5000


def test_merged_captures_identical_with_rules(tmp_path: Path) -> None:
    """Several captures merged by time: idle sweeps, midstream flows, other protocols, decode errors, alerts."""
    dirs = [ROOT / "pcaps", SHARED_PCAPS / "zeek", SHARED_PCAPS / "icsnpp-modbus", SHARED_PCAPS / "suricata-verify"]
    _need(*dirs)
    files = expand_paths([str(d) for d in dirs])
    stats = _same_as_one_process(files, tmp_path)
    assert stats["tcp"]["evicted_idle"] > 0  # the idle sweep ran, in every worker at the same records
    assert stats["decode_errors"] > 0
    assert len(stats["messages"]) >= 2


def test_rule_test_captures_alerts_identical(tmp_path: Path) -> None:
    """The rule pack's own captures: scans and floods are threshold rules across flows, run once in the parent."""
    _need(ROOT / "rules" / "tests")
    files = expand_paths([str(ROOT / "rules" / "tests")])
    stats = _same_as_one_process(files, tmp_path)
    assert stats["alerts"] > 10
    assert len(stats["alerts_by_rule"]) > 5


def test_shard_is_symmetric_and_fast_path_agrees() -> None:
    a, b = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    for n in (2, 3, 4):
        assert shard_of(a, b, 40000, 502, 6, n) == shard_of(b, a, 502, 40000, 6, n)
    v6a, v6b = bytes(range(16)), bytes(range(16, 32))
    assert shard_of(v6a, v6b, 1, 2, 17, 4) == shard_of(v6b, v6a, 2, 1, 17, 4)
    # Balanced where a plant's flows look alike (clients and server in one /24, one service port): XOR of the
    # endpoints cancelled the common prefix and split such flows 53/47; each worker must get its share.
    flows = [
        (bytes([10, 1, 7, c]), bytes([10, 1, 7, 200 + c % 3]), 40000 + p, 502) for c in range(1, 60) for p in range(200)
    ]
    for n in (2, 3, 4):
        counts = [0] * n
        for a, b, sp, dp in flows:
            counts[shard_of(a, b, sp, dp, 6, n)] += 1
        assert max(counts) / (len(flows) / n) < 1.03, counts
    # By host (the model's per-pair half in the workers): every connection between two hosts in one worker.
    for n in (2, 3, 4):
        by_host = even_shards(n, by_host=True)
        for a, b, _, dp in flows[::200]:
            assert len({shard_of(a, b, sp, dp, 6, by_host) for sp in range(40000, 40050)}) == 1
        assert len({shard_of(a, b, sp, dp, 6, n) for a, b, sp, dp in flows[:50]}) > 1  # by flow, they spread
    # The raw fast path (no Segment built for other shards' packets) must shard exactly like segment_shard.
    cap = ROOT / "pcaps" / "modbus_demo.pcap"
    _need(cap)
    records = list(read_captures([str(cap)], SourceReport()))
    dec = FrameDecoder()
    for n in (2, 3, even_shards(2, by_host=True), even_shards(3, by_host=True)):
        owned: list[int] = []
        for me in range(n if isinstance(n, int) else max(n.workers) + 1):
            p = ShardPipeline(load_config(None), None, me, n, None, False, None, False)
            p.open()
            p.run_shard(records)
            owned.append(p.flows.stats.flows)
            # The reader's filter drops exactly the packets the fast path would not keep.
            rep = SourceReport()
            st = SkipState(str(cap), rep)
            q = ShardPipeline(load_config(None), None, me, n, None, False, None, False)
            q.open()
            q.run_shard(read_captures([str(cap)], rep, make_skip(me, n, st)), st)
            assert q.flows.stats.flows == owned[-1] and q.counters.packets == len(records)
        want = [0] * len(owned)
        seen: set[tuple] = set()
        for r in records:
            seg = dec.decode(r.ts, r.linktype, r.data)
            if seg is None:
                continue
            key = (*sorted([(seg.src, seg.sport), (seg.dst, seg.dport)]), seg.proto)
            if key not in seen:
                seen.add(key)
                want[segment_shard(seg, n)] += 1
        assert owned == want  # every flow exactly once, in the worker segment_shard names


@pytest.mark.parametrize(
    "name", ["mqtt_demo.pcap", "s7-1200-hmi-timer-sync.pcapng", "snap7.pcap.gz", "modbus_demo.pcap"]
)
def test_single_file_identical_with_the_readers_filter(tmp_path: Path, name: str) -> None:
    """One input file: the reader drops other workers' packets before building them (pcap, pcapng, gzip); sweeps,
    ticks, the end-of-capture close and the last packet reference must still be those of one process."""
    import gzip

    where = {"mqtt_demo.pcap": ROOT / "pcaps", "modbus_demo.pcap": ROOT / "pcaps",
             "s7-1200-hmi-timer-sync.pcapng": SHARED_PCAPS / "ics-pcap", "snap7.pcap.gz": SHARED_PCAPS / "icsnpp-s7comm"}  # fmt: skip
    src = where[name] / name.removesuffix(".gz")
    _need(src)
    cap = tmp_path / name
    cap.write_bytes(gzip.compress(src.read_bytes()) if name.endswith(".gz") else src.read_bytes())
    stats = _same_as_one_process([str(cap)], tmp_path, min_events=50)
    assert sum(stats["messages"].values()) > 50


@pytest.mark.parametrize(("ring", "batch"), [(256 << 10, 16), (64 << 10, 2048)])
def test_small_rings_wrap_and_wait_or_fall_back_to_the_pipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ring: int, batch: int
) -> None:
    """Event lines travel in a shared ring per worker: with a tiny ring the writers wrap around it many times and
    wait for the parent to consume; a batch too big for the ring goes through the pipe instead. Same output."""
    import sensor.parallel as par
    import sensor.pipeline as pipeline

    cap = SHARED_PCAPS / "zeek" / "modbusBig.pcap"  # about 7 MB of event lines
    _need(cap)
    monkeypatch.setattr(par, "RING_BYTES", ring)
    monkeypatch.setattr(par, "BATCH", batch)
    monkeypatch.setattr(pipeline, "BATCH", batch)
    _same_as_one_process([str(cap)], tmp_path, rules=False)


def test_merge_stats_sums_per_flow_counters_only() -> None:
    a = {"packets": 10, "bytes": 100, "flows": 2, "messages": {"modbus": 3}, "frames": {"not_ip": 1},
         "tcp": {"gaps": 1}, "seconds": 1.0, "packets_per_second": 10, "alerts": 0, "alerts_by_rule": {}}  # fmt: skip
    b = {"packets": 10, "bytes": 100, "flows": 3, "messages": {"mqtt": 1, "modbus": 1}, "frames": {"not_ip": 1},
         "tcp": {"gaps": 2}, "seconds": 1.0, "packets_per_second": 10, "alerts": 0, "alerts_by_rule": {}}  # fmt: skip
    m = merge_stats([a, b])
    assert m["packets"] == 10 and m["bytes"] == 100 and m["frames"] == {"not_ip": 1}  # every worker reads all
    assert m["flows"] == 5 and m["tcp"] == {"gaps": 3}
    assert m["messages"] == {"modbus": 4, "mqtt": 1} and list(m["messages"]) == ["modbus", "mqtt"]


def test_sinks_that_take_documents_get_the_same_documents(tmp_path: Path) -> None:
    """Sinks without accepts_json (the HTML report, Elasticsearch) get documents parsed back from the lines."""
    cap = SHARED_PCAPS / "zeek" / "modbusSmall.pcap"
    _need(cap)
    got = []
    for n in (1, 2):
        sink, alert_sink = MemorySink(), MemorySink()
        outputs = Outputs(events=[sink], alerts=[alert_sink])
        config = load_config(None)
        if n == 1:
            pipe = Pipeline(config, outputs, detectors=rule_detectors(config))
            pipe.open()
            pipe.run(read_captures([str(cap)], SourceReport()))
            pipe.close()
        else:
            replay_parallel(config, [str(cap)], outputs, rule_detectors(config), None, n, SourceReport())
        assert sink.opened and sink.closed
        got.append([orjson.dumps(d) for d in sink.docs + alert_sink.docs])
    assert got[0] == got[1] and len(got[0]) > 10


def test_unreadable_capture_is_a_capture_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"not a capture at all")
    with pytest.raises(CaptureError, match="not a pcap"):
        replay_parallel(load_config(None), [str(bad)], Outputs(), [], None, 2, SourceReport())


def test_cli_workers_option(tmp_path: Path) -> None:
    cap = ROOT / "pcaps" / "modbus_demo.pcap"
    _need(cap)
    outs = []
    for w in ("1", "2"):
        ev = tmp_path / f"ev{w}.ndjson"
        run = subprocess.run(
            [sys.executable, "-m", "sensor.cli", "replay", str(cap), "--events", str(ev), "--workers", w],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert "packets:" in run.stderr
        outs.append(ev.read_bytes())
    assert outs[0] == outs[1] and outs[0]


def test_default_workers_start_lower_with_the_model(tmp_path: Path) -> None:
    """One worker per CPU from 64 MiB of captures, from 8 MiB with the model (its per-pair half runs in the
    workers, and a message costs about twice as much)."""
    from sensor.cli import AUTO_PARALLEL_MODEL_BYTES, default_workers

    cpus = os.cpu_count() or 1
    cap = tmp_path / "ten_mb.pcap"
    with open(cap, "wb") as f:
        f.truncate(10 << 20)
    assert default_workers([str(cap)]) == 1
    assert default_workers([str(cap)], AUTO_PARALLEL_MODEL_BYTES) == (cpus if cpus >= 2 else 1)


def test_crafted_sweeps_fragments_vlan_ipv6_identical(tmp_path: Path) -> None:
    """Many flows whose idle sweep and end-of-capture close emit in several workers at the same record, with
    IPv6, 802.1Q and fragmented IPv4 (sharded after reassembly): the merge must interleave them as one process."""
    stats = _same_as_one_process([str(_crafted_capture(tmp_path))], tmp_path / "out")
    assert stats["tcp"]["evicted_idle"] >= 28  # two silences swept every flow of their burst
    assert stats["frames"]["reassembled"] > 0
    assert stats["tcp"]["gaps"] >= 10  # held segments flushed by the sweeps and the final close, in all workers


def _worker_zero_of_two() -> tuple[ShardPipeline, list[bytes], list[tuple[int, int]]]:
    """Worker 0 of 2 (events, ticks) in this process, keeping the documents and their merge keys it would send
    (watermarks differ with what the reader hands it, so they are not kept)."""
    q = ShardPipeline(load_config(None), None, 0, 2, None, True, None, True)
    q.open()
    lines: list[bytes] = []
    keys: list[tuple[int, int]] = []

    def send(watermark: int, kind: int = 0) -> None:
        n = len(q.sink.lines)
        lines.extend(q.sink.lines)
        keys.extend(zip(q.keys_hi[:n], q.keys_c[:n], strict=True))
        q.sink.lines.clear()
        del q.keys_hi[:n], q.keys_c[:n]

    q.send = send  # type: ignore[method-assign]
    return q, lines, keys


@pytest.mark.parametrize("chunk", [512, 4096])
def test_batch_filter_across_small_buffers_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    """The pcap reader's batch filter decides a buffer at a time, simulating the worker's sweeps and ticks across
    it. With buffers of a few records, sweeps, ticks (rules on), records off the fast path and the capture's end
    fall at every position in a buffer and across buffers: still one process's output."""
    import sensor.source

    cap = _crafted_capture(tmp_path)
    monkeypatch.setattr(sensor.source, "CHUNK", chunk)  # the forked workers read with it too
    # In one process: worker 0 of 2 sees fewer records with the batch filter, and ends as with the per-record one.
    ends = []
    for batch in (True, False):
        rep = SourceReport()
        st = SkipState(str(cap), rep)
        skip = make_skip(0, 2, st)
        q, lines, keys = _worker_zero_of_two()
        seen: list[int] = []
        records = read_captures([str(cap)], rep, skip if batch else lambda *a, f=skip: f(*a))
        q.run_shard((seen.append(r.frame) or r for r in records), st)
        q.finish()
        assert 0 < len(seen) < rep.records  # the other worker's packets were dropped in the reader
        ends.append((lines, keys, q.counters.packets, q.counters.last_ts, q.flows.stats.flows))
    assert len(ends[0][0]) > 100 and ends[0] == ends[1]
    # A resumed replay (start): the records passed over are never dropped by the filter, so each worker counts
    # exactly the packets and bytes after start, as one process resumed there does.
    every = list(read_captures([str(cap)], SourceReport()))
    start = len(every) // 2
    for me in (0, 1):
        rep = SourceReport()
        st = SkipState(str(cap), rep)
        q = ShardPipeline(load_config(None), None, me, 2, None, False, None, me == 0)
        q.open()
        q.run_shard(read_captures([str(cap)], rep, make_skip(me, 2, st)), st, start)
        assert q.counters.packets == len(every) - start
        assert q.counters.bytes == sum(len(r.data) for r in every[start:])
    stats = _same_as_one_process([str(cap)], tmp_path / "out")
    assert stats["tcp"]["evicted_idle"] >= 28 and stats["frames"]["reassembled"] > 0
    demo = ROOT / "pcaps" / "modbus_demo.pcap"
    _need(demo)
    _same_as_one_process([str(demo)], tmp_path / "demo")


@pytest.mark.parametrize("rules", [True, False])
def test_sweeps_amid_steady_traffic_identical(tmp_path: Path, rules: bool) -> None:
    """Idle sweeps (every 5 s of capture time) that fall on a packet in the middle of steady traffic and evict
    flows there (idle timeout 2 s, each flow leaving a request unanswered): every worker must sweep at that very
    packet, whichever worker's flow it belongs to, with and without the detector ticks of the rules."""
    from tests.craft import NS, T0, Conv, eth, read_holding, read_holding_resp, write_pcap

    frames: list[tuple[int, bytes]] = []
    t = T0
    for i in range(300):  # a new short flow every ~0.1 s for ~30 s
        c = Conv(cip=f"10.2.{i // 200}.{i % 200 + 1}", sip=f"10.2.9.{i % 3 + 1}", cport=40000 + i)
        for p in c.handshake():
            frames.append((t, eth(p)))
            t += NS // 1000
        for k in range(3):
            frames.append((t, eth(c.pkt(True, read_holding(k, 100 + i % 7, 2)))))
            t += NS // 50
            if k < 2:
                frames.append((t, eth(c.pkt(False, read_holding_resp(k, [i, k])))))
                t += NS // 50
    # The capture's latest time is not its last record: the worker of the last flow, which drops that packet,
    # must still close its flows at the end with that time (a request held behind a lost segment is delivered
    # then, with the time of the close).
    frames.append((t, eth(c.pkt(True, read_holding(99, 7, 1), seq=c.nxt[0] + 12, advance=False))))
    port = next(p for p in range(45000, 46000) if all(_shard(c, p, n) != _shard(c, c.port[0], n) for n in (2, 4)))
    late = Conv(cip=c.ip[0], sip=c.ip[1], cport=port)
    frames.append((t + NS // 100, eth(late.pkt(True, read_holding(0, 1, 1)))))
    frames.append((t + NS // 200, eth(c.pkt(True))))
    cap = write_pcap(tmp_path / "steady.pcap", 1, frames)
    config = tmp_path / "sensor.yml"
    config.write_text("flows:\n  idle_timeout: 2\n")
    stats = _same_as_one_process([str(cap)], tmp_path / "out", rules=rules, config_path=config)
    assert stats["tcp"]["evicted_idle"] > 200  # flows evicted by the sweeps amid the traffic, not at the end


def _shard(c: Any, cport: int, n: int) -> int:
    """The worker of conversation ``c`` with client port ``cport`` (IPv4)."""
    import socket

    return shard_of(socket.inet_aton(c.ip[0]), socket.inet_aton(c.ip[1]), cport, c.port[1], 6, n)


def _crafted_capture(tmp_path: Path) -> Path:
    """Bursts of Modbus flows over IPv4, IPv6, 802.1Q and IPv4 fragments, each burst followed by an idle silence."""
    from scapy.layers.inet import fragment
    from scapy.layers.l2 import Dot1Q, Ether

    from tests.craft import NS, T0, Conv, eth, read_holding, read_holding_resp, write_pcap

    frames: list[tuple[int, bytes]] = []
    t = T0
    for round_ in range(3):  # three bursts, each followed by a silence longer than the idle timeout (300 s)
        convs = [Conv(cip=f"10.0.{round_}.{i + 1}", sip="10.0.9.9", cport=41000 + i) for i in range(10)]
        convs += [Conv(cip=f"fd00::{round_}:{i + 1}", sip="fd00::99", cport=42000 + i, v6=True) for i in range(4)]
        for c in convs:
            for p in c.handshake():
                frames.append((t, eth(p)))
                t += NS // 1000
        for k in range(6):
            for i, c in enumerate(convs):
                req = c.pkt(True, read_holding(k, 100 + i, 2))
                if i % 3 == 0:  # 802.1Q tagged: not FrameDecoder's fast path
                    frames.append(
                        (t, bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / Dot1Q(vlan=7) / req))
                    )
                elif i % 3 == 1 and not c.v6:  # fragmented: reassembled before sharding
                    for f in fragment(req, fragsize=8):
                        frames.append((t, eth(f)))
                        t += 1000
                else:
                    frames.append((t, eth(req)))
                t += NS // 100
                if k < 5 or i % 2:  # the last request of every other flow stays unanswered (reported at close)
                    frames.append((t, eth(c.pkt(False, read_holding_resp(k, [i, k])))))
                    t += NS // 100
        for c in convs[::3]:  # a lost segment: the next request is held out of order until the flow is closed
            frames.append((t, eth(c.pkt(True, read_holding(99, 7, 1), seq=c.nxt[0] + 12, advance=False))))
            t += NS // 100
        t += 400 * NS
    return write_pcap(tmp_path / "crafted.pcap", 1, frames)


def test_worker_crash_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(self: ShardPipeline) -> dict[str, Any]:
        raise RuntimeError("injected failure")

    monkeypatch.setattr(ShardPipeline, "finish", boom)  # inherited by the forked workers
    cap = ROOT / "pcaps" / "modbus_demo.pcap"
    with pytest.raises(ParallelError, match="injected failure"):
        replay_parallel(load_config(None), [str(cap)], Outputs(), [], None, 2, SourceReport())


def test_rotated_and_overlapping_files_identical_with_the_readers_filter(tmp_path: Path) -> None:
    """Several files: each one read while no other is open goes through the reader's filter up to the next
    file's first timestamp. Rotated files (one ends, the next begins), two that share a timestamp at the cut, and
    two that begin in the middle of the one before (from there on the two interleave, unfiltered), in pcap and
    pcapng: the records' positions in the replay, sweeps, ticks and the last packet must be one process's."""
    from tests.craft import ng_epb, ng_idb, ng_shb, write_pcap

    recs = [(r.ts, r.data) for r in read_captures([str(_crafted_capture(tmp_path))], SourceReport())]
    cuts = [0, len(recs) // 5, 2 * len(recs) // 5, 3 * len(recs) // 5, 4 * len(recs) // 5, len(recs)]
    parts = [recs[a:b] for a, b in itertools.pairwise(cuts)]
    def middle(ps: list[tuple[int, bytes]], of: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
        shift = ps[0][0] - of[len(of) // 2][0]
        return [(ts - shift, d) for ts, d in ps]  # begins in the middle of ``of``

    parts[1] = middle(parts[1], parts[0])  # pcap: the batch filter stops at the next file's first timestamp
    parts[2] = [(parts[1][-1][0], d) for _, d in parts[2][:1]] + parts[2][1:]  # starts at the previous one's end
    parts[3] = middle(parts[3], parts[2])  # pcapng: the per-record filter stops there
    d = tmp_path / "rotated"
    d.mkdir()
    files = [str(write_pcap(d / f"part{i}.pcap", 1, p, nano=True)) for i, p in enumerate(parts)]
    for i in (2, 3):  # the touching and the overlapping part as pcapng: the per-record filter
        ng = d / f"part{i}.pcapng"
        ng.write_bytes(ng_shb("<") + ng_idb("<", 1, tsresol=9) + b"".join(ng_epb("<", 0, ts, b) for ts, b in parts[i]))
        Path(files[i]).unlink()
        files[i] = str(ng)
    # In one process, worker 0 of 2: fewer records built than read, and the same documents as without the filter.
    ends = []
    for filtered in (True, False):
        rep = SourceReport()
        st = SkipState(files[0], rep)
        q, lines, keys = _worker_zero_of_two()
        seen: list[int] = []
        if filtered:
            records = read_captures(files, rep, make_skip(0, 2, st), st)
            q.run_shard((seen.append(r.frame) or r for r in records), st)
        else:
            q.run_shard(seen.append(r.frame) or r for r in read_captures(files, rep))
        q.finish()
        ends.append((lines, keys, q.counters.packets, q.counters.last_ts, q.flows.stats.flows, q._last_packet))
        assert (len(seen) < rep.records) == filtered and rep.records == len(recs)
    assert len(ends[0][0]) > 100 and ends[0] == ends[1]
    stats = _same_as_one_process(files, tmp_path / "out")
    assert stats["tcp"]["evicted_idle"] >= 28


def test_ticks_found_at_once_are_those_of_a_loop_over_the_records() -> None:
    """The batch filter finds the records where a tick is due all at once (``_ticks``): the same records as the
    worker's loop (a tick when the time reaches the next tick, which is then the next whole period), timestamps
    out of order included, from any state of the loop."""
    rng = np.random.default_rng(3)
    period = 1_000_000_000
    for n in (1, 5, 300, 5000):
        ts = np.sort(rng.integers(0, 40 * period, n)) + rng.integers(-3 * period, 3 * period, n) * (rng.random(n) < 0.1)
        for tick_at in (0, int(ts[0]) - int(ts[0]) % period + period, 20 * period):
            want, at = [], tick_at
            for t in ts.tolist():
                want.append(t >= at)
                if t >= at:
                    at = next_tick(t, period)
            assert _ticks(ts, tick_at, period).tolist() == want, (n, tick_at)


@pytest.mark.parametrize("name", ["normal_train", "attacks_mixed"])
def test_weighed_shards_balance_a_few_long_connections(name: str) -> None:
    """A plant capture is a few long polling connections: the hash split the test captures' TCP packets 1294/624
    and 3156/314 between 2 workers. The weighed map (the capture's head counted per bucket, heaviest bucket to
    the least loaded worker) splits the packets that carry data (the decoders' work) within one bucket's of even,
    as largest-first assignment guarantees."""
    cap = ROOT / "tests" / "data" / "anomaly" / f"{name}.pcap.gz"
    shards = weigh_shards([str(cap)], 2)
    assert sorted(set(shards.workers)) == [0, 1] and abs(shards.workers.count(0) - shards.workers.count(1)) <= 1
    frames, buckets = FrameDecoder(), [0] * len(BUCKET_IDS.workers)
    for r in read_captures([str(cap)], SourceReport()):
        seg = frames.decode(r.ts, r.linktype, r.data)
        if seg is not None and seg.proto == 6 and seg.payload:
            buckets[segment_shard(seg, BUCKET_IDS)] += 1
    weighed, even = [0, 0], [0, 0]
    for b, c in enumerate(buckets):
        weighed[shards.workers[b]] += c
        even[even_shards(2).workers[b]] += c
    assert abs(weighed[0] - weighed[1]) <= max(buckets)
    assert max(weighed) < max(even), (weighed, even)


class _TickLog:
    """A stand-in for a worker's scorer (PairScorer.score's items): records the ticks it is handed."""

    def __init__(self) -> None:
        self.ticks: list[tuple[int, int]] = []

    def score(self, items: list[tuple[int, int, Any]], out: list[Any], portable: Any) -> None:
        self.ticks += [(hi >> 2, x) for hi, _c, x in items if type(x) is int]


@pytest.mark.parametrize("chunk", [512, 1 << 20])
def test_every_tick_is_at_the_record_where_one_process_ticks(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    """A tick is due where a record's time reaches the next whole period. The batch filter drops most records of
    the other workers' flows and hands over the ticks due at them (SkipState.ticks): the worker that ships ticks
    (every second) and one whose scorer ticks at its windows (here 10 s) must each tick at exactly the records,
    and times, where a loop over every record ticks."""
    import sensor.source

    monkeypatch.setattr(sensor.source, "CHUNK", chunk)
    cap = ROOT / "tests" / "data" / "anomaly" / "attacks_mixed.pcap.gz"
    every = list(read_captures([str(cap)], SourceReport()))

    def expected(period: int) -> list[tuple[int, int]]:
        out, at = [], 0
        for i, r in enumerate(every, 1):
            if r.ts >= at:
                out.append((i, r.ts))
                at = next_tick(r.ts, period)
        return out

    second = 1_000_000_000
    for me, ships, period in ((0, True, second), (1, False, 10 * second)):
        rep = SourceReport()
        st = SkipState(str(cap), rep)
        log = _TickLog()
        q = ShardPipeline(load_config(None), None, me, 2, None, False, None, ships, log, period)
        q.open()
        seen: list[int] = []
        q.run_shard((seen.append(r.frame) or r for r in read_captures([str(cap)], rep, make_skip(me, 2, st))), st)
        q.finish()
        want = expected(period)
        assert len(want) > 20 and log.ticks == want, me
        assert len(seen) < len(every) and not {i for i, _ in want} <= set(seen)  # some ticks were handed over
