"""Bounded resources: a SYN flood of a million new flows replays in flat memory, evictions counted; a decoder
that crashes on one message is counted and the sensor goes on."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

from sensor.config import load_config
from sensor.messages import FlowInfo
from sensor.pipeline import Pipeline
from sensor.source import SourceReport, read_captures
from tests.replay_helpers import Collector


def _syn_flood(path: Path, n: int) -> None:
    """n SYNs from n distinct (address, port) pairs to one PLC on 502, as a pcap written with struct."""
    eth = b"\x00" * 12 + b"\x08\x00"
    with path.open("wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        buf = bytearray()
        for i in range(n):
            src = bytes((10, 1 + (i >> 16) % 200, (i >> 8) & 255, i & 255))
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, i & 0xFFFF, 0, 64, 6, 0, src, bytes((10, 0, 0, 1)))
            tcp = struct.pack("!HHIIBBHHH", 1024 + i % 60000, 502, i, 0, 0x50, 0x02, 8192, 0, 0)
            frame = eth + ip + tcp
            sec, usec = divmod(i, 1_000_000)  # one SYN a microsecond
            buf += struct.pack("<IIII", 1_700_000_000 + sec, usec, len(frame), len(frame)) + frame
            if len(buf) > 1 << 20:
                f.write(buf)
                buf.clear()
        f.write(buf)


def test_million_flow_syn_flood_in_flat_memory(tmp_path: Path) -> None:
    cap = tmp_path / "synflood.pcap"
    _syn_flood(cap, 1_000_000)
    cfg = tmp_path / "sensor.yml"
    cfg.write_text("flows: {max_flows: 20000}\n")
    stats = tmp_path / "stats.ndjson"
    code = (
        "import sys; from sensor.cli import main; sys.argv = sys.argv[1:]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        # VmHWM is this process image's own peak; ru_maxrss would carry the forking pytest parent's peak over.
        "print(next(int(x.split()[1]) for x in open('/proc/self/status') if x.startswith('VmHWM')))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, "ics-sensor", "replay", str(cap), "--config", str(cfg), "--stats", str(stats), "-q",
         "--workers", "1"],  # one process: its flow cap and its own peak memory (the capture is over 64 MiB)
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    peak_mb = int(r.stdout.strip().splitlines()[-1]) / 1024
    doc = json.loads(stats.read_text())["ics"]["stats"]
    assert doc["packets"] == 1_000_000 and doc["flows"] == 1_000_000
    assert doc["tcp"]["evicted_cap"] >= 1_000_000 - 20_000
    # 20,000 live flows cost a few tens of MB; a table that kept every flow would need well over 1 GB.
    assert peak_mb < 250, f"peak RSS {peak_mb:.0f} MB"


class _Exploding:
    """A decoder wrapper that raises on every third PDU it is fed: a stand-in for a decoder bug."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.name, self.transport, self.registry = inner.name, inner.transport, inner.registry  # type: ignore[attr-defined]
        self.calls = 0

    def probe(self, data: bytes, from_client: bool) -> object:
        return self.inner.probe(data, from_client)  # type: ignore[attr-defined]

    def new_state(self, flow: FlowInfo) -> object:
        return self.inner.new_state(flow)  # type: ignore[attr-defined]

    def feed(self, state: object, *args: object) -> object:
        self.calls += 1
        if self.calls % 3 == 0:
            raise ValueError("boom")
        return self.inner.feed(state, *args)  # type: ignore[attr-defined]

    def close(self, state: object, *args: object) -> object:
        return self.inner.close(state, *args)  # type: ignore[attr-defined]

    def stats(self, state: object) -> dict[str, int]:
        return self.inner.stats(state)  # type: ignore[attr-defined]


def test_decoder_crash_is_counted_and_replay_goes_on(shared_pcaps: Path) -> None:
    col = Collector()
    pipe = Pipeline(load_config(None), detectors=[col])
    boom = _Exploding(pipe.decoders["modbus"])
    pipe.flows.decoders["modbus"] = boom  # type: ignore[assignment]
    pipe.flows.port_map[502] = boom  # type: ignore[assignment]
    pipe.open()
    pipe.run(read_captures([str(shared_pcaps / "zeek/modbusBig.pcap")], SourceReport()))
    stats = pipe.close()
    crashes = [a for a in col.anomalies if a.name == "sensor.decoder_exception"]
    assert stats["tcp"]["decoder_exceptions"] == len(crashes) == boom.calls // 3
    assert "ValueError: boom" in crashes[0].reason
    # Two thirds of the PDUs still decode: the sensor went on after every crash.
    assert stats["packets"] == 13622
    assert stats["messages"]["modbus"] > 0.6 * 5548


