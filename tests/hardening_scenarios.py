"""Hostile-traffic scenarios for tests/test_hardening_resources.py, run in a fresh subprocess each.

``python -m tests.hardening_scenarios NAME N`` builds N messages' worth of Ethernet frames in memory and pushes
them through the whole pipeline (frames, flows, decoders, the rule engine with the shipped pack plus per-key
threshold rules, and the asset tracker), printing one JSON line: the process's peak resident memory (VmHWM) at
half and at all of the input, and the pipeline and detector stats. The learned baseline's caps are tested
directly in tests/test_hardening_resources.py (its trainer keeps training rows by design).
"""

from __future__ import annotations

import gc
import json
import struct
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sensor.config import Config, load_config
from sensor.source import Record

T0 = 1_700_000_000_000_000_000
STEP_NS = 20_000  # 50k packets per second of capture time: the aggregation window never closes on its own

# Threshold rules whose per-key state grows with the attacker's distinct values: the cap must hold it.
EXTRA_RULES = """
- id: TEST-HARDEN-0001
  rev: 1
  status: test
  title: many publishes to one topic
  description: per-topic threshold state
  protocol: mqtt
  severity: low
  attack: {version: "19", techniques: [T0801]}
  match: {ics.mqtt.msgtype_name: Publish Message}
  threshold: {count: 1000, seconds: 60, by: [ics.mqtt.topic]}
- id: TEST-HARDEN-0002
  rev: 1
  status: test
  title: many writes to one register
  description: per-address threshold state
  protocol: modbus
  severity: low
  attack: {version: "19", techniques: [T0801]}
  match: {ics.modbus.access: write}
  threshold: {count: 1000, seconds: 60, by: [ics.modbus.unit_id, ics.modbus.reference_number]}
- id: TEST-HARDEN-0003
  rev: 1
  status: test
  title: every Modbus write
  description: one aggregated alert per flow and window
  protocol: modbus
  severity: low
  attack: {version: "19", techniques: [T0801]}
  match: {ics.modbus.access: write}
"""


def live_blocks() -> int:
    """Memory blocks allocated and still referenced, after a full collection: an uncapped table grows it by one
    block or more per entry, where the resident set also moves with the allocator's fragmentation."""
    gc.collect()
    return sys.getallocatedblocks()


def vm_hwm_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


_ETH = bytes.fromhex("0200000000020200000000010800")


def frame(src: int, dst: int, sport: int, dport: int, seq: int, flags: int, payload: bytes) -> bytes:
    total = 40 + len(payload)
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, total, 0, 0x4000, 64, 6, 0, src.to_bytes(4, "big"), dst.to_bytes(4, "big")
    )
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 1, 0x50, flags, 65535, 0, 0)
    return _ETH + ip + tcp + payload


def _mqtt_str(s: bytes) -> bytes:
    return struct.pack("!H", len(s)) + s


def mqtt_packet(first: int, body: bytes) -> bytes:
    """One MQTT control packet: the first byte, the variable-length remaining length, the body."""
    n, rl = len(body), b""
    while True:
        b, n = n & 0x7F, n >> 7
        rl += bytes([b | (0x80 if n else 0)])
        if not n:
            return bytes([first]) + rl + body


def mqtt_records(n: int) -> Iterator[Record]:
    """100 clients (each its own connection and CONNECT), each publishing distinct topics: n topics in all."""
    clients = 100
    per = max(1, n // clients)
    server = 0x0A000001
    seqs: dict[int, int] = {}
    frame_no = 0
    ts = T0
    for c in range(clients):
        src = 0x0A010000 + c
        body = _mqtt_str(b"MQTT") + b"\x04\x02\x00\x3c" + _mqtt_str(b"client-%d" % c)
        pkt = mqtt_packet(0x10, body)
        seqs[c] = 1000 + len(pkt)
        frame_no += 1
        ts += STEP_NS
        yield Record(None, frame_no, -1, ts, 1, frame(src, server, 40000, 1883, 1000, 0x18, pkt), 0)
    for j in range(per):
        for c in range(clients):
            src = 0x0A010000 + c
            pkt = mqtt_packet(0x30, _mqtt_str(b"plant/line%d/cell%d/tag%d" % (c, j % 97, j)) + b"1")
            frame_no += 1
            ts += STEP_NS
            yield Record(None, frame_no, -1, ts, 1, frame(src, server, 40000, 1883, seqs[c], 0x18, pkt), 0)
            seqs[c] += len(pkt)


def modbus_records(n: int) -> Iterator[Record]:
    """n single-register writes (FC 6), each to a distinct (unit, address), from n // 4 distinct connections."""
    server = 0x0A000002
    ts = T0
    for k in range(n):
        conn = k // 4
        src = 0x0B000000 + conn  # a distinct client address per connection: assets, talkers, pairs
        sport = 1024 + conn % 50_000
        unit, addr = (k >> 16) & 0xFF, k & 0xFFFF
        pdu = struct.pack("!BHH", 6, addr, k & 0xFFFF)
        adu = struct.pack("!HHHB", k & 0xFFFF, 0, len(pdu) + 1, unit) + pdu
        ts += STEP_NS
        yield Record(None, k + 1, -1, ts, 1, frame(src, server, sport, 502, 1 + (k % 4) * len(adu), 0x18, adu), 0)


def config(tmp: Path) -> Config:
    path = tmp / "sensor.yml"
    path.write_text("flows: {max_flows: 20000}\nassets: {max_assets: 5000}\nrules: {aggregate_seconds: 60}\n")
    return load_config(str(path))


def run(name: str, n: int) -> dict[str, Any]:
    from detectors.rules.engine import RuleEngine
    from detectors.rules.loader import load_rules
    from sensor.cli_rules import selected_paths
    from sensor.outputs.memory import MemorySink
    from sensor.pipeline import Outputs, Pipeline

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cfg = config(tmp)
        extra = tmp / "extra.yml"
        extra.write_text(EXTRA_RULES)
        engine = RuleEngine(load_rules([*selected_paths(cfg, (), False), extra]), cfg.lists, 60.0)

        class CountingSink(MemorySink):
            """Keeps a count only: the test measures the pipeline, not a sink that stores every document."""

            def write(self, batch: list[Any]) -> None:
                self.count = getattr(self, "count", 0) + len(batch)

        sink = CountingSink()
        pipe = Pipeline(cfg, Outputs(assets=[sink], alerts=[sink]), detectors=[engine])
        pipe.open()
        gen = mqtt_records(n) if name == "mqtt" else modbus_records(n)
        mid = n // 2
        batch: list[Record] = []
        hwm_mid = blocks_mid = 0
        for i, rec in enumerate(gen, 1):
            batch.append(rec)
            if len(batch) == 4096:
                pipe.run(batch)
                batch = []
            if i == mid:
                pipe.run(batch)
                batch = []
                hwm_mid = vm_hwm_kb()
                blocks_mid = live_blocks()
        pipe.run(batch)
        hwm_end = vm_hwm_kb()
        blocks_end = live_blocks()
        stats = pipe.stats()
        detector_stats = {
            "rules_evicted_keys": engine.evicted_keys,
            "rules_threshold_keys": max(len(c.windows) for c in engine.rules),
            "rules_pending_aggregates": len(engine._pending),
        }  # fmt: skip
        pipe.close()
    return {"hwm_mid_kb": hwm_mid, "hwm_end_kb": hwm_end, "blocks_mid": blocks_mid, "blocks_end": blocks_end,
            "stats": stats, "detectors": detector_stats}  # fmt: skip


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1], int(sys.argv[2])), default=str))
