"""Command line: ``ics-sensor replay`` and friends. Errors end with one line on stderr and a non-zero status."""

from __future__ import annotations

import contextlib
import importlib
import itertools
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

import click

from sensor import __version__
from sensor.checkpoint import Checkpoint, CheckpointError
from sensor.cli_es import attach_es, es_summary
from sensor.cli_fail import fail
from sensor.cli_rules import rule_detectors
from sensor.config import Config, ConfigError, load_config
from sensor.heap import retain_freed_buffers
from sensor.model_option import model_detectors, save_learned
from sensor.outputs.ecs import Observer
from sensor.outputs.ndjson import NdjsonSink
from sensor.pipeline import Outputs, Pipeline
from sensor.source import CaptureError, Record, SourceReport, expand_paths, read_captures


def open_checkpoint(
    path: str, every_s: float, files: list[str], outputs: dict[str, str | None], report_path: str | None
) -> Checkpoint:
    """The replay's checkpoint, checked against the outputs it can resume; exits with the reason when unusable."""
    if report_path:
        fail("--checkpoint does not work with --report (the report is built in memory); use the NDJSON outputs")
    if "-" in outputs.values():
        fail("--checkpoint needs output files, not standard output")
    try:
        ckpt = Checkpoint.open(path, files, every_s)
    except (CheckpointError, OSError) as e:
        fail(str(e))
    if ckpt.records and not ckpt.complete:
        for kind, p in outputs.items():
            if not p:
                continue
            if p not in ckpt.outputs:
                fail(f"--{kind} {p}: not an output of the checkpointed replay; resume with the same outputs")
            if not os.path.exists(p) or os.path.getsize(p) < ckpt.outputs[p]:
                fail(f"--{kind} {p}: shorter than at the checkpoint ({ckpt.outputs[p]:,} bytes); cannot resume")
    return ckpt


AUTO_PARALLEL_BYTES = 64 << 20  # below this, forking workers costs more than it saves
# With the model, whose per-pair half runs in the workers, a message costs about twice as much: a 7 MB capture took
# 1.29-1.47 s in one process and 1.11-1.14 s with 2 workers (stop 19).
AUTO_PARALLEL_MODEL_BYTES = 8 << 20


def default_workers(files: list[str], threshold: int = AUTO_PARALLEL_BYTES) -> int:
    """One worker per CPU for a large replay (issue 10's default), one process for a small one."""
    cpus = os.cpu_count() or 1
    if cpus < 2:
        return 1
    size = 0
    for f in files:
        with contextlib.suppress(OSError):
            size += os.path.getsize(f)
    return cpus if size >= threshold else 1


