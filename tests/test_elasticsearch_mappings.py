"""Every field of every document kind is mapped by the installed templates, and ECS fields are ECS with ECS types.

Documents: protocol events and decode errors from real captures, alerts (rule engine and a fake detector), the
stats document as the Elasticsearch sink sends it. Templates: as installed by ``es setup`` into the stand-in server
and read back from it. ECS: ../shared/ecs/ecs_flat.yml.
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from sensor.config import load_config
from sensor.outputs import es_templates
from sensor.outputs.elasticsearch import ElasticsearchSink, connect
from sensor.protocols import registry
from tests.conftest import PROJECT_PCAPS, SHARED, SHARED_PCAPS
from tests.es_helpers import FakeDetector, fast_settings, replay_into
from tests.es_server import EsServer, leaves, lookup, value_ok

ECS_FLAT = SHARED / "ecs" / "ecs_flat.yml"
CAPTURES = [
    *sorted(PROJECT_PCAPS.glob("*.pcap")),
    SHARED_PCAPS / "zeek" / "modbusSmall.pcap",
    SHARED_PCAPS / "zeek" / "4SICS-GeekLounge-151022-min.pcap",  # has a Modbus decode error
    SHARED_PCAPS / "zeek" / "mqtt.pcap",
    SHARED_PCAPS / "icsnpp-s7comm" / "snap7.pcap",
]
# JSON value kinds an ECS type accepts; date and date_nanos are the same values (the template keeps nanoseconds).
_ECS_COMPATIBLE = {"date": {"date", "date_nanos"}}


@pytest.fixture(scope="module")
def ecs() -> dict[str, Any]:
    if not ECS_FLAT.exists():
        pytest.skip(f"{ECS_FLAT} missing")
    return yaml.load(ECS_FLAT.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


@pytest.fixture(scope="module")
def delivered(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], dict[str, Any], ElasticsearchSink]:
    """(documents as stored by the server, composed mappings per data stream, the sink) after a full replay."""
    from sensor.cli_rules import rule_detectors

    missing = [c for c in CAPTURES if not c.exists()]
    if missing:
        pytest.skip(f"captures missing: {missing}")
    with EsServer("9.1.0") as es:
        settings = fast_settings(es.url, tmp_path_factory.mktemp("spool"))
        client, _ = connect(settings)
        es_templates.install(client)
        sink = ElasticsearchSink(settings)
        detectors = [FakeDetector(), *rule_detectors(load_config(None))]
        replay_into(CAPTURES, [sink], detectors)
        docs = es.sources()
        mappings = {s: es.state.mappings_for(s) for s in es.state.streams}
    return docs, mappings, sink


def test_shipped_ecs_table_is_current(ecs: dict[str, Any]) -> None:
    spec = importlib.util.spec_from_file_location("gen", Path(__file__).resolve().parents[1] / "scripts" / "gen_es_ecs_fields.py")
    assert spec and spec.loader
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    shipped = (Path(__file__).resolve().parents[1] / "sensor" / "outputs" / "es_ecs_fields.py").read_text()
    assert gen.render(ECS_FLAT) == shipped, "run: python scripts/gen_es_ecs_fields.py"
    from sensor.outputs.es_ecs_fields import FIELDS

    for name, m in FIELDS.items():
        assert name in ecs and ecs[name]["type"] == m["type"], name


def test_every_document_kind_was_delivered(delivered: tuple[list[dict[str, Any]], dict[str, Any], ElasticsearchSink]) -> None:
    docs, _, sink = delivered
    kinds = Counter(d["event"]["dataset"] for d in docs)
    assert kinds["ics_sensor.event"] > 100 and kinds["ics_sensor.alert"] > 0 and kinds["ics_sensor.stats"] == 1
    assert any(d["event"].get("action") == "decode_error" for d in docs)
    decoders = {registry.create(n).registry.protocol for n in registry.names()}
    assert {d["network"]["protocol"] for d in docs if "network" in d} >= {"modbus"} | (decoders & {"mqtt", "s7comm"})
    assert sink.stats()["dead_lettered"] == 0


def test_every_field_is_mapped_with_an_agreeing_type(
    delivered: tuple[list[dict[str, Any]], dict[str, Any], ElasticsearchSink], ecs: dict[str, Any]
) -> None:
    docs, mappings, _ = delivered
    registries = {n: registry.create(n).registry for n in registry.names()}
    reg_fields = {p: f for r in registries.values() for p, f in r.paths().items()}
    problems: set[str] = set()
    checked = 0
    for doc in docs:
        m = mappings[f"{doc['data_stream']['type']}-{doc['data_stream']['dataset']}-{doc['data_stream']['namespace']}"]
        for path, value in leaves(doc):
            if value is None or value == {}:
                continue  # Elasticsearch indexes nothing for null or an empty object
            checked += 1
            mapping, how = lookup(m, path, value)
            owner = next((p for p in reg_fields if path.startswith(p + ".")), None)
            if owner and reg_fields[owner].type in ("object", "flattened"):
                continue  # inside an object/flattened registry field: its keys are data
            if mapping is None:
                problems.add(f"{path}: not mapped (value {value!r})")
                continue
            if value == []:
                continue
            if not value_ok(mapping.get("type", "object"), value):
                problems.add(f"{path}: {value!r} does not fit mapping {mapping}")
            if path.startswith("ics."):
                proto = path.split(".")[1]
                if proto in {r.protocol for r in registries.values()} and path not in reg_fields:
                    problems.add(f"{path}: not in the {proto} field registry")
                if path in reg_fields and how != "explicit":
                    problems.add(f"{path}: registry field mapped by {how}")
                continue
            ecs_name = "labels" if path.startswith("labels.") else path
            if ecs_name not in ecs:
                problems.add(f"{path}: neither ECS nor under ics.* (fix sensor/outputs/ecs.py)")
                continue
            ecs_type = ecs[ecs_name]["type"]
            if ecs_name != "labels" and mapping.get("type") not in _ECS_COMPATIBLE.get(ecs_type, {ecs_type}):
                problems.add(f"{path}: mapped as {mapping.get('type')}, ECS says {ecs_type}")
            if ecs_name == "labels":
                ecs_type = "keyword"
            if not value_ok(ecs_type, value):
                problems.add(f"{path}: {value!r} is not an ECS {ecs_type}")
    assert checked > 1000
    assert not problems, "\n".join(sorted(problems))


def test_registry_fields_have_their_registry_type() -> None:
    fields = es_templates.ics_fields()
    for r in (registry.create(n).registry for n in registry.names()):
        for path, f in r.paths().items():
            assert fields[path]["type"] == ("match_only_text" if f.type == "text" else f.type), path


def test_index_templates_compose_existing_components() -> None:
    comps = es_templates.component_templates()
    for name, t in es_templates.index_templates().items():
        needed = [c for c in t["composed_of"] if c not in t["ignore_missing_component_templates"]]
        assert all(c in comps for c in needed), name
        assert t["priority"] > 100 and t["data_stream"] == {}
        policy = comps[f"{name}@settings"]["template"]["settings"]["index"]["lifecycle"]["name"]
        assert policy in es_templates.ilm_policies()
