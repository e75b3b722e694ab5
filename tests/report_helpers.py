"""Test-only helpers for the report tests: a tiny detector that turns real decoded Modbus messages into alerts.

The rule engine (detectors/rules/) produces the real alerts; these tests need alerts with real messages, flows and
packets behind them before it lands, built through the same Alert -> EcsMapper.alert path the pipeline uses.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sensor.config import load_config
from sensor.messages import Alert, Anomaly, Message
from sensor.outputs.report import ReportSink
from sensor.pipeline import Outputs, Pipeline
from sensor.source import SourceReport, read_captures

# (rule id, name, severity, techniques) by what the request does
RULES: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "write": ("TEST-MODBUS-WRITE", "Modbus write", "high", ("T1692.001", "T0836")),
    "diag": ("TEST-MODBUS-DIAG", "Modbus diagnostics request", "critical", ("T0816",)),
    "devid": ("TEST-MODBUS-DEVID", "Modbus device identification read", "low", ("T0888",)),
    "exception": ("TEST-MODBUS-EXC", "Modbus exception response", "medium", ("T0814",)),
    "anomaly": ("TEST-ANOMALY", "Malformed Modbus", "medium", ()),
}


class FlagWrites:
    """Flags Modbus writes, diagnostics, device identification reads, exception responses and anomalies."""

    name = "test-flagger"

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self.emitted = 0

    def _alert(self, kind: str, m: Message | Anomaly) -> list[Alert]:
        if self.limit is not None and self.emitted >= self.limit:
            return []
        self.emitted += 1
        rid, name, sev, techs = RULES[kind]
        return [Alert(ts=m.ts, rule_id=rid, rule_name=name, description=f"{name} (test detector)", severity=sev,
                      techniques=techs, attack_version="19", detector="rules", message=m,
                      explanation=f"{name} seen in frame {m.packet.frame}")]  # fmt: skip

    def on_message(self, m: Message | Anomaly) -> Iterable[Alert]:
        if isinstance(m, Anomaly):
            return self._alert("anomaly", m)
        if m.protocol != "modbus":
            return ()
        f = m.fields
        if f.get("is_exception"):
            return self._alert("exception", m)
        if not f.get("is_request"):
            return ()
        if f.get("access") in ("write", "read_write"):
            return self._alert("write", m)
        if f.get("function_code") == 8:
            return self._alert("diag", m)
        if f.get("function_code") == 43:
            return self._alert("devid", m)
        return ()

    def on_time(self, ts: int) -> Iterable[Alert]:
        return ()

    def close(self) -> Iterable[Alert]:
        return ()


def replay_report(paths: list[str | Path], max_alerts: int = 5000, limit: int | None = None) -> tuple[ReportSink, dict[str, Any]]:
    """Replay captures through the pipeline with the test detector and a report sink on events, alerts and stats."""
    sink = ReportSink(None, max_alerts=max_alerts, captures=[str(p) for p in paths], rule_pack="test-flagger")
    pipe = Pipeline(load_config(None), Outputs(events=[sink], alerts=[sink], stats=[sink]), detectors=[FlagWrites(limit)])
    pipe.open()
    pipe.run(read_captures([str(p) for p in paths], SourceReport()))
    stats = pipe.close()
    return sink, stats
