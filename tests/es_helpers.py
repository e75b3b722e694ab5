"""Shared pieces of the Elasticsearch tests: a fake detector, a replay into given sinks, fast sink settings."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sensor.config import load_config
from sensor.messages import Alert, Anomaly, Message
from sensor.outputs.base import Sink
from sensor.outputs.elasticsearch import EsSettings
from sensor.outputs.memory import MemorySink
from sensor.pipeline import Outputs, Pipeline
from sensor.source import SourceReport, read_captures

ROOT = Path(__file__).resolve().parents[1]
SHARED_PCAPS = ROOT.parent / "shared" / "pcaps"
MODBUS_CAPTURES = [ROOT / "pcaps" / "modbus_demo.pcap", SHARED_PCAPS / "zeek" / "modbusSmall.pcap"]


class FakeDetector:
    """Alerts on every Modbus write request and every decode error, so alerts exist whatever the rule engine does."""

    name = "fake"

    def on_message(self, m: Message | Anomaly) -> Iterable[Alert]:
        if isinstance(m, Anomaly):
            yield Alert(m.ts, "TEST-ANOMALY", "Decode error", "A malformed PDU", "medium", (), "19", "fake", m)
        elif m.fields.get("is_request") and m.fields.get("access") == "write":
            yield Alert(
                m.ts, "TEST-WRITE", "Modbus write", "A write request", "high", ("T0836",), "19", "fake", m,
                references=("https://attack.mitre.org/techniques/T0836/",), explanation=f"write frame {m.packet.frame}",
                score=0.75, extra={"frame": m.packet.frame},
            )  # fmt: skip

    def on_time(self, ts: int) -> Iterable[Alert]:
        return ()

    def close(self) -> Iterable[Alert]:
        return ()


def replay_into(paths: list[Path], sinks: list[Sink], detectors: list[Any] | None = None) -> tuple[MemorySink, dict[str, Any]]:
    """Replay captures with every kind going to ``sinks`` and to a MemorySink (returned, with the stats)."""
    mem = MemorySink()
    all_sinks: list[Sink] = [mem, *sinks]
    outputs = Outputs(events=list(all_sinks), alerts=list(all_sinks), stats=list(all_sinks))
    from sensor.outputs.ecs import Observer

    pipe = Pipeline(load_config(None), outputs, detectors=detectors or [FakeDetector()], observer=Observer("test-sensor", "test-host"))
    pipe.open()
    pipe.run(read_captures([str(p) for p in paths], SourceReport()))
    stats = pipe.close()
    return mem, stats


def fast_settings(url: str | tuple[str, ...], spool: Path, **kw: Any) -> EsSettings:
    """Millisecond backoff so failure scenarios take a fraction of a second, not minutes."""
    hosts = (url,) if isinstance(url, str) else url
    base: dict[str, Any] = {
        "hosts": hosts, "spool_dir": str(spool), "retry_initial": 0.01, "retry_max": 0.1, "close_timeout": 30.0,
        "request_timeout": 5.0, "batch_docs": 200,
    }  # fmt: skip
    base.update(kw)
    return EsSettings(**base)
