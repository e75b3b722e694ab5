"""HTML report: aggregation of real replays, truncation, escaping of wire data, no external reference, CLI paths."""

from __future__ import annotations

import html.parser
import json
import re
from pathlib import Path
from typing import ClassVar

import orjson
import pytest
from click.testing import CliRunner

from sensor.cli import main
from sensor.config import load_config
from sensor.messages import Alert, FlowInfo, Message, PacketRef
from sensor.messages.modbus import REGISTRY as MODBUS
from sensor.messages.mqtt import REGISTRY as MQTT
from sensor.outputs import report as report_mod
from sensor.outputs.ecs import EcsMapper, Observer
from sensor.outputs.memory import MemorySink
from sensor.outputs.ndjson import NdjsonSink
from sensor.outputs.report import ReportSink
from sensor.pipeline import Outputs, Pipeline
from sensor.source import SourceReport, read_captures
from tests.report_helpers import RULES, FlagWrites, replay_report

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "pcaps" / "modbus_demo.pcap"
MQTT_DEMO = ROOT / "pcaps" / "mqtt_demo.pcap"
S7_DEMO = ROOT / "pcaps" / "s7comm_demo.pcap"
MIXED_RULES = ROOT / "rules" / "tests" / "modbus" / "mixed.pcap"

XSS = {
    "vendor": "<script>window.__xss=1</script>",
    "product": '"><img src=x onerror="window.__xss=2">',
    "topic": "plant/</script><script>window.__xss=3</script>/#",
    "client": "<svg onload=window.__xss=4>",
    "rule": "</script><b>rule</b>\u2028",
}


# -- external references ----------------------------------------------------------------------------------------
class _Refs(html.parser.HTMLParser):
    URL_ATTRS: ClassVar[set[str]] = {"src", "href", "action", "formaction", "data", "poster", "srcset", "xlink:href", "background", "manifest", "ping"}

    def __init__(self) -> None:
        super().__init__()
        self.bad: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag in ("link", "iframe", "object", "embed", "base", "frame", "audio", "video", "source", "track"):
            self.bad.append(f"<{tag}>")
        for k, v in attrs:
            if k in self.URL_ATTRS and v is not None and not v.startswith(("#", "data:")):
                self.bad.append(f"<{tag} {k}={v!r}>")
            if k == "style" and v and "url(" in v:
                self.bad.append(f"<{tag} style={v!r}>")


def external_references(page: str) -> list[str]:
    """Everything in the page that could make the browser ask the network for something."""
    p = _Refs()
    p.feed(page)
    bad = list(p.bad)
    bad += re.findall(r"@import[^;]*", page)
    bad += [m for m in re.findall(r"url\(\s*['\"]?([^)'\"]*)", page) if not m.startswith(("#", "data:"))]
    for script in re.findall(r"<script(?![^>]*application/json)[^>]*>(.*?)</script>", page, re.S):
        bad += re.findall(r"\b(fetch|XMLHttpRequest|WebSocket|EventSource|sendBeacon|importScripts|import\s*\(|new\s+Image|\.src\s*=)", script)
    return bad


# -- fixtures ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def big(shared_pcaps: Path) -> tuple[ReportSink, dict, str]:
    sink, stats = replay_report([DEMO, shared_pcaps / "zeek" / "modbusBig.pcap", MQTT_DEMO, S7_DEMO])
    return sink, stats, sink.render(stats)


def _flow(client: str = "10.0.0.5", server: str = "10.0.0.9", port: int = 1883) -> FlowInfo:
    return FlowInfo(client, 40000, server, port, "tcp", "1:x", 1)


