"""Kibana saved objects (dashboards/*.ndjson): well-formed, references resolved, every field they use mapped by the
templates ``es setup`` installs, importable in one step through ``es setup --kibana`` (tests/kibana_server.py)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from sensor.cli import main
from sensor.outputs import es_templates
from sensor.outputs.elasticsearch import connect
from tests.es_helpers import fast_settings
from tests.es_server import EsServer, lookup
from tests.kibana_server import KibanaServer

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted((ROOT / "dashboards").glob("*.ndjson"))
STREAM_OF = {  # data view title -> a data stream it matches
    "logs-ics_sensor.alert-*": "logs-ics_sensor.alert-default",
    "logs-ics_sensor.event-*": "logs-ics_sensor.event-default",
    "logs-ics_sensor.asset-*": "logs-ics_sensor.asset-default",
    "metrics-ics_sensor.stats-*": "metrics-ics_sensor.stats-default",
}
KQL_FIELD = re.compile(r"([A-Za-z_@][\w.@]*)\s*:")


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    assert FILES, "no dashboards/*.ndjson"
    return [json.loads(line) for f in FILES for line in f.read_text().splitlines() if line.strip()]


def test_shipped_file_is_what_the_generator_writes() -> None:
    spec = importlib.util.spec_from_file_location("gen", ROOT / "scripts" / "gen_dashboards.py")
    assert spec and spec.loader
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert (ROOT / "dashboards" / "ics_sensor.ndjson").read_text() == gen.render(), (
        "run: python scripts/gen_dashboards.py"
    )


def test_objects_are_well_formed_and_references_resolve(objects: list[dict[str, Any]]) -> None:
    keys = [(o["type"], o["id"]) for o in objects]
    assert len(keys) == len(set(keys))
    present = set(keys)
    views = {o["attributes"]["title"] for o in objects if o["type"] == "index-pattern"}
    assert views == set(STREAM_OF)
    for o in objects:
        assert o["type"] in {"index-pattern", "lens", "search", "dashboard"}
        assert o["attributes"]["title"]
        for r in o["references"]:
            assert (r["type"], r["id"]) in present, (o["id"], r)
        if o["type"] == "dashboard":
            panels = json.loads(o["attributes"]["panelsJSON"])
            names = {r["name"] for r in o["references"]}
            for p in panels:
                assert f"{p['panelIndex']}:{p['panelRefName']}" in names
                g = p["gridData"]
                assert g["x"] + g["w"] <= 48 and g["i"] == p["panelIndex"]
        if o["type"] == "lens":
            state = o["attributes"]["state"]
            layers = state["datasourceStates"]["formBased"]["layers"]
            for lid, layer in layers.items():
                assert sorted(layer["columnOrder"]) == sorted(layer["columns"])
                assert any(r["name"] == f"indexpattern-datasource-layer-{lid}" for r in o["references"])
                for col in layer["columns"].values():
                    order = col.get("params", {}).get("orderBy", {})
                    if order.get("type") == "column":
                        assert order["columnId"] in layer["columns"]
    titles = {o["attributes"]["title"] for o in objects if o["type"] == "dashboard"}
    assert titles == {"[ICS sensor] Fleet overview", "[ICS sensor] Alert triage", "[ICS sensor] Modbus/TCP",
                      "[ICS sensor] S7comm", "[ICS sensor] MQTT", "[ICS sensor] Asset inventory"}  # fmt: skip


def used_fields(objects: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Data view title -> fields used by Lens columns, saved search columns and KQL queries."""
    views = {o["id"]: o["attributes"]["title"] for o in objects if o["type"] == "index-pattern"}
    out: dict[str, set[str]] = {t: {"@timestamp"} for t in views.values()}
    for o in objects:
        if o["type"] == "lens":
            view = views[o["references"][0]["id"]]
            state = o["attributes"]["state"]
            for layer in state["datasourceStates"]["formBased"]["layers"].values():
                for col in layer["columns"].values():
                    if col.get("sourceField") and col["sourceField"] != "___records___":
                        out[view].add(col["sourceField"])
                    if col.get("params", {}).get("sortField"):
                        out[view].add(col["params"]["sortField"])
            out[view] |= set(KQL_FIELD.findall(state["query"]["query"]))
        elif o["type"] == "search":
            view = views[o["references"][0]["id"]]
            out[view] |= set(o["attributes"]["columns"])
            source = json.loads(o["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])
            out[view] |= set(KQL_FIELD.findall(source["query"]["query"]))
    return out


def test_every_field_is_mapped_by_the_installed_templates(objects: list[dict[str, Any]], tmp_path: Path) -> None:
    with EsServer("9.1.0") as es:
        client, _ = connect(fast_settings(es.url, tmp_path))
        es_templates.install(client)
        mappings = {t: es.state.mappings_for(s) for t, s in STREAM_OF.items()}
    problems = []
    n = 0
    for view, fields in used_fields(objects).items():
        m = mappings[view]
        assert m is not None, view
        for f in sorted(fields):
            n += 1
            spec, how = lookup(m, f, "x")  # a string sample: only labels.* relies on a dynamic template
            if spec is None or spec.get("type") in (None, "object", "flattened"):
                problems.append(f"{view}: {f} is {how}")
            elif how != "explicit" and not f.startswith("labels."):
                problems.append(f"{view}: {f} only mapped by {how}")
    assert n > 60
    assert problems == []


def test_es_setup_kibana_imports_every_object(objects: list[dict[str, Any]], tmp_path: Path) -> None:
    with EsServer("9.1.0") as es, KibanaServer() as kb:
        r = CliRunner().invoke(main, ["es", "setup", "--es", es.url, "--kibana", kb.url])
        assert r.exit_code == 0, r.output
        assert f"{len(objects)} imported" in r.output
        assert set(kb.objects) == {(o["type"], o["id"]) for o in objects}
        (_method, path, headers) = kb.requests[-1]
        assert path == "/api/saved_objects/_import?overwrite=true"
        assert "kbn-xsrf" in {k.lower() for k in headers}
        r = CliRunner().invoke(main, ["es", "setup", "--es", es.url, "--kibana", kb.url])  # again: overwritten
        assert r.exit_code == 0, r.output


def test_es_setup_kibana_reports_an_unreachable_kibana(tmp_path: Path) -> None:
    from tests.es_server import free_port

    with EsServer("9.1.0") as es:
        r = CliRunner().invoke(main, ["es", "setup", "--es", es.url, "--kibana", f"http://127.0.0.1:{free_port()}"])
    assert r.exit_code == 2
    assert "unreachable" in r.output
