"""``ics-sensor live`` (receive-only capture as a long-running service) and ``ics-sensor config check``."""

from __future__ import annotations

import signal
import time
from typing import Any

import click

from sensor.cli_fail import fail
from sensor.config import ConfigError, load_config
from sensor.live import LiveCapture, LiveError, drop_privileges
from sensor.outputs.ndjson import NdjsonSink
from sensor.pipeline import Outputs, Pipeline

STATS_EVERY_S = 60.0


@click.command()
@click.option("-i", "--interface", "interfaces", multiple=True, metavar="IFACE", help="Interface to capture on (repeatable).")
@click.option("--bpf", metavar="FILTER", help="Capture filter (tcpdump syntax), applied in the kernel.")
@click.option("--config", "config_path", metavar="PATH", help="Sensor configuration (YAML).")
@click.option("--events", "events_path", metavar="PATH", help="NDJSON of decoded messages ('-' = stdout).")
@click.option("--alerts", "alerts_path", metavar="PATH", help="NDJSON of alerts ('-' = stdout).")
@click.option("--stats", "stats_path", metavar="PATH", help="NDJSON of stats documents (one a minute).")
@click.option("--rules", "rules_paths", metavar="PATH", multiple=True, help="Extra rule file or directory.")
@click.option("--no-builtin-rules", is_flag=True, help="Do not load the shipped rule pack.")
@click.option("--health-port", type=int, default=None, help="Serve Prometheus metrics on 127.0.0.1:PORT.")
@click.option("--user", metavar="USER", help="Drop privileges to USER once the sockets are open.")
@click.option("--stats-interval", type=float, default=STATS_EVERY_S, show_default=True, help="Seconds between stats documents.")
@click.option("--duration", type=float, default=None, help="Stop after this many seconds (tests, benchmarks).")
@click.option("--es", "es_urls", metavar="URL", multiple=True, help="Also send to Elasticsearch at URL (repeatable).")
def live(
    interfaces: tuple[str, ...], bpf: str | None, config_path: str | None, events_path: str | None,
    alerts_path: str | None, stats_path: str | None, rules_paths: tuple[str, ...], no_builtin_rules: bool,
    health_port: int | None, user: str | None, stats_interval: float, duration: float | None,
    es_urls: tuple[str, ...] = (),
) -> None:  # fmt: skip
    """Capture live on interfaces (receive-only) with the same decoders, rules and outputs as replay."""
    from sensor.cli import observer_from, tune_gc
    from sensor.cli_rules import rule_detectors

    try:
        config = load_config(config_path)
    except ConfigError as e:
        fail(str(e))
    ifaces = list(interfaces) or list(config.raw["interfaces"])
    health = config.raw.get("health") or {}
    port = health_port if health_port is not None else health.get("port")
    try:
        capture = LiveCapture(ifaces, bpf or config.raw["bpf"])
    except LiveError as e:
        fail(str(e))
    server = None
    if port is not None:
        from sensor.health import HealthServer

        server = HealthServer(int(port))
        server.start()
    if es_urls or config.raw["outputs"].get("elasticsearch"):
        # Loaded while privileged: after the drop the installation may not be readable by the new user.
        import sensor.cli_es
        import sensor.outputs.elasticsearch  # noqa: F401
    try:
        drop_privileges(user or health.get("user"))
    except (LiveError, KeyError, OSError) as e:
        fail(f"cannot drop privileges: {e}")

    outputs = Outputs()
    for path, kind in ((events_path, "events"), (alerts_path, "alerts"), (stats_path, "stats")):
        if path:
            getattr(outputs, kind).append(NdjsonSink(path))
    es_sink = None
    if es_urls or config.raw["outputs"].get("elasticsearch"):
        from sensor.cli_es import attach_es

        try:
            es_sink = attach_es(outputs, config, es_urls)
        except ConfigError as e:
            fail(str(e))
    state: dict[str, Any] = {"reload": False}

    def build_detectors() -> list[Any]:
        return list(rule_detectors(config, rules_paths, no_builtin_rules))

    tune_gc()
    pipe = Pipeline(config, outputs, detectors=build_detectors(), observer=observer_from(config))
    signal.signal(signal.SIGTERM, lambda *_: capture.stop())
    signal.signal(signal.SIGINT, lambda *_: capture.stop())
    signal.signal(signal.SIGHUP, lambda *_: state.__setitem__("reload", True))
    click.echo(f"ics-sensor: capturing on {', '.join(ifaces)} (receive-only)", err=True)
    pipe.open()
    started = time.monotonic()
    next_stats = started + stats_interval
    while capture._running:
        pipe.run(capture.records())
        now = time.monotonic()
        if state["reload"]:
            state["reload"] = False
            try:
                pipe.detectors = build_detectors()  # rules and lists re-read; flows and decoders keep their state
                click.echo("ics-sensor: rules reloaded", err=True)
            except Exception as e:
                click.echo(f"ics-sensor: reload failed, keeping the old rules: {e}", err=True)
        if now >= next_stats:
            next_stats = now + stats_interval
            capture.read_kernel_stats()
            live_stats: dict[str, Any] = {"live": vars(capture.stats).copy()}
            if es_sink is not None:
                live_stats["elasticsearch"] = es_sink.stats()
            pipe.flush(live_stats)
            if server:
                server.update({**pipe.stats(), **live_stats})
        if duration is not None and now - started >= duration:
            capture.stop()
    capture.read_kernel_stats()
    stats = pipe.close()
    stats["live"] = vars(capture.stats).copy()
    capture.close()
    if server:
        server.update(stats)
        server.stop()
    if es_sink is not None:
        from sensor.cli_es import es_summary

        click.echo(es_summary(es_sink), err=True)
    click.echo(
        f"ics-sensor: stopped; packets {stats['packets']:,}, kernel drops {stats['live']['kernel_drops']:,}, "
        f"messages {sum(stats['messages'].values()):,}, alerts {stats['alerts']:,}",
        err=True,
    )


@click.group("config")
def config_group() -> None:
    """Configuration file tools."""


@config_group.command("check")
@click.argument("path")
def config_check(path: str) -> None:
    """Validate a configuration file; prints the first problem with its key, or 'ok'."""
    try:
        load_config(path)
    except ConfigError as e:
        fail(str(e))
    click.echo(f"{path}: ok")