def malicious_docs() -> list[dict]:
    """Documents from the real ECS mapper whose wire strings try to break out of the page."""
    mapper = EcsMapper(Observer(name="t"), {"modbus": MODBUS, "mqtt": MQTT})
    pkt = PacketRef("evil.pcap", 1, 0)
    ts = 1_700_000_000_000_000_000
    devid = Message(ts, "modbus", _flow(port=502), False, {
        "unit_id": 1, "function_code": 43, "function_name": "Encapsulated Interface Transport", "is_request": False,
        "access": "diagnostic", "mei_type": 14, "objects": {"vendor_name": XSS["vendor"], "product_code": XSS["product"]},
    }, pkt)  # fmt: skip
    publish = Message(ts + 1000, "mqtt", _flow(), True, {
        "msgtype": 3, "msgtype_name": "Publish Message", "topic": XSS["topic"], "qos": 1, "clientid": XSS["client"],
    }, pkt)  # fmt: skip
    subscribe = Message(ts + 2000, "mqtt", _flow(), True, {
        "msgtype": 8, "msgtype_name": "Subscribe Request", "topic_filters": [{"topic": XSS["topic"]}], "clientid": XSS["client"],
    }, pkt)  # fmt: skip
    alert = Alert(ts=ts + 1000, rule_id="X-1", rule_name=XSS["rule"], description=XSS["vendor"], severity="critical",
                  techniques=("T0801",), attack_version="18", detector="rules", message=publish,
                  explanation=f"topic {XSS['topic']}")  # fmt: skip
    return [mapper.message(devid), mapper.message(publish), mapper.message(subscribe), mapper.alert(alert)]


# -- aggregation of a real replay --------------------------------------------------------------------------------
def test_counts_match_the_pipeline(big: tuple[ReportSink, dict, str]) -> None:
    sink, stats, page = big
    d = sink.data
    assert d.alerts == stats["alerts"] > 1000
    assert d.events == sum(stats["messages"].values()) + stats["decode_errors"]
    assert len(d.kept) == stats["alerts"]  # under the cap: every alert is in the table
    sev_of = {rid: sev for rid, _name, sev, _t in RULES.values()}
    expected: dict[str, int] = {}
    for rid, n in stats["alerts_by_rule"].items():
        expected[sev_of[rid]] = expected.get(sev_of[rid], 0) + n
    assert dict(d.alerts_by_sev) == expected
    assert page.count('<tr class="arow"') == stats["alerts"]
    assert f"<div class=\"v\">{stats['packets']:,}</div>" in page
    assert "alert-truncated" not in page


def test_inventory_roles_and_device_facts(big: tuple[ReportSink, dict, str]) -> None:
    sink, stats, page = big
    r = report_mod.Renderer(sink, stats)
    assert "Modbus server" in r.hosts["10.235.149.243"].roles
    assert "Modbus client" in r.hosts["10.235.149.240"].roles
    assert r.hosts["10.235.149.240"].writes > 1000
    assert {"MQTT broker", "Modbus server", "S7 PLC"} <= r.hosts["127.0.0.1"].roles
    assert r.hosts["127.0.0.40"].controls > 0  # the S7 engineering station of s7comm_demo.pcap (PLC stop, download)
    assert '<span class="fk">szl.order_number</span>' in page  # S7 SZL 0x0011 module identification
    assert 'id="chart-s7-functions"' in page and 'id="s7-objects"' in page
    assert '<span class="fk">vendor_name</span> Demo Automation' in page  # FC 43/14 objects of modbus_demo.pcap
    assert 'id="modbus-writes"' in page and 'id="mqtt-topics"' in page and 'id="mqtt-clients"' in page
    assert "historian-01" in page  # MQTT client id from mqtt_demo.pcap
    assert len(sink.data.mqtt_subs) >= 1


def test_truncation_keeps_the_most_severe(shared_pcaps: Path) -> None:
    sink, stats = replay_report([DEMO, shared_pcaps / "zeek" / "modbusBig.pcap"], max_alerts=10)
    kept = [row for _, _, row in sink.data.kept]
    assert len(kept) == 10 and stats["alerts"] > 1000
    crit = stats["alerts_by_rule"]["TEST-MODBUS-DIAG"]
    assert sum(r.sev == "critical" for r in kept) == crit
    assert all(r.sev in ("critical", "high") for r in kept)
    page = sink.render(stats)
    assert f"The table holds 10 of {stats['alerts']:,} alerts" in page
    assert page.count('<tr class="arow"') == 10
    assert f'<div class="v">{stats["alerts"]:,}</div>' in page  # totals still cover every alert


