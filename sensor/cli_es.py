"""``ics-sensor es setup|check`` and the ``--es URL`` wiring of replay: everything Elasticsearch on the command line.

Kept out of cli.py so the Elasticsearch client is imported only when a cluster is used.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import TYPE_CHECKING, Any

import click

from sensor.cli_fail import fail
from sensor.config import Config, ConfigError, load_config

if TYPE_CHECKING:
    from sensor.outputs.elasticsearch import ElasticsearchSink, EsSettings
    from sensor.pipeline import Outputs

_URL = re.compile(r"^https?://[^/@\s]+(/.*)?$")


def _ensure_logging() -> None:
    """Sink warnings (cluster unreachable, drops, dead letters) reach stderr in the CLI's style."""
    lg = logging.getLogger("sensor.outputs")
    if not lg.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("ics-sensor: %(levelname)s: %(message)s"))
        lg.addHandler(h)
        lg.setLevel(logging.INFO if sys.stderr.isatty() else logging.WARNING)
        lg.propagate = False


def es_settings(config: Config, urls: tuple[str, ...] = (), namespace: str | None = None) -> EsSettings:
    from sensor.outputs.elasticsearch import EsSettings

    for u in urls:
        if not _URL.match(u):
            shown = "<URL with credentials>" if "@" in u else repr(u)
            raise ConfigError(
                f"--es: {shown} is not an http(s)://host:port URL without credentials "
                "(credentials go in outputs.elasticsearch.api_key_file, password_file or *_env)"
            )
    if namespace is not None and not re.fullmatch(r'[^A-Z\\/*?"<>| ,#:-]{1,100}', namespace):
        raise ConfigError(f"--namespace: {namespace!r} must be lowercase, at most 100 characters, without - or \\/*?\"<>| ,#:")
    return EsSettings.from_config(config.raw["outputs"]["elasticsearch"], tuple(urls), namespace)


def attach_es(outputs: Outputs, config: Config, urls: tuple[str, ...]) -> ElasticsearchSink | None:
    """Add the Elasticsearch sink to the kinds configured (default all three) when hosts are given; else None."""
    if not urls and not config.raw["outputs"]["elasticsearch"].get("hosts"):
        return None  # not configured: the client (a fifth of a second to import) is not loaded at all
    s = es_settings(config, urls)
    if not s.hosts:
        return None
    from sensor.outputs.elasticsearch import ElasticsearchSink

    _ensure_logging()
    sink = ElasticsearchSink(s)
    for kind in s.kinds:
        getattr(outputs, kind).append(sink)
    return sink


def es_summary(sink: ElasticsearchSink) -> str:
    st = sink.stats()
    sp = st["spool"]
    dropped = sum(sp["dropped"].values())
    return (
        f"elasticsearch: delivered {st['delivered']:,}, already present {st['duplicates']:,}, "
        f"dead-lettered {st['dead_lettered']:,}, dropped {dropped:,}, left in spool {sp['pending']:,}"
    )


def _connect(config_path: str | None, urls: tuple[str, ...], namespace: str | None) -> tuple[Any, dict[str, Any], EsSettings]:
    from elasticsearch import ApiError, TransportError

    from sensor.outputs.elasticsearch import EsError, connect, explain

    try:
        s = es_settings(load_config(config_path), urls, namespace)
        if not s.hosts:
            raise ConfigError("no Elasticsearch hosts: give --es URL or outputs.elasticsearch.hosts in --config")
        client, info = connect(s)
    except ConfigError as e:
        fail(str(e))
    except (ApiError, TransportError, EsError) as e:
        fail(str(e) if isinstance(e, EsError) else explain(e, s))
    return client, info, s


_es_opt = click.option("--es", "urls", metavar="URL", multiple=True, help="Cluster URL (repeatable); default: outputs.elasticsearch.hosts.")
_config_opt = click.option("--config", "config_path", metavar="PATH", help="Sensor configuration (YAML): credentials, CA, namespace.")


@click.group("es")
def es_group() -> None:
    """Elasticsearch: install the index templates and ILM policies, check a cluster."""


@es_group.command("setup")
@_es_opt
@_config_opt
@click.option("--namespace", metavar="NS", help="Data stream namespace to report (templates cover every namespace).")
@click.option("--force", is_flag=True, help="Overwrite templates installed by a newer ics-sensor.")
@click.option("--kibana", "kibana_url", metavar="URL", help="Also import the dashboards (dashboards/*.ndjson) into Kibana at URL.")
def setup(urls: tuple[str, ...], config_path: str | None, namespace: str | None, force: bool, kibana_url: str | None = None) -> None:
    """Install (PUT, idempotent) ILM policies, component and index templates for the sensor's data streams."""
    from elasticsearch import ApiError, TransportError

    from sensor.outputs import es_templates
    from sensor.outputs.elasticsearch import explain

    client, info, s = _connect(config_path, urls, namespace)
    try:
        done = es_templates.install(client, force=force)
    except (ApiError, TransportError) as e:
        fail(explain(e, s))
    finally:
        client.close()
    click.echo(f"elasticsearch {info['version']['number']} ({info.get('cluster_name', '?')})")
    for line in done:
        click.echo(f"  {line}")
    streams = ", ".join(es_templates.stream_name(k, s.namespace) for k in es_templates.DATASETS)
    click.echo(f"data streams (created on first write): {streams}")
    if kibana_url:  # issue 7: dashboards, data views and searches, overwritten by id
        from sensor.outputs.elasticsearch import _auth
        from sensor.outputs.kibana import KibanaError, import_dashboards

        if not _URL.match(kibana_url):
            fail(f"--kibana: {'<URL with credentials>' if '@' in kibana_url else repr(kibana_url)} is not an http(s)://host:port URL without credentials")
        try:
            for line in import_dashboards(kibana_url, _auth(s), s.ca_file, s.verify_certs):
                click.echo(f"  {line}")
        except (KibanaError, ConfigError) as e:
            fail(str(e))
    if any(line.startswith("skipped") for line in done):
        sys.exit(1)


@es_group.command("check")
@_es_opt
@_config_opt
def check(urls: tuple[str, ...], config_path: str | None) -> None:
    """Cluster reachable, its version, the sensor's templates and policies present; exit 1 when something is missing."""
    from elasticsearch import ApiError, TransportError

    from sensor.outputs import es_templates
    from sensor.outputs.elasticsearch import explain

    client, info, s = _connect(config_path, urls, None)
    try:
        result = es_templates.check(client)
    except (ApiError, TransportError) as e:
        fail(explain(e, s))
    finally:
        client.close()
    click.echo(f"elasticsearch {info['version']['number']} ({info.get('cluster_name', '?')}): reachable")
    for name, version in result["present"].items():
        click.echo(f"  ok       {name}" + (f" (ics-sensor {version})" if version else ""))
    for name in result["missing"]:
        click.echo(f"  missing  {name}")
    if result["missing"]:
        click.echo("run: ics-sensor es setup", err=True)
        sys.exit(1)
