"""Every event document of the Modbus captures uses ECS fields with ECS types, and only registered ics fields."""

from __future__ import annotations

from pathlib import Path

import pytest

from sensor.messages import Anomaly
from sensor.messages.modbus import REGISTRY as MODBUS
from tests.conftest import PROJECT_PCAPS, SHARED
from tests.ecs_check import check_document
from tests.replay_helpers import replay, tshark_fields

CAPTURES = ["zeek/modbusBig.pcap", "suricata-verify/modbus/modbus.pcap", "icsnpp-modbus/modbus_example.pcap"]


@pytest.mark.parametrize("rel", CAPTURES)
def test_modbus_event_documents_are_ecs(shared_pcaps: Path, rel: str) -> None:
    _, _, _, docs = replay([shared_pcaps / rel], events=True)
    assert docs
    problems: set[str] = set()
    for d in docs:
        problems.update(check_document(d, SHARED / "ecs" / "ecs_flat.yml", {"modbus": MODBUS}))
    assert not problems, sorted(problems)[:20]


def test_decode_error_documents_are_ecs(shared_pcaps: Path) -> None:
    """The suricata capture holds non-Modbus bytes on 502 and malformed exceptions: decode-error documents."""
    _, _, _, docs = replay([shared_pcaps / "suricata-verify/modbus/modbus.pcap"], events=True)
    errors = [d for d in docs if d["event"]["action"] == "decode_error"]
    assert {d["error"]["code"] for d in errors} >= {"modbus.protocol_mismatch", "modbus.length_mismatch"}
    for d in errors:
        assert d["error"]["code"] in MODBUS.anomalies
        assert check_document(d, SHARED / "ecs" / "ecs_flat.yml", {"modbus": MODBUS}) == []


def test_project_capture_documents(shared_pcaps: Path) -> None:
    _, stats, _, docs = replay([PROJECT_PCAPS / "modbus_demo.pcap"], events=True)
    assert stats["messages"]["modbus"] == len([d for d in docs if d["event"]["action"] != "decode_error"])
    for d in docs:
        assert check_document(d, SHARED / "ecs" / "ecs_flat.yml", {"modbus": MODBUS}) == []
    # @timestamp is the capture time of the packet that completed the PDU, as tshark reads it.
    import datetime as dt

    rows = tshark_fields(PROJECT_PCAPS / "modbus_demo.pcap", ["frame.number", "frame.time_epoch"], "mbtcp")
    epoch = {int(r[0]): r[1] for r in rows}
    for d in docs[:20]:
        sec, frac = epoch[d["ics"]["frame"]].split(".")
        want = dt.datetime.fromtimestamp(int(sec), dt.UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:0<9}Z"
        assert d["@timestamp"] == want


@pytest.mark.parametrize("capture", ["modbus_demo.pcap", "s7comm_demo.pcap", "mqtt_demo.pcap"])
def test_fast_ndjson_lines_equal_the_documents(capture: str) -> None:
    """The NDJSON fast path (message_json) writes exactly the document that message() builds."""
    import orjson

    from sensor.outputs.ecs import EcsMapper, Observer
    from sensor.protocols import registry

    col, *_ = replay([PROJECT_PCAPS / capture])
    regs = {}
    for name in registry.names():
        dec = registry.create(name)
        regs[name] = dec.registry
        for extra in getattr(dec, "extra_registries", ()):
            regs[extra.protocol] = extra
    mapper = EcsMapper(Observer(name="s", site="plant-a", organization="acme"), regs)
    assert col.messages
    for m in col.messages:
        assert orjson.loads(mapper.message_json(m)) == orjson.loads(orjson.dumps(mapper.message(m)))
    # Decode errors (the S7 capture's SZL answers are shorter than their layout), and one without a flow:
    # byte for byte what the sink would write from the document.
    if capture == "s7comm_demo.pcap":
        assert col.anomalies
    first = col.messages[0]
    for a in [*col.anomalies, Anomaly(first.ts, "ethernet", None, True, "frame.truncated", "x", first.packet)]:
        want = orjson.dumps(mapper.anomaly(a), option=orjson.OPT_APPEND_NEWLINE)
        assert mapper.anomaly_json(a) == want