def test_no_external_reference(big: tuple[ReportSink, dict, str]) -> None:
    _sink, _stats, page = big
    assert external_references(page) == []
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    # the checker itself finds what it must
    assert external_references('<img src="https://x/y.png"><link href="//cdn/x.css"><style>@import "a.css";a{b:url(http://x)}</style>'
                               "<script>fetch('/x')</script>")  # fmt: skip


def test_wire_strings_are_escaped() -> None:
    sink = ReportSink()
    sink.write(malicious_docs())
    page = sink.render()
    for raw in XSS.values():
        assert raw not in page
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in page
    assert "<img" not in page and "<svg onload" not in page and "<b>rule" not in page
    assert page.count("<script") == 2  # the alert data block and the report's own script
    assert external_references(page) == []
    blob = re.search(r'<script type="application/json" id="alert-data">(.*?)</script>', page, re.S)
    assert blob and "<" not in blob.group(1) and "\u2028" not in blob.group(1)
    data = json.loads(blob.group(1))
    fields = dict(data["rows"][0] + data["rules"]["X-1"])
    assert fields["rule.name"] == XSS["rule"] and XSS["topic"] in fields["message"]  # intact after unescaping


def test_time_buckets_coarsen_and_tables_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report_mod, "MAX_TS_KEYS", 100)
    monkeypatch.setattr(report_mod, "MAX_KEYS", 50)
    mapper = EcsMapper(Observer(name="t"), {"mqtt": MQTT})
    sink = ReportSink()
    docs = [mapper.message(Message(1_700_000_000_000_000_000 + i * 7 * 10**9, "mqtt", _flow(), True,
                                   {"msgtype": 3, "msgtype_name": "Publish Message", "topic": f"t/{i}"}, PacketRef(None, i, -1)))
            for i in range(500)]  # fmt: skip
    sink.write(docs)
    d = sink.data
    assert d.tsl == 16 and len(d.traffic) <= 100  # per second became per minute
    assert sum(d.traffic.values()) == 500
    assert len(d.mqtt_topics) == 50 and d.dropped_keys == 450
    page = sink.render()
    assert "aggregate tables reached their cap" in page and 'id="chart-traffic"' in page


# -- command line ------------------------------------------------------------------------------------------------
def test_report_command_from_ndjson(tmp_path: Path) -> None:
    files = {k: str(tmp_path / f"{k}.ndjson") for k in ("events", "alerts", "stats")}
    outs = Outputs(events=[NdjsonSink(files["events"])], alerts=[NdjsonSink(files["alerts"])], stats=[NdjsonSink(files["stats"])])
    mem = MemorySink()
    outs.alerts.append(mem)
    pipe = Pipeline(load_config(None), outs, detectors=[FlagWrites()])
    pipe.open()
    pipe.run(read_captures([str(DEMO)], SourceReport()))
    stats = pipe.close()
    with open(files["alerts"], "ab") as f:
        f.write(b"not json\n")
    out = tmp_path / "report.html"
    res = CliRunner().invoke(main, ["report", files["alerts"], files["events"], files["stats"], "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "1 lines are not JSON documents" in res.output
    page = out.read_text()
    assert page.count('<tr class="arow"') == stats["alerts"] == len(mem.docs) > 0
    assert f"<div class=\"v\">{stats['packets']:,}</div>" in page  # from the stats document
    assert external_references(page) == []


def test_replay_report_with_the_shipped_rules(tmp_path: Path) -> None:
    """The real path: `ics-sensor replay CAPTURE --report` with the shipped rule pack."""
    out, alerts = tmp_path / "r.html", tmp_path / "a.ndjson"
    res = CliRunner().invoke(main, ["replay", str(MIXED_RULES), str(DEMO), "--report", str(out), "--alerts", str(alerts), "-q"])
    assert res.exit_code == 0, res.output
    docs = [orjson.loads(line) for line in alerts.read_bytes().splitlines()]
    assert docs, "the shipped rules raise alerts on these captures"
    page = out.read_text()
    assert page.count('<tr class="arow"') == len(docs)
    for rid in {d["rule"]["id"] for d in docs}:
        assert f'data-rule="{rid}"' in page
    assert re.search(r"Rule pack</th><td>\d+ rules, \d+ active, id@rev digest [0-9a-f]{12}<", page)
    assert external_references(page) == []
