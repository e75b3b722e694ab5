"""Rule files that must be refused: every problem reported as file:line:column: reason, nothing loaded."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from detectors.rules import RuleLoadError, load_rules

GOOD = """\
- id: TEST-GOOD-0001
  title: good rule
  description: a write
  protocol: modbus
  severity: high
  attack: {version: "19", techniques: [T1692.001]}
  match:
    ics.modbus.function_code: 6
"""


def _rule(match: str, extra: str = "", rid: str = "TEST-BAD-0001", attack: str = '{version: "19", techniques: [T0836]}') -> str:
    body = textwrap.indent(textwrap.dedent(match).strip("\n"), "    ")
    return (
        f"- id: {rid}\n  title: bad rule\n  description: d\n  protocol: modbus\n  severity: high\n"
        f"  attack: {attack}\n  match:\n{body}\n{extra}"
    )


def _line_of(text: str, needle: str) -> int:
    """1-based line of the first occurrence of ``needle``: where the loader must point, found independently."""
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError(f"{needle!r} not in the test file")


def _problems(tmp_path: Path, text: str, name: str = "bad.yml") -> list[str]:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(RuleLoadError) as exc:
        load_rules([path])
    return [str(p) for p in exc.value.problems]


CASES = [
    # (what, rule text, needle on the offending line, words the reason must contain)
    ("unknown field", _rule("ics.modbus.funktion_code: 6"), "funktion_code", ["unknown field", "function_code"]),
    ("field of another protocol", _rule("ics.mqtt.topic: a/b"), "ics.mqtt.topic", ["unknown field"]),
    ("wrong value type", _rule('ics.modbus.function_code: "six"'), '"six"', ["wrong type", "integer"]),
    ("bool where a number", _rule("ics.modbus.unit_id: {gt: true}"), "gt: true", ["expects a number"]),
    ("ip field with a name", _rule("source.ip: plc-1"), "plc-1", ["IP address"]),
    ("unknown list", _rule("source.ip: {not_in: {list: writers}}"), "writers", ["unknown list", "requires_lists"]),
    ("bad regex", _rule('ics.modbus.function_name: {re: "Write("}'), "Write(", ["bad regular expression"]),
    ("unknown operator", _rule("ics.modbus.unit_id: {between: [1, 2]}"), "between", ["unknown operator"]),
    ("bare list", _rule("ics.modbus.unit_id: [1, 2]"), "[1, 2]", ["ambiguous"]),
    ("range order", _rule("ics.modbus.unit_id: {range: [9, 2]}"), "[9, 2]", ["low <= high"]),
    ("unknown anomaly", _rule("error.code: modbus.bogus"), "modbus.bogus", ["unknown anomaly"]),
    ("unknown rule key", _rule("ics.modbus.unit_id: 1", "  severty: low\n"), "severty", ["unknown key", "severity"]),
    ("v18 id revoked in v19", _rule("ics.modbus.unit_id: 1", attack='{version: "19", techniques: [T0855]}'), "T0855", ["unknown technique"]),
    ("v19 id in a v18 rule", _rule("ics.modbus.unit_id: 1", attack='{version: "18", techniques: [T1692.001]}'), "T1692.001", ["unknown technique"]),
    ("made-up technique", _rule("ics.modbus.unit_id: 1", attack='{version: "18", techniques: [T0999]}'), "T0999", ["unknown technique"]),
    ("bad threshold", _rule("ics.modbus.unit_id: 1", "  threshold: {count: 0, seconds: 10}\n"), "count: 0", ["positive integer"]),
    ("threshold by unknown field", _rule("ics.modbus.unit_id: 1", "  threshold: {count: 3, seconds: 10, by: [source.mac]}\n"), "source.mac", ["unknown field"]),
    ("duplicate key", _rule("ics.modbus.unit_id: 1\nics.modbus.unit_id: 2"), "unit_id: 2", ["duplicate key"]),
    ("yaml syntax", _rule("ics.modbus.unit_id: {in: [1, 2}"), "[1, 2}", ["invalid YAML"]),
]  # fmt: skip


@pytest.mark.parametrize(("what", "text", "needle", "words"), CASES, ids=[c[0] for c in CASES])
def test_broken_rule_reports_file_line_reason(tmp_path: Path, what: str, text: str, needle: str, words: list[str]) -> None:
    problems = _problems(tmp_path, text)
    want_line = _line_of(text, needle)
    hits = [p for p in problems if p.startswith(f"{tmp_path / 'bad.yml'}:{want_line}:")]
    assert hits, f"{what}: no problem on line {want_line}: {problems}"
    assert any(all(w in p for w in words) for p in hits), f"{what}: {hits}"


def test_column_points_at_the_value(tmp_path: Path) -> None:
    text = _rule('ics.modbus.function_code: "six"')
    (problem,) = _problems(tmp_path, text)
    line = _line_of(text, '"six"')
    col = text.splitlines()[line - 1].index('"six"') + 1
    assert problem.startswith(f"{tmp_path / 'bad.yml'}:{line}:{col}: ")


def test_all_problems_at_once_and_nothing_partial(tmp_path: Path) -> None:
    (tmp_path / "a_good.yml").write_text(GOOD)
    bad = _rule("ics.modbus.funktion_code: 6\nsource.ip: {in: {list: nope}}", rid="TEST-BAD-0001") + _rule(
        'ics.modbus.unit_id: {re: "("}', rid="TEST-BAD-0002"
    )
    (tmp_path / "b_bad.yml").write_text(bad)
    with pytest.raises(RuleLoadError) as exc:
        load_rules([tmp_path])
    reasons = [p.reason for p in exc.value.problems]
    assert len(reasons) == 3, reasons
    assert all(p.file.endswith("b_bad.yml") for p in exc.value.problems)
    assert load_rules([tmp_path / "a_good.yml"])[0].id == "TEST-GOOD-0001"  # the good file alone loads


def test_duplicate_id_across_files(tmp_path: Path) -> None:
    (tmp_path / "a.yml").write_text(GOOD)
    (tmp_path / "b.yml").write_text("# another pack\n" + GOOD)
    with pytest.raises(RuleLoadError) as exc:
        load_rules([tmp_path])
    (p,) = exc.value.problems
    assert p.file.endswith("b.yml") and p.line == 2 and "duplicate rule id TEST-GOOD-0001" in p.reason
    assert "a.yml" in p.reason


def test_declared_but_unused_list_and_missing_keys(tmp_path: Path) -> None:
    text = "- id: TEST-BAD-0003\n  title: t\n  protocol: modbus\n  severity: high\n  match: {ics.modbus.unit_id: 1}\n"
    text += '  attack: {version: "19", techniques: [T0836]}\n  requires_lists: [writers]\n'
    problems = _problems(tmp_path, text)
    assert any(":1:3: rule TEST-BAD-0003: missing required key 'description'" in p for p in problems), problems
    assert any(":7:" in p and "declared but no condition uses it" in p for p in problems), problems


def test_not_a_list_of_rules(tmp_path: Path) -> None:
    (p,) = _problems(tmp_path, "id: X-Y-1\ntitle: t\n")
    assert p.endswith("a rule file is a YAML list of rules") and ":1:1:" in p


def test_unsafe_yaml_tag_refused(tmp_path: Path) -> None:
    problems = _problems(tmp_path, "- !!python/object/apply:os.system ['true']\n")
    assert any("invalid YAML" in p for p in problems), problems
