"""Asset inventory: roles and revealed device facts of the demo captures, checked against tshark's dissection of the
same captures (pcaps/README.md says who is who); bounded state; ECS; delivery to Elasticsearch; the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from sensor.assets import AssetTracker
from sensor.cli import main
from sensor.config import load_config
from sensor.messages import FlowInfo, Message, PacketRef
from sensor.messages.asset import REGISTRY
from sensor.outputs.ecs import Observer
from sensor.outputs.memory import MemorySink
from sensor.pipeline import Outputs, Pipeline
from sensor.source import SourceReport, read_captures
from tests.conftest import PROJECT_PCAPS, SHARED
from tests.ecs_check import check_document
from tests.replay_helpers import tshark_fields

MODBUS, S7, MQTT = (PROJECT_PCAPS / f"{n}_demo.pcap" for n in ("modbus", "s7comm", "mqtt"))
ECS_FLAT = SHARED / "ecs" / "ecs_flat.yml"
# Modbus FC 43/14 object ids (Modbus Application Protocol v1.1b3, 6.21) -> the asset's field names
OBJECT_FIELDS = {0: "vendor_name", 1: "product_code", 2: "revision", 3: "vendor_url", 4: "product_name",
                 5: "model_name", 6: "user_application_name"}  # fmt: skip


def inventory(paths: list[Path], update_seconds: float | None = None) -> dict[str, dict[str, Any]]:
    """Final asset documents by host.ip after replaying ``paths`` (plus the periodic ones under key '_all')."""
    sink = MemorySink()
    config = load_config(None)
    pipe = Pipeline(config, Outputs(assets=[sink]), observer=Observer("test-sensor", "test-host", site="plant-1"))
    pipe.assets = AssetTracker.from_config({**config.raw["assets"], "update_seconds": update_seconds})
    pipe.open()
    pipe.run(read_captures([str(p) for p in paths], SourceReport()))
    pipe.close()
    final = {d["host"]["id"]: d for d in sink.docs if d["event"]["action"] == "inventory"}
    return {**final, "_all": sink.docs}  # type: ignore[dict-item]


@pytest.fixture(scope="module")
def modbus() -> dict[str, dict[str, Any]]:
    return inventory([MODBUS])


@pytest.fixture(scope="module")
def s7() -> dict[str, dict[str, Any]]:
    return inventory([S7])


@pytest.fixture(scope="module")
def mqtt() -> dict[str, dict[str, Any]]:
    return inventory([MQTT])


def roles(inv: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {ip: d["ics"]["asset"]["role"] for ip, d in inv.items() if ip != "_all"}


def test_roles_match_the_capture_readme(modbus: dict, s7: dict, mqtt: dict) -> None:
    assert roles(modbus) == {
        "127.0.0.1": "plc",
        "127.0.0.10": "hmi",
        "127.0.0.11": "hmi",
        "127.0.0.20": "engineering_workstation",
    }
    assert roles(s7) == {"127.0.0.1": "plc", "127.0.0.30": "hmi", "127.0.0.40": "engineering_workstation"}
    assert roles(mqtt) == {
        "127.0.0.1": "mqtt_broker",
        **{f"127.0.0.{n}": "mqtt_client" for n in (50, 51, 60, 70, 80, 99)},
    }
    # host.type carries the primary role; the PLC answered on both Modbus ports
    assert modbus["127.0.0.1"]["host"]["type"] == "plc"
    assert modbus["127.0.0.1"]["ics"]["asset"]["server_ports"] == [502, 5020]


def test_modbus_peers_units_and_protocols_match_tshark(modbus: dict) -> None:
    rows = tshark_fields(MODBUS, ["ip.src", "ip.dst", "mbtcp.unit_id"], "mbtcp", ["-d", "tcp.port==5020,mbtcp"])
    peers: dict[str, set[str]] = {}
    units: set[int] = set()
    for src, dst, unit in rows:
        peers.setdefault(src, set()).add(dst)
        peers.setdefault(dst, set()).add(src)
        units.add(int(unit))
    for ip, ps in peers.items():
        assert modbus[ip]["ics"]["asset"]["peers"] == len(ps), ip
        assert modbus[ip]["ics"]["asset"]["protocols"] == ["modbus"]
    assert modbus["127.0.0.1"]["ics"]["asset"]["modbus"]["unit_ids"] == sorted(units)


def test_modbus_device_identification_matches_tshark(modbus: dict) -> None:
    rows = tshark_fields(MODBUS, ["ip.src", "modbus.object_id", "modbus.object_str_value"], "modbus.object_str_value")
    want: dict[str, str] = {}
    for src, ids, values in rows:
        assert src == "127.0.0.1"
        for oid, v in zip(ids.split(","), values.split(","), strict=True):
            want[OBJECT_FIELDS[int(oid)]] = v
    assert len(want) == 7  # the README: vendor, product code, revision, URL, product and model names, application
    plc = modbus["127.0.0.1"]
    got = {k: v for k, v in plc["ics"]["asset"]["modbus"].items() if k in OBJECT_FIELDS.values()}
    assert got == want
    assert plc["device"] == {
        "manufacturer": want["vendor_name"],
        "model": {"identifier": want["product_code"], "name": want["model_name"]},
    }
    # FC 17 Report Server ID: tshark shows the data after the function code: byte count, server id, run indicator
    (data,) = [
        d for src, d in tshark_fields(MODBUS, ["ip.src", "modbus.data"], "modbus.func_code == 17") if src == "127.0.0.1"
    ]
    raw = bytes.fromhex(data.replace(":", ""))
    assert raw[0] == len(raw) - 1
    asset = plc["ics"]["asset"]["modbus"]
    assert asset["server_id"] == raw[1:-1].hex()
    assert asset["server_id_text"] == raw[1:-1].decode()
    assert asset["run_indicator"] is (raw[-1] == 0xFF)


def test_s7_module_facts_and_rack_slot_match_tshark(s7: dict) -> None:
    rows = tshark_fields(
        S7, ["ip.src", "s7comm.szl.xy11.0001.anz", "s7comm.szl.xy11.0001.bgtyp"], "s7comm.szl.xy11.0001.anz"
    )
    assert rows and {r[0] for r in rows} == {"127.0.0.1"}
    order, bgtyp = rows[-1][1], int(rows[-1][2], 16)
    plc = s7["127.0.0.1"]
    facts = plc["ics"]["asset"]["s7comm"]
    assert facts["order_number"] == order
    assert facts["module_type_id"] == bgtyp
    assert plc["device"]["model"]["identifier"] == order
    # called TSAP of the COTP connect requests: second byte = rack * 32 + slot (S7 addressing)
    tsaps = {int(t, 16) for _, t in tshark_fields(S7, ["ip.src", "cotp.dst-tsap"], "cotp.type == 0x0e")}
    assert facts["rack"] == sorted({(t & 0xFF) >> 5 for t in tsaps})
    assert facts["slot"] == sorted({t & 0x1F for t in tsaps})
    assert facts["tsaps"] == [f"{t:04x}" for t in sorted(tsaps)]
    assert s7["127.0.0.40"]["ics"]["asset"]["activity"]["control"] > 0  # PI services (PLC stop, start)
    assert "write" not in s7["127.0.0.30"]["ics"]["asset"].get("activity", {})


def test_mqtt_client_ids_and_usernames_match_tshark_and_no_password(mqtt: dict) -> None:
    rows = tshark_fields(MQTT, ["ip.src", "mqtt.clientid", "mqtt.username", "mqtt.passwd"], "mqtt.msgtype == 1")
    assert len(rows) == 6
    for src, cid, user, _pw in rows:
        m = mqtt[src]["ics"]["asset"]["mqtt"]
        assert m["client_ids"] == [cid]
        assert m["usernames"] == [user]
    text = orjson.dumps(mqtt["_all"]).decode()
    for *_, pw in rows:
        assert pw and pw not in text
    assert mqtt["127.0.0.1"]["ics"]["asset"]["mqtt"]["clients"] == len({r[1] for r in rows})
    versions = {src: v for src, v in tshark_fields(MQTT, ["ip.src", "mqtt.ver"], "mqtt.msgtype == 1")}
    names = {"3": "3.1", "4": "3.1.1", "5": "5.0"}
    for src, v in versions.items():
        assert mqtt[src]["ics"]["asset"]["mqtt"]["protocol_versions"] == [names[v]]


def test_asset_documents_pass_the_ecs_check(modbus: dict, s7: dict, mqtt: dict) -> None:
    if not ECS_FLAT.exists():
        pytest.skip(f"{ECS_FLAT} missing")
    docs = [*modbus["_all"], *s7["_all"], *mqtt["_all"]]
    for d in docs:
        assert check_document(d, ECS_FLAT, {"asset": REGISTRY}) == [], d["host"]
        assert d["event"]["dataset"] == "ics_sensor.asset" and d["event"]["kind"] == "asset"
        assert d["labels"] == {"site": "plant-1"}


def _msg(
    ts: int, client: str, server: str, fields: dict[str, Any], from_client: bool = True, port: int = 502
) -> Message:
    flow = FlowInfo(client, 40000, server, port, "tcp", "1:x", 1)
    return Message(ts, "modbus", flow, from_client, fields, PacketRef(None, 1, -1))


def test_state_is_bounded_under_many_hosts() -> None:
    t = AssetTracker(max_assets=100, update_seconds=None, max_peers=10, max_values=8)
    read = {"function_code": 3, "access": "read", "is_request": True}
    n = 5000
    for i in range(n):
        t.on_message(
            _msg(i, f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", "10.255.0.1", {**read, "unit_id": i % 256})
        )
    assert len(t.assets) == 100
    assert t.evicted == n + 1 - 100  # n clients and one server, 100 kept
    server = t.assets["10.255.0.1"]  # touched by every message: never the least recently seen
    assert len(server.peers) == 10 and server.peers_capped
    assert len(server.lists["modbus.unit_ids"]) == 8
    final = t.final()
    evicted = [s for s in final if s.action == "evicted"]
    assert len(evicted) == t.evicted  # each evicted host had unreported changes: its document was kept
    assert len([s for s in final if s.action == "inventory"]) == 100
    assert [s.action for s in t.final()] == ["inventory"] * 100  # evicted documents are handed out once


def test_documents_are_rate_limited_in_capture_time() -> None:
    t = AssetTracker(update_seconds=10)
    s = 1_000_000_000
    t.on_message(_msg(0, "10.0.0.1", "10.0.0.2", {"access": "read", "unit_id": 1}))
    first = t.due(0)
    assert {(x.ip, x.action) for x in first} == {("10.0.0.1", "discovered"), ("10.0.0.2", "discovered")}
    t.on_message(_msg(2 * s, "10.0.0.1", "10.0.0.2", {"access": "write", "unit_id": 2}))  # a change on both
    assert t.due(2 * s) == []  # within 10 s of the last document
    assert t.due(9 * s) == []
    later = t.due(10 * s)
    assert {(x.ip, x.action) for x in later} == {("10.0.0.1", "changed"), ("10.0.0.2", "changed")}
    roles = {x.ip: x.fields["role"] for x in later}
    assert roles["10.0.0.1"] == "engineering_workstation"
    t.on_message(_msg(11 * s, "10.0.0.1", "10.0.0.2", {"access": "write", "unit_id": 2}))  # counters only
    assert t.due(30 * s) == []


def test_asset_documents_reach_elasticsearch_and_fit_the_mapping(tmp_path: Path) -> None:
    from sensor.outputs import es_templates
    from sensor.outputs.elasticsearch import ElasticsearchSink, connect
    from tests.es_helpers import fast_settings
    from tests.es_server import EsServer

    with EsServer("9.1.0") as es:
        settings = fast_settings(es.url, tmp_path / "spool")
        client, _ = connect(settings)
        es_templates.install(client)
        sink = ElasticsearchSink(settings)
        pipe = Pipeline(load_config(None), Outputs(assets=[sink]), observer=Observer("test-sensor", "test-host"))
        pipe.open()
        pipe.run(read_captures([str(MODBUS), str(S7)], SourceReport()))
        pipe.close()
        docs = es.sources("logs-ics_sensor.asset-default")
        assert sink.stats()["dead_lettered"] == 0
    final = [d for d in docs if d["event"]["action"] == "inventory"]
    assert sorted(d["host"]["id"] for d in final) == [
        "127.0.0.1",
        "127.0.0.10",
        "127.0.0.11",
        "127.0.0.20",
        "127.0.0.30",
        "127.0.0.40",
    ]


def test_cli_assets_and_replay_assets(tmp_path: Path) -> None:
    out = tmp_path / "inventory.ndjson"
    r = CliRunner().invoke(main, ["assets", str(MODBUS), str(MQTT), "-o", str(out)])
    assert r.exit_code == 0, r.output
    docs = [json.loads(x) for x in out.read_text().splitlines()]
    assert [d["host"]["id"] for d in docs] == sorted(
        {d["host"]["id"] for d in docs}, key=lambda ip: [int(p) for p in ip.split(".")]
    )
    assert {d["event"]["action"] for d in docs} == {"inventory"}
    assert {d["host"]["id"]: d["host"]["type"] for d in docs}["127.0.0.1"] == "plc"  # PLC and broker: plc first
    assert "127.0.0.20" in r.output and "engineering_workstation" in r.output
    path = tmp_path / "assets.ndjson"
    r = CliRunner().invoke(main, ["replay", "-q", "--no-builtin-rules", str(S7), "--assets", str(path)])
    assert r.exit_code == 0, r.output
    replayed = [json.loads(x) for x in path.read_text().splitlines()]
    assert {d["event"]["action"] for d in replayed} <= {"discovered", "changed", "inventory"}
    assert len([d for d in replayed if d["event"]["action"] == "inventory"]) == 3


def test_parallel_replay_gives_the_same_inventory(tmp_path: Path) -> None:
    out = {}
    for workers in ("1", "2"):
        path = tmp_path / f"assets-{workers}.ndjson"
        r = CliRunner().invoke(
            main,
            ["replay", "-q", "--no-builtin-rules", "--workers", workers, str(MODBUS), str(S7), "--assets", str(path)],
        )
        assert r.exit_code == 0, r.output
        out[workers] = path.read_text().splitlines()
    assert out["1"] == out["2"]
