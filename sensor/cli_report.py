"""``ics-sensor report``: the self-contained HTML report from NDJSON documents written by ``replay``."""

from __future__ import annotations

import gzip
import sys
from typing import IO

import click
import orjson

from sensor.outputs.report import MAX_ALERTS, ReportSink

BATCH = 2048


def _open(path: str) -> IO[bytes]:
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def feed(sink: ReportSink, path: str) -> int:
    """Stream one NDJSON file into the sink; returns the number of lines that were not JSON objects."""
    bad = 0
    batch: list[dict] = []
    with _open(path) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError:
                bad += 1
                continue
            if not isinstance(doc, dict):
                bad += 1
                continue
            batch.append(doc)
            if len(batch) >= BATCH:
                sink.write(batch)
                batch = []
    if batch:
        sink.write(batch)
    return bad


@click.command("report")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", required=True, metavar="PATH", help="HTML file to write.")
@click.option("--max-alerts", default=MAX_ALERTS, show_default=True, type=click.IntRange(0), help="Alerts kept in the table (the most severe).")
@click.option("--title", default="ICS sensor report", show_default=True, help="Page title.")
def report(inputs: tuple[str, ...], output: str, max_alerts: int, title: str) -> None:
    """Write one self-contained HTML report from ALERTS.ndjson [EVENTS.ndjson] [STATS.ndjson] (any order, .gz ok).

    Documents are told apart by event.kind (alert, event, metric), so the files written by
    `replay --alerts --events --stats` can be given as they are.
    """
    sink = ReportSink(output, max_alerts=max_alerts, title=title)
    sink.open()
    for path in inputs:
        try:
            bad = feed(sink, path)
        except OSError as e:
            click.echo(f"ics-sensor: error: {path}: {e.strerror or e}", err=True)
            sys.exit(2)
        if bad:
            click.echo(f"warning: {path}: {bad:,} lines are not JSON documents and were skipped", err=True)
    try:
        sink.close()
    except OSError as e:
        click.echo(f"ics-sensor: error: {output}: {e.strerror or e}", err=True)
        sys.exit(2)
    d = sink.data
    click.echo(f"report: {output} ({d.events:,} events, {d.alerts:,} alerts, {len(d.kept):,} in the table)", err=True)
