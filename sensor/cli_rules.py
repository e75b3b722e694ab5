"""``ics-sensor rules list|lint|test`` and the glue that turns rule options into a detector for ``replay``.

Why here and not in detectors/rules: ``rules test`` replays captures through the pipeline, and detectors never
import the pipeline (DESIGN.md: imports run one way).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from detectors.rules import Rule, RuleEngine, RuleLoadError, RuleTest, load_rules, rule_paths, rule_status
from detectors.rules.lint import lint
from sensor.cli_fail import fail
from sensor.config import Config, ConfigError, load_config
from sensor.outputs.memory import MemorySink
from sensor.pipeline import Outputs, Pipeline
from sensor.source import SourceReport, read_captures


def selected_paths(config: Config, extra: Iterable[str], no_builtin: bool) -> list[Path]:
    r = config.raw["rules"]
    return rule_paths(extra, builtin=r["builtin"] and not no_builtin, config_paths=r["paths"])


def rule_detectors(config: Config, extra: Iterable[str] = (), no_builtin: bool = False) -> list[RuleEngine]:
    """The rule engine for replay/live, or nothing when no rule files are selected. Exits on a bad rule file."""
    paths = selected_paths(config, extra, no_builtin)
    if not paths:
        return []
    try:
        rules = load_rules(paths)
        return [RuleEngine(rules, config.lists, float(config.raw["rules"]["aggregate_seconds"]))]
    except RuleLoadError as e:
        click.echo("\n".join(str(p) for p in e.problems), err=True)
        fail(f"{len(e.problems)} problem(s) in the rule files; no rule was loaded")
    return []


# ---------------------------------------------------------------------------------------------------------
# rules test: replay each rule's captures with that rule alone
# ---------------------------------------------------------------------------------------------------------


@dataclass
class TestResult:
    rule: Rule
    test: RuleTest
    hits: int = 0  # matching messages accounted for in alerts (sum of alert counts)
    alerts: int = 0  # alert documents after aggregation
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _get(doc: Mapping[str, Any], path: str) -> Any:
    """A dotted path of an ECS document; flattened keys (ics.modbus.function_code) are nested dicts."""
    node: Any = doc
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _matches(actual: Any, want: Any) -> bool:
    if isinstance(actual, list):
        return any(_matches(a, want) for a in actual)
    return actual == want or str(actual) == str(want)


def run_rule_test(rule: Rule, test: RuleTest, base_config: Config | None = None) -> TestResult:
    """Replay the test's captures with only ``rule`` enabled and the test's lists; check count and fields."""
    res = TestResult(rule, test)
    missing = [str(p) for p in test.pcaps if not p.is_file()]
    if missing:
        res.problems.append(f"capture missing: {', '.join(missing)}")
        return res
    config = base_config or load_config(None)
    engine = RuleEngine([rule], dict(test.lists), aggregate_seconds=60.0)
    if not engine.rules:
        res.problems.append(f"rule inactive with the test's lists: {engine.statuses[0].reason}")
        return res
    sink = MemorySink()
    pipe = Pipeline(config, Outputs(alerts=[sink]), detectors=[engine])
    pipe.open()
    pipe.run(read_captures([str(p) for p in test.pcaps], SourceReport()))
    pipe.close()
    docs = [d for d in sink.docs if d["rule"]["id"] == rule.id]
    res.alerts = len(docs)
    res.hits = sum(d["ics"]["alert"]["count"] for d in docs)
    if test.count is not None and res.hits != test.count:
        res.problems.append(f"expected {test.count} matching messages, got {res.hits} (in {res.alerts} alerts)")
    if test.min_count is not None and res.hits < test.min_count:
        res.problems.append(f"expected at least {test.min_count} matching messages, got {res.hits}")
    for path, want in test.match.items():
        bad = [d for d in docs if not _matches(_get(d, path), want)]
        if bad:
            res.problems.append(f"{len(bad)} alert(s) with {path} = {_get(bad[0], path)!r}, expected {want!r}")
    return res


def run_rule_tests(rules: list[Rule], config: Config | None = None) -> list[TestResult]:
    return [run_rule_test(r, t, config) for r in rules if r.enabled and r.status != "deprecated" for t in r.tests]


# ---------------------------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------------------------


def _load(paths: tuple[str, ...], config_path: str | None, no_builtin: bool) -> tuple[Config, list[Rule]]:
    try:
        config = load_config(config_path)
    except ConfigError as e:
        fail(str(e))
    selected = [Path(p) for p in paths] if paths else selected_paths(config, (), no_builtin)
    try:
        return config, load_rules(selected)
    except RuleLoadError as e:
        click.echo("\n".join(str(p) for p in e.problems), err=True)
        fail(f"{len(e.problems)} problem(s) in the rule files; no rule was loaded", 1)
    raise AssertionError("unreachable")


_paths = click.argument("paths", nargs=-1, type=click.Path(exists=True))
_config = click.option("--config", "config_path", metavar="PATH", help="Sensor configuration (lists, rules.paths).")
_no_builtin = click.option("--no-builtin-rules", is_flag=True, help="Without PATHs: skip the shipped pack.")


@click.group("rules")
def rules_group() -> None:
    """List, check and test detection rules (default: the shipped pack plus the config's rules.paths)."""


@rules_group.command("list")
@_paths
@_config
@_no_builtin
def list_cmd(paths: tuple[str, ...], config_path: str | None, no_builtin_rules: bool) -> None:
    """Every rule with its state under this config (active, disabled, inactive because a list is undefined)."""
    config, rules = _load(paths, config_path, no_builtin_rules)
    for r in rules:
        st = rule_status(r, config.lists)
        click.echo(f"{r.id:17} {r.protocol:7} {r.severity:8} {st.reason:40} {r.title}")
    active = sum(rule_status(r, config.lists).active for r in rules)
    click.echo(f"{len(rules)} rules, {active} active", err=True)


@rules_group.command("lint")
@_paths
@_config
@_no_builtin
def lint_cmd(paths: tuple[str, ...], config_path: str | None, no_builtin_rules: bool) -> None:
    """Validate rule files (all problems as file:line:column) and review them; exit 1 on any error."""
    _, rules = _load(paths, config_path, no_builtin_rules)
    findings = lint(rules)
    for f in findings:
        click.echo(str(f))
    errors = sum(f.level == "error" for f in findings)
    click.echo(f"{len(rules)} rules, {errors} errors, {len(findings) - errors} warnings", err=True)
    sys.exit(1 if errors else 0)


@rules_group.command("test")
@_paths
@_config
@_no_builtin
@click.option("--verbose", "-v", is_flag=True, help="Print passing tests too.")
def test_cmd(paths: tuple[str, ...], config_path: str | None, no_builtin_rules: bool, verbose: bool) -> None:
    """Replay each rule's test captures; fail when an alerting capture stays quiet or a quiet capture alerts."""
    config, rules = _load(paths, config_path, no_builtin_rules)
    results = run_rule_tests(rules, config)
    failed = [r for r in results if not r.ok]
    for r in results:
        if r.ok and not verbose:
            continue
        kind = "quiet" if r.test.quiet else "alerts"
        names = ", ".join(p.name for p in r.test.pcaps)
        state = "ok  " if r.ok else "FAIL"
        click.echo(f"{state} {r.rule.id} {kind:6} {names}: {r.hits} matches in {r.alerts} alerts")
        for p in r.problems:
            click.echo(f"     {r.test.where}: {p}")
    untested = [r.id for r in rules if r.enabled and r.status != "deprecated" and not r.tests]
    if untested:
        click.echo(f"no tests: {', '.join(untested)}", err=True)
    click.echo(f"{len(results)} tests, {len(failed)} failed, {len(rules)} rules", err=True)
    sys.exit(1 if failed else 0)
