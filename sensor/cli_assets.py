"""``ics-sensor assets CAPTURE... [-o PATH]``: the passive asset inventory of captures, as NDJSON ECS documents.

Also ``AssetFeed``, the adapter that runs the tracker as a detector where the pipeline does not (the multi-process
replay runs detectors once, in the parent, on the merged message stream).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

import click

from sensor.assets import AssetTracker
from sensor.config import Config, ConfigError, load_config
from sensor.messages import Alert, Anomaly, Message
from sensor.messages.asset import AssetState
from sensor.outputs.base import Sink
from sensor.outputs.ecs import EcsMapper, Observer


class AssetFeed:
    """A detector that feeds an ``AssetTracker`` and writes its documents to sinks; it never alerts."""

    name = "assets"

    def __init__(self, tracker: AssetTracker, sinks: list[Sink], mapper: EcsMapper) -> None:
        self.tracker, self.sinks, self.mapper = tracker, sinks, mapper

    def _write(self, states: list[AssetState]) -> None:
        if states:
            docs = [self.mapper.asset(st) for st in states]
            for s in self.sinks:
                s.write(docs)

    def on_message(self, m: Message | Anomaly) -> Iterable[Alert]:
        if type(m) is Message:
            self.tracker.on_message(m)
        return ()

    def on_time(self, ts: int) -> Iterable[Alert]:
        self._write(self.tracker.due(ts))
        return ()

    def close(self) -> Iterable[Alert]:
        self._write(self.tracker.final())
        return ()


def asset_feeds(config: Config, sinks: list[Sink], observer: Observer) -> list[AssetFeed]:
    """The feed for ``replay --workers N`` when asset sinks exist (none otherwise)."""
    if not sinks:
        return []
    return [AssetFeed(AssetTracker.from_config(config.raw.get("assets")), sinks, EcsMapper(observer, {}))]


def _line(doc: dict[str, Any]) -> str:
    a = doc["ics"]["asset"]
    facts = [doc.get("device", {}).get("manufacturer"), doc.get("device", {}).get("model", {}).get("identifier"),
             doc.get("device", {}).get("model", {}).get("name"), *a.get("mqtt", {}).get("client_ids", ())]  # fmt: skip
    shown = ", ".join(str(f) for f in facts if f)
    return f"  {doc['host']['id']:<39} {a['role']:<24} {','.join(a['protocols']):<20} {shown}"


@click.command("assets")
@click.argument("captures", nargs=-1, required=True)
@click.option(
    "-o",
    "--output",
    "out",
    default="-",
    metavar="PATH",
    show_default=True,
    help="NDJSON of the final inventory ('-' = stdout).",
)
@click.option(
    "--config", "config_path", metavar="PATH", help="Sensor configuration (YAML): assets.* caps, sensor name and site."
)
@click.option("--quiet", "-q", is_flag=True, help="No table on stderr.")
def assets(captures: tuple[str, ...], out: str, config_path: str | None, quiet: bool) -> None:
    """Passive asset inventory of captures: one ECS document per host (role, protocols, revealed device facts)."""
    from sensor.cli import observer_from, tune_gc
    from sensor.cli_fail import fail
    from sensor.outputs.memory import MemorySink
    from sensor.outputs.ndjson import NdjsonSink
    from sensor.pipeline import Outputs, Pipeline
    from sensor.source import CaptureError, SourceReport, expand_paths, read_captures

    try:
        config = load_config(config_path)
        files = expand_paths(list(captures))
    except (ConfigError, CaptureError) as e:
        fail(str(e))
    mem = MemorySink()
    pipe = Pipeline(config, Outputs(assets=[NdjsonSink(out), mem]), observer=observer_from(config))
    pipe.assets = AssetTracker.from_config({**(config.raw.get("assets") or {}), "update_seconds": None})  # final only
    report = SourceReport()
    tune_gc()
    try:
        pipe.open()
        pipe.run(read_captures(files, report))
    except CaptureError as e:
        fail(str(e))
    except OSError as e:
        fail(f"{e.filename or ''}: {e.strerror or e}")
    stats = pipe.close()
    if not quiet:
        st = stats.get("assets", {})
        click.echo(f"assets: {st.get('tracked', 0):,} hosts, {st.get('evicted', 0):,} evicted by the cap", err=True)
        for doc in mem.docs:
            click.echo(_line(doc), err=True)
        for p in report.problems:
            click.echo(f"warning: {p}", err=True)
    sys.stdout.flush()
