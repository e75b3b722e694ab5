"""Run the pipeline in-process on captures and collect documents or messages (tests only)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sensor.config import load_config
from sensor.messages import Anomaly, Message
from sensor.outputs.memory import MemorySink
from sensor.pipeline import Outputs, Pipeline
from sensor.source import SourceReport, read_captures


class Collector:
    """A detector that records every message and anomaly it is shown."""

    name = "collector"

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.anomalies: list[Anomaly] = []

    def on_message(self, m: Message | Anomaly) -> Iterable[Any]:
        (self.messages if isinstance(m, Message) else self.anomalies).append(m)
        return ()

    def on_time(self, ts: int) -> Iterable[Any]:
        return ()

    def close(self) -> Iterable[Any]:
        return ()


def replay(paths: list[str | Path], config_path: str | None = None, events: bool = False) -> tuple[Collector, dict[str, Any], SourceReport, list[dict]]:
    col = Collector()
    sink = MemorySink()
    outputs = Outputs(events=[sink]) if events else Outputs()
    pipe = Pipeline(load_config(config_path), outputs, detectors=[col])
    report = SourceReport()
    pipe.open()
    pipe.run(read_captures([str(p) for p in paths], report))
    stats = pipe.close()
    return col, stats, report, sink.docs


def tshark_fields(path: Path, fields: list[str], display_filter: str, extra: list[str] | None = None) -> list[list[str]]:
    """tshark -T fields rows (one per frame); multi-valued fields come comma-joined."""
    exe = shutil.which("tshark")
    assert exe, "tshark is required for the correctness tests (apt-get install tshark)"
    cmd = [exe, "-n", "-r", str(path), "-Y", display_filter, "-T", "fields", "-E", "separator=\t",
           "-E", "occurrence=a", "-E", "aggregator=,"]  # fmt: skip
    for f in fields:
        cmd += ["-e", f]
    cmd += extra or []
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return [line.split("\t") for line in out.splitlines()]
