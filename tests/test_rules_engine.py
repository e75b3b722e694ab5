"""The rule engine on hand-made messages: operators, lists, thresholds, aggregation, index, suppression."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from detectors.rules import RuleEngine, load_rules
from sensor.messages import Alert, Anomaly, FlowInfo, Message, PacketRef

S = 1_000_000_000
FLOWS: dict[tuple[str, str], FlowInfo] = {}


def flow(client: str = "10.0.0.5", server: str = "10.0.0.1") -> FlowInfo:
    key = (client, server)
    if key not in FLOWS:
        FLOWS[key] = FlowInfo(client, 40000 + len(FLOWS), server, 502, "tcp", "1:x", len(FLOWS) + 1)
    return FLOWS[key]


def msg(ts: float = 0.0, client: str = "10.0.0.5", from_client: bool = True, frame: int = 1, **fields: Any) -> Message:
    f = {"is_request": from_client, "unit_id": 1, "function_code": 3, **fields}
    return Message(int(ts * S), "modbus", flow(client), from_client, f, PacketRef("x.pcap", frame, -1))


def engine(tmp_path: Path, match: str, extra: str = "", lists: dict[str, list[str]] | None = None,
           aggregate: float = 0.0) -> RuleEngine:  # fmt: skip
    body = textwrap.indent(textwrap.dedent(match).strip("\n"), "    ")
    text = (
        "- id: TEST-RULE-0001\n  title: t\n  description: d\n  protocol: modbus\n  severity: low\n"
        f'  attack: {{version: "18", techniques: [T0855]}}\n  match:\n{body}\n{extra}'
    )
    (tmp_path / "r.yml").write_text(text)
    return RuleEngine(load_rules([tmp_path / "r.yml"]), lists or {}, aggregate)


def fires(e: RuleEngine, m: Message | Anomaly) -> bool:
    return bool(list(e.on_message(m)))


@pytest.mark.parametrize(
    ("match", "yes", "no"),
    [
        ("ics.modbus.function_code: 6", {"function_code": 6}, {"function_code": 3}),
        ("ics.modbus.function_code: {ne: 6}", {"function_code": 3}, {"function_code": 6}),
        ("ics.modbus.function_code: {in: [5, 6]}", {"function_code": 5}, {"function_code": 16}),
        ("ics.modbus.function_code: {not_in: [1, 2, 3, 4]}", {"function_code": 5}, {"function_code": 4}),
        ("ics.modbus.quantity: {gt: 100}", {"quantity": 101}, {"quantity": 100}),
        ("ics.modbus.quantity: {gte: 100}", {"quantity": 100}, {"quantity": 99}),
        ("ics.modbus.quantity: {lt: 2}", {"quantity": 1}, {"quantity": 2}),
        ("ics.modbus.quantity: {lte: 2}", {"quantity": 2}, {"quantity": 3}),
        ("ics.modbus.reference_number: {range: [100, 199]}", {"reference_number": 199}, {"reference_number": 200}),
        ("ics.modbus.quantity: {gt: 1, lt: 5}", {"quantity": 3}, {"quantity": 5}),
        ('ics.modbus.function_name: {re: "^Write "}', {"function_name": "Write Single Coil"}, {"function_name": "Read Coils"}),
        ('ics.modbus.function_name: {glob: "*Coil*"}', {"function_name": "Read Coils"}, {"function_name": "Read Input Registers"}),
        ("ics.modbus.exception_code: {exists: true}", {"exception_code": 2}, {}),
        ("ics.modbus.exception_code: {exists: false}", {}, {"exception_code": 2}),
        ("ics.modbus.values: 7", {"values": [1, 7, 9]}, {"values": [1, 9]}),  # list field: any element
        ("ics.modbus.values: {gt: 1000}", {"values": [5, 1001]}, {"values": [5, 10]}),
        ("ics.modbus.objects.vendor_name: ACME", {"objects": {"vendor_name": "ACME"}}, {"objects": {"product_code": "ACME"}}),
        ("any: [{ics.modbus.function_code: 5}, {ics.modbus.unit_id: 0}]", {"unit_id": 0}, {"unit_id": 2}),
        ("all: [{ics.modbus.function_code: 5}, {ics.modbus.unit_id: 0}]", {"function_code": 5, "unit_id": 0}, {"function_code": 5}),
        ("not: {ics.modbus.function_code: {in: [1, 2, 3, 4]}}", {"function_code": 43}, {"function_code": 1}),
        ("ics.modbus.quantity: {gt: 1}", {"quantity": 5}, {}),  # a missing field fails a comparison
    ],
)
def test_operators(tmp_path: Path, match: str, yes: dict[str, Any], no: dict[str, Any]) -> None:
    e = engine(tmp_path, match)
    assert fires(e, msg(**yes))
    assert not fires(e, msg(**no))


def test_ecs_fields_follow_direction(tmp_path: Path) -> None:
    e = engine(tmp_path, "source.ip: 10.0.0.1\ndestination.ip: 10.0.0.5\ndestination.port: {gt: 1024}")
    assert fires(e, msg(from_client=False))  # the response goes server -> client
    assert not fires(e, msg(from_client=True))
    e = engine(tmp_path, "client.ip: 10.0.0.5\nserver.port: 502\nnetwork.protocol: modbus")
    assert fires(e, msg(from_client=False)) and fires(e, msg(from_client=True))


def test_cidrs_and_named_lists(tmp_path: Path) -> None:
    rule = "source.ip: {not_in: [{list: writers}, 192.168.7.0/24]}\nics.modbus.function_code: 6"
    e = engine(tmp_path, rule, "  requires_lists: [writers]\n", lists={"writers": ["10.0.0.0/30", "10.0.9.9"]})
    assert not fires(e, msg(client="10.0.0.3", function_code=6))  # inside 10.0.0.0/30
    assert not fires(e, msg(client="10.0.9.9", function_code=6))
    assert not fires(e, msg(client="192.168.7.200", function_code=6))
    assert fires(e, msg(client="10.0.0.4", function_code=6))  # just outside the /30
    assert not fires(e, msg(client="10.0.0.4", function_code=3))


def test_rule_inactive_without_its_list(tmp_path: Path) -> None:
    rule = "source.ip: {not_in: {list: writers}}\nics.modbus.function_code: 6"
    e = engine(tmp_path, rule, "  requires_lists: [writers]\n", lists={})
    assert not e.rules and "writers undefined" in e.statuses[0].reason
    assert not fires(e, msg(client="10.6.6.6", function_code=6))


def test_exception_suppresses(tmp_path: Path) -> None:
    extra = "  exceptions:\n    - {name: laptop, match: {source.ip: 10.0.0.50}}\n"
    e = engine(tmp_path, "ics.modbus.function_code: 6", extra)
    assert fires(e, msg(client="10.0.0.51", function_code=6))
    assert not fires(e, msg(client="10.0.0.50", function_code=6))


def test_index_skips_rules_that_cannot_match(tmp_path: Path) -> None:
    e = engine(tmp_path, "ics.modbus.function_code: {in: [5, 6]}\nics.modbus.unit_id: 1")
    field, by_value, default = e._msg["modbus"]
    assert field == "function_code" and set(by_value) == {5, 6} and default == ()
    assert [c.rule.id for c in by_value[5]] == ["TEST-RULE-0001"]
    assert fires(e, msg(function_code=5)) and not fires(e, msg(function_code=3))
    assert e.could_match(msg(function_code=6)) and not e.could_match(msg(function_code=6, unit_id=2))
    assert not e.could_match(msg(function_code=3))


def test_anomaly_rule(tmp_path: Path) -> None:
    e = engine(tmp_path, "error.code: modbus.invalid_length\nsource.ip: 10.0.0.5")
    a = Anomaly(5 * S, "modbus", flow(), True, "modbus.invalid_length", "len 300", PacketRef("x.pcap", 9, -1))
    b = Anomaly(5 * S, "modbus", flow(), True, "modbus.truncated_pdu", "short", PacketRef("x.pcap", 9, -1))
    assert fires(e, a) and not fires(e, b)
    assert not fires(e, msg())  # an anomaly rule never looks at messages


def test_count_threshold_sliding_window(tmp_path: Path) -> None:
    e2 = engine(tmp_path, "ics.modbus.is_request: true", "  threshold: {count: 3, seconds: 10, by: [source.ip]}\n")
    alerts = [a for t in (0, 1, 2) for a in e2.on_message(msg(ts=t))]
    assert len(alerts) == 1 and alerts[0].count == 3 and alerts[0].first_ts == 0 and alerts[0].last_ts == 2 * S
    # other source: its own window
    assert [a for t in (0, 1) for a in e2.on_message(msg(ts=t, client="10.0.0.6"))] == []


def test_count_threshold_expiry(tmp_path: Path) -> None:
    e = engine(tmp_path, "ics.modbus.is_request: true", "  threshold: {count: 3, seconds: 10, by: [source.ip]}\n")
    assert [a for t in (0, 4, 11) for a in e.on_message(msg(ts=t))] == []  # 0 and 11 are 11 s apart
    assert len(list(e.on_message(msg(ts=12)))) == 1  # 4, 11, 12


def test_distinct_threshold(tmp_path: Path) -> None:
    extra = "  threshold: {distinct: ics.modbus.function_code, count: 3, seconds: 60, by: [source.ip]}\n"
    e = engine(tmp_path, "ics.modbus.is_request: true", extra)
    seq = [(0, 3), (1, 3), (2, 3), (3, 4), (4, 4)]  # repeats of two codes never reach 3 distinct
    assert [a for t, fc in seq for a in e.on_message(msg(ts=t, function_code=fc))] == []
    (a,) = list(e.on_message(msg(ts=5, function_code=6)))
    assert a.extra["distinct_values"] == [3, 4, 6] and a.extra["threshold"]["by"] == {"source.ip": "10.0.0.5"}
    assert a.first_ts == 2 * S  # the oldest sighting of a value still in the window (3 seen last at t=2)


def test_aggregation_per_rule_and_flow(tmp_path: Path) -> None:
    e = engine(tmp_path, "ics.modbus.function_code: 6", aggregate=60)
    for i, t in enumerate((0, 1, 2, 30)):
        assert list(e.on_message(msg(ts=t, function_code=6, frame=i + 1))) == []
    assert list(e.on_message(msg(ts=31, client="10.0.0.7", function_code=6, frame=9))) == []
    assert list(e.on_time(59 * S)) == []
    (a,) = list(e.on_time(60 * S))  # released when the first one's window is over
    assert (a.count, a.first_ts, a.last_ts, a.message.packet.frame) == (4, 0, 30 * S, 1)
    assert a.extra["last_frame"] == 4
    (b,) = list(e.close())
    assert b.count == 1 and b.message.flow.client_ip == "10.0.0.7"


def test_release_order_is_deterministic(tmp_path: Path) -> None:
    def run() -> list[tuple[str, int]]:
        e = engine(tmp_path, "ics.modbus.function_code: 6", aggregate=10)
        for t, c in ((0, "10.0.0.9"), (1, "10.0.0.8"), (2, "10.0.0.9"), (3, "10.0.0.7")):
            e.on_message(msg(ts=t, client=c, function_code=6))
        out: list[Alert] = [*e.on_time(11 * S), *e.close()]
        return [(a.message.flow.client_ip, a.count) for a in out]

    assert run() == [("10.0.0.9", 2), ("10.0.0.8", 1), ("10.0.0.7", 1)] == run()


def test_threshold_keeps_counting_into_held_alert(tmp_path: Path) -> None:
    e = engine(tmp_path, "ics.modbus.is_request: true", "  threshold: {count: 3, seconds: 10, by: [source.ip]}\n", aggregate=60)
    for t in range(10):
        assert list(e.on_message(msg(ts=t * 0.5))) == []
    (a,) = list(e.close())
    assert a.count == 10 and a.first_ts == 0 and a.last_ts == int(4.5 * S)
    assert "3 matching messages within 10 s" in (a.explanation or "")


def test_threshold_keys_evicted_oldest_first_at_the_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Beyond MAX_KEYS the oldest key goes, one per new key, and is counted: a source evicted mid-count starts
    over, while the kept sources keep their counts (the table is an ordered dict for an O(1) pop of the oldest)."""
    import detectors.rules.engine as engine_mod

    monkeypatch.setattr(engine_mod, "MAX_KEYS", 3)
    e = engine(tmp_path, "ics.modbus.is_request: true", "  threshold: {count: 2, seconds: 60, by: [source.ip]}\n")
    hosts = [f"10.0.1.{i}" for i in range(1, 6)]
    for i, h in enumerate(hosts):  # one request each: five keys through a table of three
        assert not fires(e, msg(i, client=h))
    (c,) = e.rules
    assert list(c.windows) == hosts[2:] and e.evicted_keys == 2
    assert not fires(e, msg(10, client=hosts[0]))  # evicted: its count restarted, and the next oldest goes
    assert list(c.windows) == [*hosts[3:], hosts[0]] and e.evicted_keys == 3
    assert fires(e, msg(11, client=hosts[4]))  # kept: its second request reaches the threshold
