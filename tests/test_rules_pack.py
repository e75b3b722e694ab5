"""The shipped rule pack: its own tests pass, its ATT&CK ids exist, and a mixed capture raises exactly the attacks."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from detectors.rules import builtin_rules_dir, load_rules
from sensor.cli import main

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "rules"
ATTACK = ROOT.parent / "shared" / "attack"
SERVER = "127.0.0.1"
ATTACKER, ATTACKER2 = "127.0.0.66", "127.0.0.67"
NORMAL_HOSTS = {"127.0.0.10", "127.0.0.20", "127.0.0.30", "127.0.0.40", "127.0.0.50", "127.0.0.60", "127.0.0.70"}

SITE = """\
lists:
  modbus_writers: [127.0.0.20/32]
  engineering_hosts: [127.0.0.20, 127.0.0.40]
  s7_writers: [127.0.0.40]
  s7plus_clients: [127.0.0.40]
  mqtt_command_publishers: [line1-controller]
  mqtt_known_clients: [historian-01, line1-controller, pump1-sensor, boiler-sensor]
  mqtt_auth_brokers: [127.0.0.1]
rules:
  aggregate_seconds: 60
"""


def test_builtin_dir_is_the_checkout_rules() -> None:
    assert builtin_rules_dir().resolve() == RULES.resolve()


def test_shipped_pack_passes_its_own_tests() -> None:
    """`ics-sensor rules test`: every alerts capture raises its rule, every quiet capture stays quiet."""
    res = CliRunner().invoke(main, ["rules", "test", "-v"])
    assert res.exit_code == 0, res.output
    assert " 0 failed" in res.output
    assert "FAIL" not in res.output
    rules = load_rules([RULES])
    for r in rules:
        assert any(t.count != 0 for t in r.tests), f"{r.id} has no alerting capture"
        assert any(t.count == 0 for t in r.tests), f"{r.id} has no quiet capture"


def test_lint_clean() -> None:
    res = CliRunner().invoke(main, ["rules", "lint"])
    assert res.exit_code == 0, res.output
    assert "error" not in res.stdout


def _bundle_ids() -> set[str]:
    bundle = json.loads((ATTACK / "ics-attack-18.1.json").read_text())
    ids = set()
    for o in bundle["objects"]:
        if o["type"] == "attack-pattern" and not o.get("revoked") and not o.get("x_mitre_deprecated"):
            ids |= {r["external_id"] for r in o["external_references"] if r.get("source_name") == "mitre-attack"}
    return ids


def _crosswalk() -> dict[str, str]:
    """v18 -> v19 from the table in ../shared/attack/README.md."""
    rows = re.findall(r"^\|\s*(T\d{4})\b[^|]*\|\s*(T\d{4}\.\d{3})\s*\|", (ATTACK / "README.md").read_text(), re.M)
    return dict(rows)


@pytest.mark.skipif(not ATTACK.exists(), reason="../shared/attack missing")
def test_every_technique_exists_in_the_stated_release() -> None:
    v18 = _bundle_ids()
    cross = _crosswalk()
    assert len(v18) == 83 and len(cross) == 9
    v19 = (v18 - set(cross)) | set(cross.values())
    for r in load_rules([RULES]):
        release = v19 if r.attack_version == "19" else v18
        assert r.attack_version in ("18", "19")
        unknown = [t for t in r.techniques if t not in release]
        assert not unknown, f"{r.id}: {unknown} not in ATT&CK for ICS v{r.attack_version}"


def _replay(tmp_path: Path, captures: list[Path], *extra: str) -> list[dict[str, Any]]:
    (tmp_path / "site.yml").write_text(SITE)
    out = tmp_path / "alerts.ndjson"
    args = ["replay", *map(str, captures), "--config", str(tmp_path / "site.yml"), "--alerts", str(out), "-q", *extra]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    return [json.loads(line) for line in out.read_text().splitlines()]


# rule -> (source.ip, destination.ip, a technique it must carry): written from the scenario in pcaps/attacks.py
MODBUS_EXPECTED = {
    "ICS-MODBUS-0001": (ATTACKER, SERVER, "T1692.001"),
    "ICS-MODBUS-0002": (ATTACKER, SERVER, "T0814"),
    "ICS-MODBUS-0003": (ATTACKER, SERVER, "T0888"),
    "ICS-MODBUS-0004": (ATTACKER, SERVER, "T0846"),
    "ICS-MODBUS-0005": (ATTACKER, SERVER, "T0846"),
    "ICS-MODBUS-0006": (ATTACKER, SERVER, "T0861"),
    "ICS-MODBUS-0007": (SERVER, ATTACKER, "T0846"),  # the device answers the exceptions to the prober
    "ICS-MODBUS-0008": (ATTACKER, SERVER, "T1692.001"),
    "ICS-MODBUS-0009": (ATTACKER, SERVER, "T0866"),
    "ICS-MODBUS-0010": (ATTACKER2, SERVER, "T0885"),
    "ICS-MODBUS-0011": (ATTACKER2, SERVER, "T0814"),
    "ICS-ANOM-0001": (ATTACKER, SERVER, "T0866"),
    "ICS-ANOM-0002": (ATTACKER, SERVER, "T1692.001"),
}
MQTT_EXPECTED = {
    "ICS-MQTT-0001": (ATTACKER, SERVER, "T0801"),
    "ICS-MQTT-0002": (ATTACKER, SERVER, "T0886"),
    "ICS-MQTT-0003": (SERVER, ATTACKER2, "T0859"),  # the broker refuses the guessing client
    "ICS-MQTT-0004": (ATTACKER, SERVER, "T1692.001"),
    "ICS-MQTT-0005": (ATTACKER, SERVER, "T0848"),
    "ICS-MQTT-0006": ("127.0.0.50", SERVER, "T0814"),  # a known sensor sending 10 kB
    "ICS-MQTT-0007": (ATTACKER, SERVER, "T0866"),
    "ICS-MQTT-0008": (ATTACKER, SERVER, "T0814"),
    "ICS-ANOM-0003": (ATTACKER, SERVER, "T0866"),
    "ICS-ANOM-0004": (ATTACKER2, SERVER, "T0885"),
}


def _check_mixed(docs: list[dict[str, Any]], expected: dict[str, tuple[str, str, str]], capture: Path,
                 allowed: frozenset[str] = frozenset()) -> None:  # fmt: skip
    by_rule: dict[str, list[dict[str, Any]]] = {}
    for d in docs:
        by_rule.setdefault(d["rule"]["id"], []).append(d)
        assert d["event"]["kind"] == "alert" and "intrusion_detection" in d["event"]["category"]
        assert d["log"]["file"]["path"].endswith(capture.name) and d["ics"]["frame"] >= 1
        normal = {d["source"]["ip"], d["destination"]["ip"]} & (NORMAL_HOSTS - allowed)
        assert not normal, f"normal host {normal} in {d['rule']['id']}"
    assert set(by_rule) == set(expected), f"missing {set(expected) - set(by_rule)}, extra {set(by_rule) - set(expected)}"
    for rid, (src, dst, technique) in expected.items():
        for d in by_rule[rid]:
            assert (d["source"]["ip"], d["destination"]["ip"]) == (src, dst), rid
            assert technique in d["threat"]["technique"]["id"], rid
            assert d["threat"]["framework"] == "MITRE ATT&CK for ICS"
            assert sorted(d["related"]["ip"]) == sorted({src, dst})


def test_mixed_modbus_capture(tmp_path: Path) -> None:
    capture = RULES / "tests" / "modbus" / "mixed.pcap"
    docs = _replay(tmp_path, [capture])
    _check_mixed(docs, MODBUS_EXPECTED, capture)
    flood = next(d for d in docs if d["rule"]["id"] == "ICS-MODBUS-0011")
    assert flood["ics"]["alert"]["count"] >= 200  # aggregated: one document, not 230
    assert flood["event"]["start"] <= flood["event"]["end"]


S7_EXPECTED = {
    "ICS-S7-0001": (ATTACKER, SERVER, "T0881"),
    "ICS-S7-0002": (ATTACKER, SERVER, "T0816"),
    "ICS-S7-0003": (ATTACKER, SERVER, "T0843"),
    "ICS-S7-0004": (ATTACKER, SERVER, "T0845"),
    "ICS-S7-0005": (ATTACKER, SERVER, "T0888"),
    "ICS-S7-0006": (ATTACKER, SERVER, "T1692.001"),
    "ICS-S7-0007": (ATTACKER, SERVER, "T0836"),
    "ICS-S7-0008": (ATTACKER, SERVER, "T0859"),
    "ICS-S7-0009": (ATTACKER, SERVER, "T0846"),
}


def test_mixed_s7comm_capture(tmp_path: Path) -> None:
    capture = RULES / "tests" / "s7comm" / "mixed.pcap"
    if not capture.exists():
        pytest.skip("rules/tests/s7comm/mixed.pcap not generated yet (python pcaps/attacks.py --prefix s7comm)")
    docs = _replay(tmp_path, [capture])
    _check_mixed(docs, S7_EXPECTED, capture)


def test_mixed_mqtt_capture(tmp_path: Path) -> None:
    capture = RULES / "tests" / "mqtt" / "mixed.pcap"
    docs = _replay(tmp_path, [capture])
    _check_mixed(docs, MQTT_EXPECTED, capture, allowed=frozenset({"127.0.0.50"}))
    (oversized,) = [d for d in docs if d["rule"]["id"] == "ICS-MQTT-0006"]
    assert oversized["ics"]["mqtt"]["payload_length"] == 10_000
    assert all(d["rule"]["id"] == "ICS-MQTT-0006" for d in docs if "127.0.0.50" in d["related"]["ip"])


def test_normal_traffic_raises_nothing(tmp_path: Path) -> None:
    captures = sorted((RULES / "tests").glob("*/normal*.pcap"))
    assert captures
    assert _replay(tmp_path, captures) == []


def test_replay_rules_options(tmp_path: Path) -> None:
    capture = RULES / "tests" / "modbus" / "write-unknown-host.pcap"
    (tmp_path / "mine.yml").write_text(
        "- id: SITE-MODBUS-0001\n  title: any FC6\n  description: d\n  protocol: modbus\n  severity: low\n"
        '  attack: {version: "18", techniques: [T0855]}\n  match: {ics.modbus.function_code: 6, ics.modbus.is_request: true}\n'
    )
    docs = _replay(tmp_path, [capture], "--rules", str(tmp_path / "mine.yml"), "--no-builtin-rules")
    assert [d["rule"]["id"] for d in docs] == ["SITE-MODBUS-0001"]
    assert docs[0]["threat"]["technique"]["name"] == ["Unauthorized Command Message"]
    with_pack = {d["rule"]["id"] for d in _replay(tmp_path, [capture], "--rules", str(tmp_path / "mine.yml"))}
    assert {"SITE-MODBUS-0001", "ICS-MODBUS-0001"} <= with_pack


def test_replay_refuses_a_bad_rule_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("- id: SITE-BAD-0001\n  title: t\n  description: d\n  protocol: modbus\n  severity: urgent\n"
                   '  attack: {version: "19", techniques: [T0836]}\n  match: {ics.modbus.fc: 6}\n')  # fmt: skip
    res = CliRunner().invoke(main, ["replay", str(RULES / "tests" / "modbus" / "normal.pcap"), "--rules", str(bad)])
    assert res.exit_code == 2
    assert f"{bad}:5:" in res.output and "severity" in res.output
    assert f"{bad}:7:" in res.output and "unknown field ics.modbus.fc" in res.output
    assert "no rule was loaded" in res.output


def test_rules_list_says_why_inactive(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["rules", "list"])
    assert res.exit_code == 0
    line = next(x for x in res.output.splitlines() if x.startswith("ICS-MODBUS-0001"))
    assert "inactive: list modbus_writers undefined" in line
    (tmp_path / "site.yml").write_text(SITE)
    res = CliRunner().invoke(main, ["rules", "list", "--config", str(tmp_path / "site.yml")])
    line = next(x for x in res.output.splitlines() if x.startswith("ICS-MODBUS-0001"))
    assert " active " in line
