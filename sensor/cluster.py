"""Archives beyond one machine (issue 10): the same replay, one task per capture file, on an existing Dask cluster.

No scheduler of our own: Dask places the tasks, retries a task whose worker died, and the shared directory holds
the captures and the outputs. Each task is ``ics-sensor replay FILE`` (the same pipeline, rules and model), writing
``OUT/<file name>.events.ndjson`` (and alerts, stats) and, with ``--es``, to the same Elasticsearch: document ids
are deterministic, so a retried task re-sends documents the cluster already has and nothing is doubled.

What one task per file gives up: state across files. A flow that continues from one file into the next is picked
up midstream in the second, and a threshold counted across hosts sees one file at a time. For rotated captures of a
plant network that is the rotation boundary only; run one-machine ``replay DIR`` when it matters.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

OUTPUT_KINDS = ("events", "alerts", "stats")


def output_paths(capture: str, out_dir: str) -> dict[str, str]:
    """Where one capture's documents go: named after the file, unique per path (two days may share a name)."""
    tag = hashlib.sha1(os.path.abspath(capture).encode()).hexdigest()[:8]
    base = Path(out_dir) / f"{Path(capture).name}.{tag}"
    return {kind: f"{base}.{kind}.ndjson" for kind in OUTPUT_KINDS}


def replay_file(
    capture: str, out_dir: str, config_path: str | None = None, es_urls: Sequence[str] = (),
    rules_paths: Sequence[str] = (), no_builtin_rules: bool = False, model_path: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """One task: replay one capture into its own NDJSON files (and Elasticsearch); its stats."""
    from sensor.cli import observer_from, tune_gc
    from sensor.cli_es import es_settings
    from sensor.cli_rules import rule_detectors
    from sensor.config import load_config
    from sensor.model_option import model_detectors
    from sensor.outputs.ndjson import NdjsonSink
    from sensor.pipeline import Outputs, Pipeline
    from sensor.source import SourceReport, read_captures

    config = load_config(config_path)
    outputs = Outputs()
    paths = output_paths(capture, out_dir)
    for kind, path in paths.items():
        getattr(outputs, kind).append(NdjsonSink(path))
    sink = None
    if es_urls:
        from sensor.outputs.elasticsearch import ElasticsearchSink

        settings = es_settings(config, tuple(es_urls))
        # One spool per task: tasks of one machine must not share a write-ahead spool.
        spool = Path(settings.spool_path) / f"task-{Path(paths['events']).name.removesuffix('.events.ndjson')}"
        sink = ElasticsearchSink(replace(settings, spool_dir=str(spool)))
        for kind in settings.kinds:
            getattr(outputs, kind).append(sink)
    tune_gc()
    detectors = [
        *rule_detectors(config, tuple(rules_paths), no_builtin_rules),
        *model_detectors(config, model_path, None),
    ]
    report = SourceReport()
    pipe = Pipeline(config, outputs, detectors=detectors, observer=observer_from(config))
    pipe.open()
    pipe.run(read_captures([capture], report))
    stats = pipe.close()
    out: dict[str, Any] = {"capture": capture, "outputs": paths, "problems": report.problems, **stats}
    if sink is not None:
        out["elasticsearch"] = sink.stats()
    return out


def replay_on_dask(
    captures: Sequence[str], out_dir: str, scheduler: str | None = None, **task: Any
) -> list[dict[str, Any]]:
    """Every capture file (directories expanded) as one Dask task; the tasks' stats in file order.

    ``scheduler``: the address of a running ``dask scheduler`` (its workers must see ``out_dir`` and the captures
    at the same paths); None starts a local cluster, one worker process per CPU.
    """
    from dask.distributed import Client, LocalCluster

    from sensor.source import expand_paths

    files = expand_paths(list(captures))
    os.makedirs(out_dir, exist_ok=True)
    cluster = None
    if scheduler is None:
        cluster = LocalCluster(n_workers=os.cpu_count() or 1, threads_per_worker=1, processes=True)
        client = Client(cluster)
    else:
        client = Client(scheduler)
    try:
        futures = client.map(replay_file, files, out_dir=out_dir, pure=False, **task)
        return list(client.gather(futures))
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


@click.command("replay-cluster")
@click.argument("captures", nargs=-1, required=True)
@click.option("--out-dir", required=True, metavar="DIR", help="Shared directory for each capture's NDJSON outputs.")
@click.option(
    "--scheduler", metavar="ADDRESS", help="A running Dask scheduler (tcp://host:8786); default: a local cluster."
)
@click.option("--config", "config_path", metavar="PATH", help="Sensor configuration (YAML), read by every task.")
@click.option("--es", "es_urls", metavar="URL", multiple=True, help="Also send to Elasticsearch at URL (repeatable).")
@click.option("--rules", "rules_paths", metavar="PATH", multiple=True, help="Rule file or directory (repeatable).")
@click.option("--no-builtin-rules", is_flag=True, help="Do not load the shipped rule pack.")
@click.option("--model", "model_path", metavar="PATH", help="Score traffic against a model from `ics-sensor train`.")
def replay_cluster(
    captures: tuple[str, ...], out_dir: str, scheduler: str | None, config_path: str | None,
    es_urls: tuple[str, ...], rules_paths: tuple[str, ...], no_builtin_rules: bool, model_path: str | None,
) -> None:  # fmt: skip
    """Replay an archive on a Dask cluster: one task per capture file (needs `pip install 'dask[distributed]'`)."""
    from sensor.cli_fail import fail
    from sensor.source import CaptureError

    try:
        import dask.distributed  # noqa: F401
    except ImportError:
        fail("replay-cluster needs Dask: pip install 'dask[distributed]'")

    try:
        results = replay_on_dask(
            captures, out_dir, scheduler, config_path=config_path, es_urls=es_urls, rules_paths=rules_paths,
            no_builtin_rules=no_builtin_rules, model_path=model_path,
        )  # fmt: skip
    except (CaptureError, OSError) as e:
        fail(str(e))
    packets = sum(r["packets"] for r in results)
    alerts = sum(r["alerts"] for r in results)
    click.echo(f"captures: {len(results)}  packets: {packets:,}  alerts: {alerts:,}  outputs in {out_dir}", err=True)
    for r in results:
        for p in r["problems"]:
            click.echo(f"problem: {p}", err=True)
