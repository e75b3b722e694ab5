"""The report in headless Chromium with no network: table rows, filters, sorting, expansion, charts, no request.

Chromium is driven over the DevTools protocol (tests/cdp.py) so the test changes filters and clicks like a user and
reads the live DOM. Screenshots go to test-artifacts/; ICS_SENSOR_UPDATE_DOCS=1 also refreshes docs/report.png.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from sensor.attack import technique
from sensor.cli import main
from sensor.config import load_config
from sensor.outputs.memory import MemorySink
from sensor.outputs.report import ReportSink
from sensor.pipeline import Outputs, Pipeline
from sensor.source import SourceReport, read_captures
from tests.cdp import Browser
from tests.report_helpers import RULES, FlagWrites
from tests.test_report import XSS, malicious_docs

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
DEMOS = [ROOT / "pcaps" / "modbus_demo.pcap", ROOT / "pcaps" / "mqtt_demo.pcap", ROOT / "pcaps" / "s7comm_demo.pcap"]
SEV_OF = {rid: sev for rid, _n, sev, _t in RULES.values()}
TECHS_OF = {rid: t for rid, _n, _s, t in RULES.values()}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    b = Browser()
    try:
        yield b
    finally:
        b.quit()


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory, shared_pcaps: Path) -> dict[str, Any]:
    """Report of the project's Modbus/MQTT/S7 demos plus Zeek's modbusBig, alerts from the test detector."""
    paths = [*DEMOS, shared_pcaps / "zeek" / "modbusBig.pcap"]
    sink = ReportSink(None, captures=[str(p) for p in paths], rule_pack="test-flagger")
    events, alerts = MemorySink(), MemorySink()
    outputs = Outputs(events=[sink, events], alerts=[sink, alerts], stats=[sink])
    pipe = Pipeline(load_config(None), outputs, detectors=[FlagWrites()])
    pipe.open()
    pipe.run(read_captures([str(p) for p in paths], SourceReport()))
    stats = pipe.close()
    out = tmp_path_factory.mktemp("report") / "mixed.html"
    out.write_text(sink.render(stats))
    pairs = {(d["client"]["ip"], d["server"]["ip"]) for d in events.docs if "client" in d}
    by_src: dict[str, int] = {}
    for d in alerts.docs:
        by_src[d["source"]["ip"]] = by_src.get(d["source"]["ip"], 0) + 1
    return {"path": out, "stats": stats, "pairs": pairs, "hosts": {ip for p in pairs for ip in p}, "by_src": by_src}


def visible(b: Browser) -> int:
    return b.evaluate("document.querySelectorAll('#alert-table tr.arow:not([hidden])').length")


def choose(b: Browser, name: str, value: str) -> int:
    b.evaluate(f"(() => {{ const s = document.querySelector('select[data-filter={name}]'); s.value = {json.dumps(value)};"
               " s.dispatchEvent(new Event('change')); })()")  # fmt: skip
    return visible(b)


def reset(b: Browser) -> int:
    b.evaluate("document.getElementById('alert-reset').click()")
    return visible(b)


def test_table_filters_sort_expand(browser: Browser, mixed: dict[str, Any]) -> None:
    b, stats = browser, mixed["stats"]
    b.open(mixed["path"])
    by_rule = stats["alerts_by_rule"]
    assert b.evaluate("document.querySelectorAll('#alert-table tr.arow').length") == stats["alerts"] == visible(b)
    assert set(b.evaluate("[...document.querySelectorAll('#alert-table tr.arow')].map(r => r.dataset.rule)")) == set(by_rule)
    # severity filter: rows of the rules of that severity, by the pipeline's own counters
    for sev in ("critical", "high", "medium", "low"):
        want = sum(n for rid, n in by_rule.items() if SEV_OF[rid] == sev)
        if want:
            assert choose(b, "severity", sev) == want, sev
    assert reset(b) == stats["alerts"]
    for rid, n in by_rule.items():
        assert choose(b, "rule", rid) == n
    reset(b)
    assert choose(b, "technique", "T0888") == by_rule["TEST-MODBUS-DEVID"]
    assert choose(b, "technique", "T0836") == by_rule["TEST-MODBUS-WRITE"]
    reset(b)
    for ip, n in mixed["by_src"].items():
        assert choose(b, "source", ip) == n
    reset(b)
    assert choose(b, "destination", "10.235.149.243") > 1000
    choose(b, "severity", "critical")
    assert choose(b, "destination", "10.235.149.243") == 0  # filters combine
    reset(b)
    b.evaluate("(() => { const q = document.getElementById('alert-search'); q.value = 'diagnostics request';"
               " q.dispatchEvent(new Event('input')); })()")  # fmt: skip
    assert visible(b) == by_rule["TEST-MODBUS-DIAG"]
    assert reset(b) == stats["alerts"]
    assert b.evaluate("document.getElementById('alert-count').textContent").startswith(f"{stats['alerts']:,} of")
    # sorting: severity descending puts critical first, ascending low (or the least severe present) first
    click_sort = "document.querySelector('th[data-key=sev] button').click()"
    first_sev = "document.querySelector('#alert-table tr.arow').dataset.severity"
    b.evaluate(click_sort)
    assert b.evaluate(first_sev) == "low"
    b.evaluate(click_sort)
    assert b.evaluate(first_sev) == "critical"
    assert b.evaluate("document.querySelector('th[data-key=sev]').getAttribute('aria-sort')") == "descending"
    b.evaluate("document.querySelector('th[data-key=count] button').click()")
    assert b.evaluate("document.querySelectorAll('#alert-table tr.arow').length") == stats["alerts"]
    # expanding a row shows its fields; clicking again hides them
    b.evaluate("document.querySelector('#alert-table tr.arow button.exp').click()")
    fields = dict(b.evaluate("[...document.querySelectorAll('#alert-table tr.adetail:not([hidden]) table.fields tr')]"
                             ".map(tr => [tr.cells[0].textContent, tr.cells[1].textContent])"))  # fmt: skip
    assert fields["rule.id"] in by_rule and fields["event.kind"] == "alert"
    assert fields["ics.modbus.function_code"] and fields["source.ip"] and fields["log.file.path"]
    assert b.evaluate("document.querySelector('#alert-table tr.arow button.exp').getAttribute('aria-expanded')") == "true"
    b.evaluate("document.querySelector('#alert-table tr.arow button.exp').click()")
    assert b.evaluate("document.querySelectorAll('#alert-table tr.adetail:not([hidden])').length") == 0
    assert b.requests == [mixed["path"].resolve().as_uri()], "the page made a request"
    assert b.console == []


def test_charts_have_their_elements(browser: Browser, mixed: dict[str, Any]) -> None:
    b, stats = browser, mixed["stats"]
    b.open(mixed["path"])
    count = lambda sel: b.evaluate(f"document.querySelectorAll({json.dumps(sel)}).length")  # noqa: E731
    sevs = {SEV_OF[r] for r in stats["alerts_by_rule"]}
    assert count("#chart-severity rect.bar") == len(sevs)
    assert count("#chart-rules rect.bar") == len(stats["alerts_by_rule"])
    assert count("#chart-alert-timeline rect.tbar") > 0 and count("#chart-traffic rect.tbar") > 0
    assert count("#graph path.edge") == len(mixed["pairs"])
    assert count("#graph g.node") == len(mixed["hosts"])
    assert count("#graph path.edge.write") >= 1 and count("#graph path.edge.control") >= 1
    assert count("#graph path.edge.proto-mqtt") >= 1
    techs = {t for rid in stats["alerts_by_rule"] for t in TECHS_OF[rid]}
    assert count("#attack-matrix li.tcell") == sum(len(technique(t)[1]) for t in techs)  # type: ignore[index]
    assert count("#attack-matrix .tactic") == len({ta for t in techs for ta in technique(t)[1]})  # type: ignore[index]
    assert count("#chart-modbus-fc rect.bar") >= 10
    assert count("#modbus-writes tbody tr") > 0 and count("#mqtt-topics tbody tr") > 0
    assert count("#asset-table tbody tr") == len(mixed["hosts"])
    # every chart element is drawn with a size (SVG laid out, not empty)
    assert b.evaluate("[...document.querySelectorAll('svg.chart')].every(s => s.getBoundingClientRect().width > 100)")
    assert b.requests == [mixed["path"].resolve().as_uri()]
    b.screenshot(ARTIFACTS / "report-mixed.png", max_height=4000)


def test_hash_preselects_filters(browser: Browser, mixed: dict[str, Any]) -> None:
    browser.open(mixed["path"], "#filter=severity:critical")
    assert visible(browser) == mixed["stats"]["alerts_by_rule"]["TEST-MODBUS-DIAG"]


def test_malicious_wire_strings_stay_text(browser: Browser, tmp_path: Path) -> None:
    sink = ReportSink()
    sink.write(malicious_docs())
    page = tmp_path / "xss.html"
    page.write_text(sink.render())
    browser.open(page)
    assert browser.evaluate("typeof window.__xss") == "undefined"
    assert browser.evaluate("document.scripts.length") == 2
    assert browser.evaluate("document.querySelectorAll('img, iframe, object, embed, svg[onload]').length") == 0
    assert browser.evaluate("[...document.querySelectorAll('b')].filter(b => b.textContent === 'rule').length") == 0
    topics = browser.evaluate("[...document.querySelectorAll('#mqtt-topics td.topic')].map(td => td.textContent)")
    assert topics == [XSS["topic"]]
    assert XSS["vendor"] in browser.evaluate("document.getElementById('asset-table').textContent")
    browser.evaluate("document.querySelector('#alert-table tr.arow button.exp').click()")
    assert XSS["rule"] in browser.evaluate("document.querySelector('#alert-table tr.adetail').textContent")
    assert browser.evaluate("typeof window.__xss") == "undefined"
    assert browser.requests == [page.resolve().as_uri()]


def test_replay_cli_report_in_browser(browser: Browser, tmp_path: Path) -> None:
    """`ics-sensor replay --report` with the shipped rules on the rule test captures and the demos."""
    caps = sorted((ROOT / "rules" / "tests").rglob("*.pcap")) + DEMOS
    out, alerts = tmp_path / "report.html", tmp_path / "alerts.ndjson"
    res = CliRunner().invoke(main, ["replay", *map(str, caps), "--report", str(out), "--alerts", str(alerts), "-q"])
    assert res.exit_code == 0, res.output
    docs = [orjson.loads(line) for line in alerts.read_bytes().splitlines()]
    browser.open(out)
    assert visible(browser) == len(docs) > 0
    for sev in {d["ics"]["alert"]["severity"] for d in docs}:
        assert choose(browser, "severity", sev) == sum(d["ics"]["alert"]["severity"] == sev for d in docs)
    reset(browser)
    assert browser.requests == [out.resolve().as_uri()]
    shot = ARTIFACTS / "report.png"
    browser.screenshot(shot, max_height=2600)
    if os.environ.get("ICS_SENSOR_UPDATE_DOCS") == "1":
        (ROOT / "docs").mkdir(exist_ok=True)
        shutil.copyfile(shot, ROOT / "docs" / "report.png")