def tune_gc() -> None:
    """Collect young objects less often: a replay allocates millions of short-lived dicts that never form
    cycles, and the default threshold (700) spends ~15% of the run in the collector (measured, bench/)."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def observer_from(config: Config) -> Observer:
    s = config.raw["sensor"]
    import socket

    return Observer(
        name=s["name"] or socket.gethostname(), hostname=socket.gethostname(), site=s["site"],
        organization=s["organization"], labels={str(k): str(v) for k, v in (s["labels"] or {}).items()},
    )  # fmt: skip


def _progress(paths: list[str]) -> tuple[Callable[[int, int], None] | None, Any]:
    """A rich progress bar on a terminal; nothing when stderr is not a terminal."""
    if not sys.stderr.isatty():
        return None, None
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    total = sum(os.path.getsize(p) for p in paths)
    prog = Progress(
        TextColumn("replay"), BarColumn(), TextColumn("{task.fields[packets]:,} packets"), TransferSpeedColumn(),
        TimeRemainingColumn(), transient=True,
    )  # fmt: skip
    task = prog.add_task("replay", total=total, packets=0)
    prog.start()

    def update(packets: int, nbytes: int) -> None:
        prog.update(task, completed=min(total, nbytes + 16 * packets), packets=packets)

    return update, prog


def summary_lines(stats: dict[str, Any], report: SourceReport) -> list[str]:
    msgs = ", ".join(f"{k} {v:,}" for k, v in stats["messages"].items()) or "none"
    lines = [
        f"captures: {len(report.files)}  packets: {stats['packets']:,}  bytes: {stats['bytes']:,}  flows: {stats['flows']:,}",
        f"messages: {msgs}",
        f"decode errors: {stats['decode_errors']:,}"
        + (f" ({', '.join(f'{k} {v}' for k, v in stats['decode_errors_by_name'].items())})" if stats["decode_errors"] else ""),
        f"alerts: {stats['alerts']:,}",
        f"seconds: {stats['seconds']:.2f}  packets/s: {stats['packets_per_second']:,}",
    ]
    lines += [f"warning: {p}" for p in report.problems]
    return lines


class LazyGroup(click.Group):
    """Subcommands imported when they are run or listed: a replay does not pay for the model, report, asset and
    live modules it does not use (0.15 s of a 0.45 s start, measured with ``python -X importtime``)."""

    def __init__(self, *args: Any, lazy: dict[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy  # command name -> "module:attribute"

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            module, attr = self.lazy[cmd_name].split(":")
            self.add_command(getattr(importlib.import_module(module), attr), cmd_name)
        return super().get_command(ctx, cmd_name)


SUBCOMMANDS = {
    "report": "sensor.cli_report:report",
    "train": "sensor.cli_model:train", "evaluate": "sensor.cli_model:evaluate",  # issue 6
    "live": "sensor.cli_live:live", "config": "sensor.cli_live:config_group",
    "rules": "sensor.cli_rules:rules_group", "es": "sensor.cli_es:es_group",
    "assets": "sensor.cli_assets:assets",  # issue 7: asset inventory
    "replay-cluster": "sensor.cluster:replay_cluster",  # issue 10: archives beyond one machine (Dask)
}  # fmt: skip


@click.group(cls=LazyGroup, lazy=SUBCOMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ics-sensor")
def main() -> None:
    """Passive ICS network security sensor: Modbus/TCP, S7comm and MQTT, rules and a learned baseline."""


@main.command()
@click.argument("captures", nargs=-1, required=True)
@click.option("--events", "events_path", metavar="PATH", help="NDJSON of every decoded message and decode error ('-' = stdout).")
@click.option("--alerts", "alerts_path", metavar="PATH", help="NDJSON of alerts ('-' = stdout).")
@click.option("--stats", "stats_path", metavar="PATH", help="NDJSON with the final sensor statistics document.")
@click.option("--assets", "assets_path", metavar="PATH", help="NDJSON of asset inventory documents: on change (rate-limited) and a final one per host.")
@click.option("--report", "report_path", metavar="PATH", help="Self-contained HTML report (aggregated while streaming).")
@click.option("--config", "config_path", metavar="PATH", help="Sensor configuration (YAML).")
@click.option("--quiet", "-q", is_flag=True, help="No summary on stderr.")
@click.option("--rules", "rules_paths", metavar="PATH", multiple=True, help="Rule file or directory (repeatable), added to the shipped pack.")
@click.option("--no-builtin-rules", is_flag=True, help="Do not load the shipped rule pack (rules/).")
@click.option("--es", "es_urls", metavar="URL", multiple=True, help="Also send to Elasticsearch at URL (repeatable; see `es setup`).")
@click.option("--workers", type=click.IntRange(min=0), default=None, is_flag=False, flag_value=0, metavar="N", help="Worker processes, flows sharded by hash; the same output as one process. 0 or no N: one per CPU. Default: one per CPU for captures of 64 MiB or more (8 MiB with --model), else 1.")
@click.option("--model", "model_path", metavar="PATH", help="Score traffic against a model from `ics-sensor train` (baseline + anomaly model).")
@click.option("--model-learn", "model_learn", metavar="PATH", help="With --model: keep learning slowly (guarded) and save the updated model to PATH.")
@click.option("--checkpoint", "checkpoint_path", metavar="PATH", help="Resumable replay: record progress in PATH; run the same command again to resume after an interruption.")
@click.option("--checkpoint-every", type=click.FloatRange(min=0), default=30.0, show_default=True, metavar="SECONDS", help="Seconds between checkpoints.")
def replay(
    captures: tuple[str, ...], events_path: str | None, alerts_path: str | None, stats_path: str | None,
    config_path: str | None, quiet: bool, report_path: str | None = None, rules_paths: tuple[str, ...] = (),
    no_builtin_rules: bool = False, es_urls: tuple[str, ...] = (), workers: int | None = None,
    model_path: str | None = None, model_learn: str | None = None, assets_path: str | None = None,
    checkpoint_path: str | None = None, checkpoint_every: float = 30.0,
) -> None:  # fmt: skip
    """Replay pcap/pcapng captures (files, gzip'd files or directories) through the sensor."""
    retain_freed_buffers()  # sensor/heap.py: big temporary buffers reused, not a page fault per 4 KB each time
    try:
        config = load_config(config_path)
        files = expand_paths(list(captures))
    except (ConfigError, CaptureError) as e:
        fail(str(e))
    paths = {"events": events_path, "alerts": alerts_path, "stats": stats_path, "assets": assets_path}
    ckpt = open_checkpoint(checkpoint_path, checkpoint_every, files, paths, report_path) if checkpoint_path else None
    if ckpt is not None and ckpt.complete:
        if not quiet:
            click.echo(f"nothing to do: {checkpoint_path} says this replay is complete", err=True)
        return
    base = ckpt.records if ckpt is not None else 0  # records a resumed replay passes over
    outputs = Outputs()
    for kind, path in paths.items():
        if path:
            getattr(outputs, kind).append(NdjsonSink(path, ckpt.outputs[path] if ckpt is not None and base else None))
    try:
        es_sink = attach_es(outputs, config, es_urls)
    except ConfigError as e:
        fail(str(e))
    if report_path:  # one sink on all three streams; it writes the HTML when the pipeline closes it
        from sensor.outputs.report import ReportSink, rule_pack_summary

        html_report = ReportSink(report_path, captures=files)
        for sinks in (outputs.events, outputs.alerts, outputs.stats):
            sinks.append(html_report)
    report = SourceReport()
    tune_gc()
    detectors = rule_detectors(config, rules_paths, no_builtin_rules)
    if report_path:
        html_report.rule_pack = rule_pack_summary(detectors)
    detectors = [*detectors, *model_detectors(config, model_path, model_learn)]  # issue 6: learned baseline + model
    if workers is None:  # the model splits over the workers unless it keeps learning (AnomalyDetector.shard)
        split = model_path and not model_learn
        workers = default_workers(files, AUTO_PARALLEL_MODEL_BYTES if split else AUTO_PARALLEL_BYTES)
    workers = workers or os.cpu_count() or 1
    ndjson = [s for s in outputs.all() if isinstance(s, NdjsonSink)]

    def checkpoint(done: int, flush: Callable[[], None]) -> None:
        """Every document of the first ``done`` records is with the sinks: flush them and record it, when due and
        past the last checkpoint (the parallel merge reports the same ``done`` again while a worker lags)."""
        if ckpt is not None and done > ckpt.records and ckpt.due():  # records: where it resumed, or the last save
            flush()
            ckpt.save(done, {s.path: s.position() for s in ndjson})

    if workers > 1:  # issue 10: sharded over processes (sensor/parallel.py), documents identical to one process
        from sensor.cli_assets import asset_feeds
        from sensor.parallel import ParallelError, replay_parallel

        detectors = [*detectors, *asset_feeds(config, outputs.assets, observer_from(config))]  # the parent tracks hosts

        try:
            stats = replay_parallel(
                config, files, outputs, detectors, observer_from(config), workers, report,
                progress=lambda: _progress(files), start=base, mark=checkpoint if ckpt is not None else None,
            )  # fmt: skip
        except (CaptureError, ParallelError, CheckpointError) as e:
            fail(str(e))
        except OSError as e:
            fail(f"{e.filename or ''}: {e.strerror or e}")
        finish_replay(stats, report, detectors, model_learn, ckpt, base, paths, quiet, es_sink, checkpoint_path)
        return
    pipe = Pipeline(config, outputs, detectors=detectors, observer=observer_from(config))
    update, prog = _progress(files)
    records: Iterable[Record] = read_captures(files, report)
    if base:  # resumed: read past what the checkpoint says was done
        records = itertools.islice(records, base, None)
    mark = (lambda packets: checkpoint(base + packets, pipe.flush_outputs)) if ckpt is not None else None
    try:
        pipe.open()
        pipe.run(records, progress=update, mark=mark)
    except (CaptureError, CheckpointError) as e:
        fail(str(e))
    except OSError as e:
        fail(f"{e.filename or ''}: {e.strerror or e}")
    finally:
        if prog is not None:
            prog.stop()
    stats = pipe.close()
    finish_replay(stats, report, detectors, model_learn, ckpt, base, paths, quiet, es_sink, checkpoint_path)


def finish_replay(
    stats: dict[str, Any], report: SourceReport, detectors: list[Any], model_learn: str | None,
    ckpt: Checkpoint | None, base: int, paths: dict[str, str | None], quiet: bool, es_sink: Any,
    checkpoint_path: str | None,
) -> None:  # fmt: skip
    """After either replay path: the learned model, the final checkpoint, the summary."""
    stats["source_problems"] = list(report.problems)
    save_learned(detectors, model_learn)
    if ckpt is not None:
        try:
            ckpt.save(base + stats["packets"], {p: os.path.getsize(p) for p in paths.values() if p}, complete=True)
        except CheckpointError as e:
            fail(str(e))
    if not quiet:
        if base:
            click.echo(f"resumed from {checkpoint_path}: the first {base:,} records were done before", err=True)
        for line in summary_lines(stats, report):
            click.echo(line, err=True)
        if es_sink is not None:
            click.echo(es_summary(es_sink), err=True)


if __name__ == "__main__":
    main()
