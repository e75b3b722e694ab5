"""Load and validate YAML rule files into frozen ``Rule`` objects, reporting every problem as file:line:column.

Why so strict: a typo in a field name would otherwise give a rule that never fires, silently. All files are
checked before anything is returned, so a broken file never leaves a half-loaded rule set behind. YAML is read
with a SafeLoader subclass; nodes are converted by hand so every key and value keeps its source position.
"""

from __future__ import annotations

import difflib
import fnmatch
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any

import yaml

from detectors.rules.attack import RELEASES, known
from detectors.rules.schema import (
    ANOMALY_FIELDS,
    ANY_PROTOCOL,
    ECS_FIELDS,
    EXCEPTION_KEYS,
    EXPECT_KEYS,
    NUMERIC_TYPES,
    OPEN_TYPES,
    OPERATORS,
    RULE_KEYS,
    SEVERITIES,
    STATUSES,
    TEST_KEYS,
    THRESHOLD_KEYS,
)
from sensor.messages import FieldRegistry

ID_RE = re.compile(r"^[A-Z][A-Z0-9]*(-[A-Z0-9]+)+$")
PROTOCOL_MODULES = ("modbus", "s7comm", "mqtt")


# ---------------------------------------------------------------------------------------------------------
# YAML with positions
# ---------------------------------------------------------------------------------------------------------


class Pos(tuple[int, int]):
    """1-based (line, column)."""


class YMap(dict[Any, Any]):
    """A mapping that remembers where it, each key and each value start."""

    pos: Pos
    kpos: dict[Any, Pos]
    vpos: dict[Any, Pos]


class YList(list[Any]):
    pos: Pos
    ipos: list[Pos]


def _pos(mark: yaml.Mark) -> Pos:
    return Pos((mark.line + 1, mark.column + 1))


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """Safe loading only; the subclass exists so we never register anything on yaml.SafeLoader itself. libyaml's
    parser where PyYAML has it (its nodes carry the same line and column marks): a rule pack parses in a tenth
    of the time, which every replay, live start and SIGHUP reload pays."""


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    line: int
    column: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.reason}"


class RuleLoadError(Exception):
    """Every problem found in the rule files; nothing was loaded."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


class _Problems:
    def __init__(self, file: str) -> None:
        self.file = file
        self.items: list[Problem] = []

    def add(self, pos: Pos | None, reason: str) -> None:
        line, col = pos if pos else (1, 1)
        self.items.append(Problem(self.file, line, col, reason))


_PLAIN_TAGS = frozenset({"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq", "tag:yaml.org,2002:omap"})


def _convert(node: yaml.Node, loader: _Loader, probs: _Problems) -> Any:
    if isinstance(node, yaml.MappingNode | yaml.SequenceNode) and node.tag not in _PLAIN_TAGS:
        probs.add(_pos(node.start_mark), f"invalid YAML: tag {node.tag} is not allowed (safe loading only)")
        return None
    if isinstance(node, yaml.MappingNode):
        out = YMap()
        out.pos, out.kpos, out.vpos = _pos(node.start_mark), {}, {}
        for knode, vnode in node.value:
            if knode.tag == "tag:yaml.org,2002:merge":
                probs.add(_pos(knode.start_mark), "merge keys (<<) are not supported in rule files")
                continue
            key = _convert(knode, loader, probs)
            if isinstance(key, YMap | YList):
                probs.add(_pos(knode.start_mark), "a mapping key must be a plain value")
                continue
            if key in out:
                probs.add(_pos(knode.start_mark), f"duplicate key {key!r} (first at line {out.kpos[key][0]})")
                continue
            out[key] = _convert(vnode, loader, probs)
            out.kpos[key], out.vpos[key] = _pos(knode.start_mark), _pos(vnode.start_mark)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = YList(_convert(n, loader, probs) for n in node.value)
        items.pos, items.ipos = _pos(node.start_mark), [_pos(n.start_mark) for n in node.value]
        return items
    return loader.construct_object(node, deep=True)


def read_yaml(path: Path, probs: _Problems) -> Any:
    """Parse one file into YMap/YList/scalars; syntax errors become problems."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        probs.add(None, f"cannot read: {e.strerror or e}")
        return None
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        return None if node is None else _convert(node, loader, probs)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        probs.add(_pos(mark) if mark else None, f"invalid YAML: {e.problem or e.context}")
        return None
    except yaml.YAMLError as e:
        probs.add(None, f"invalid YAML: {e}")
        return None
    finally:
        loader.dispose()


# ---------------------------------------------------------------------------------------------------------
# Rule objects
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Threshold:
    count: int
    seconds: float
    by: tuple[str, ...] = ()
    distinct: str | None = None


@dataclass(frozen=True, slots=True)
class RuleTest:
    pcaps: tuple[Path, ...]
    lists: Mapping[str, tuple[str, ...]]
    count: int | None  # exact number of matches (sum of alert counts)
    min_count: int | None
    match: Mapping[str, Any]
    name: str = ""
    where: str = ""  # file:line of the test, for reports

    @property
    def quiet(self) -> bool:
        return self.count == 0


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    title: str
    description: str
    protocol: str
    severity: str
    attack_version: str
    techniques: tuple[str, ...]
    match: Mapping[str, Any]
    rev: int = 1
    status: str = "stable"
    threshold: Threshold | None = None
    exceptions: tuple[tuple[str, Mapping[str, Any]], ...] = ()
    requires_lists: tuple[str, ...] = ()
    enabled: bool = True
    references: tuple[str, ...] = ()
    falsepositives: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    tests: tuple[RuleTest, ...] = ()
    on_anomalies: bool = False  # evaluated on decode anomalies (it names error.*) instead of messages
    field_types: Mapping[str, str] = field(default_factory=dict)  # every path the rule names -> type
    file: str = ""
    line: int = 0

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


# ---------------------------------------------------------------------------------------------------------
# Field catalog
# ---------------------------------------------------------------------------------------------------------


def default_registries() -> dict[str, FieldRegistry]:
    """The field registries of every protocol whose message module exists in this build."""
    out: dict[str, FieldRegistry] = {}
    for name in PROTOCOL_MODULES:
        try:
            mod = import_module(f"sensor.messages.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"sensor.messages.{name}":
                raise
            continue
        for value in vars(mod).values():  # REGISTRY, and more than one where a module names two (s7comm_plus)
            if isinstance(value, FieldRegistry):
                out.setdefault(value.protocol, value)
    return out


class Catalog:
    """Field paths a rule of a protocol may name, with their types, and the anomaly names of each protocol."""

    def __init__(self, registries: Mapping[str, FieldRegistry]) -> None:
        self.registries = dict(registries)
        self.paths = {p: {reg.path(n): f.type for n, f in reg.fields.items()} for p, reg in registries.items()}
        self.anomalies = {p: set(reg.anomalies) for p, reg in registries.items()}
        self.all_anomalies = set().union(*self.anomalies.values()) if self.anomalies else set()
        self.all_anomalies |= {"sensor.decoder_exception"}

    def field_type(self, protocol: str, path: str) -> str | None:
        t = ECS_FIELDS.get(path)
        if t is not None:
            return t
        fields = self.paths.get(protocol, {})
        t = fields.get(path)
        if t is not None:
            return t
        parts = path.split(".")
        for i in range(len(parts) - 1, 2, -1):  # ics.<proto>.<field>.<sub...> under a flattened/object field
            parent = fields.get(".".join(parts[:i]))
            if parent in OPEN_TYPES:
                return "any"
        return None

    def suggest(self, protocol: str, path: str) -> str:
        names = [*ECS_FIELDS, *self.paths.get(protocol, {})]
        close = difflib.get_close_matches(path, names, n=1)
        return f" (did you mean {close[0]}?)" if close else ""


# ---------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------


def _is_ip(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return True


def _type_ok(value: Any, ftype: str) -> str | None:
    """None when ``value`` suits a field of ``ftype``, else what was expected."""
    if ftype == "any":
        return None if isinstance(value, str | int | float | bool) else "a plain value"
    if ftype == "boolean":
        return None if isinstance(value, bool) else "true or false"
    if ftype in NUMERIC_TYPES:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ftype != "float" and ftype != "double":
            ok = ok and isinstance(value, int)
        return None if ok else "a number" if ftype in ("float", "double") else "an integer"
    if ftype == "ip":
        return None if _is_ip(value) else "an IP address or CIDR network"
    return None if isinstance(value, str) else "a string (quote numbers meant as text)"


class _RuleCheck:
    """Validates one rule's conditions; collects the field paths, list names and anomaly names it uses."""

    def __init__(self, probs: _Problems, catalog: Catalog, protocol: str, declared_lists: set[str]) -> None:
        self.probs = probs
        self.catalog = catalog
        self.protocol = protocol
        self.declared = declared_lists
        self.used_lists: set[str] = set()
        self.types: dict[str, str] = {}

    def path(self, path: Any, pos: Pos) -> str | None:
        if not isinstance(path, str):
            self.probs.add(pos, f"field name must be a string, got {path!r}")
            return None
        t = self.catalog.field_type(self.protocol, path)
        if t is None:
            where = f"protocol {self.protocol}" if self.protocol != ANY_PROTOCOL else "rules of protocol any"
            self.probs.add(pos, f"unknown field {path} for {where}{self.catalog.suggest(self.protocol, path)}")
            return None
        self.types[path] = t
        return t

    def condition(self, cond: Any, pos: Pos) -> None:
        if not isinstance(cond, YMap) or not cond:
            self.probs.add(pos, "a condition must be a non-empty mapping of field: test")
            return
        for key, value in cond.items():
            kpos, vpos = cond.kpos[key], cond.vpos[key]
            if key in ("any", "all"):
                if not isinstance(value, YList) or not value:
                    self.probs.add(vpos, f"{key}: expects a non-empty list of conditions")
                    continue
                for item, ipos in zip(value, value.ipos, strict=True):
                    self.condition(item, ipos)
            elif key == "not":
                self.condition(value, vpos)
            else:
                t = self.path(key, kpos)
                if t is not None:
                    self.leaf(key, t, value, vpos)

    def leaf(self, path: str, ftype: str, value: Any, pos: Pos) -> None:
        if isinstance(value, YList):
            self.probs.add(pos, f"{path}: a bare list is ambiguous; write {{in: [...]}}")
            return
        if not isinstance(value, YMap):
            self.scalar(path, ftype, value, pos)
            return
        if not value:
            self.probs.add(pos, f"{path}: empty test")
            return
        for op, arg in value.items():
            apos = value.vpos[op]
            if op not in OPERATORS:
                if op == "list":
                    self.probs.add(value.kpos[op], f"{path}: write {{in: {{list: name}}}} to test a named list")
                else:
                    close = difflib.get_close_matches(str(op), OPERATORS, n=1)
                    hint = f" (did you mean {close[0]}?)" if close else ""
                    self.probs.add(value.kpos[op], f"{path}: unknown operator {op!r}{hint}")
                continue
            if op in ("eq", "ne"):
                self.scalar(path, ftype, arg, apos)
            elif op in ("in", "not_in"):
                self.members(path, ftype, arg, apos)
            elif op in ("gt", "gte", "lt", "lte"):
                if ftype not in NUMERIC_TYPES and ftype != "any":
                    self.probs.add(apos, f"{path}: {op} needs a numeric field, {path} is {ftype}")
                elif not isinstance(arg, int | float) or isinstance(arg, bool):
                    self.probs.add(apos, f"{path}: {op} expects a number, got {arg!r}")
            elif op == "range":
                ok = (
                    isinstance(arg, YList) and len(arg) == 2
                    and all(isinstance(a, int | float) and not isinstance(a, bool) for a in arg) and arg[0] <= arg[1]
                )  # fmt: skip
                if ftype not in NUMERIC_TYPES and ftype != "any":
                    self.probs.add(apos, f"{path}: range needs a numeric field, {path} is {ftype}")
                elif not ok:
                    self.probs.add(apos, f"{path}: range expects [low, high] numbers with low <= high")
            elif op in ("re", "glob"):
                if not isinstance(arg, str):
                    self.probs.add(apos, f"{path}: {op} expects a string pattern, got {arg!r}")
                elif op == "re":
                    try:
                        re.compile(arg)
                    except re.error as e:
                        self.probs.add(apos, f"{path}: bad regular expression {arg!r}: {e}")
                else:
                    fnmatch.translate(arg)
            elif op == "exists" and not isinstance(arg, bool):
                self.probs.add(apos, f"{path}: exists expects true or false, got {arg!r}")

    def scalar(self, path: str, ftype: str, value: Any, pos: Pos) -> None:
        if isinstance(value, YMap | YList) or value is None:
            self.probs.add(pos, f"{path}: expected a value, got {value!r}")
            return
        want = _type_ok(value, ftype)
        if want:
            self.probs.add(pos, f"{path}: {value!r} is the wrong type for a {ftype} field; expected {want}")
        elif path == "error.code" and value not in self.catalog.all_anomalies:
            self.probs.add(pos, f"error.code: unknown anomaly name {value!r}")

    def members(self, path: str, ftype: str, arg: Any, pos: Pos) -> None:
        items: list[tuple[Any, Pos]]
        if isinstance(arg, YMap):
            items = [(arg, pos)]
        elif isinstance(arg, YList) and arg:
            items = list(zip(arg, arg.ipos, strict=True))
        else:
            self.probs.add(pos, f"{path}: in/not_in expects a non-empty list or {{list: name}}")
            return
        for item, ipos in items:
            if isinstance(item, YMap):
                if set(item) != {"list"} or not isinstance(item["list"], str):
                    self.probs.add(ipos, f"{path}: expected {{list: name}}, got {dict(item)!r}")
                    continue
                name = item["list"]
                self.used_lists.add(name)
                if name not in self.declared:
                    self.probs.add(item.vpos["list"], f"{path}: unknown list {name!r}: declare it in requires_lists")
            else:
                self.scalar(path, ftype, item, ipos)


def _str_list(probs: _Problems, rule: YMap, key: str) -> tuple[str, ...]:
    value = rule.get(key)
    if value is None:
        return ()
    if not isinstance(value, YList) or not all(isinstance(v, str) for v in value):
        probs.add(rule.vpos[key], f"{key}: expected a list of strings")
        return ()
    return tuple(value)


def _check_keys(probs: _Problems, node: YMap, schema: Mapping[str, bool], what: str) -> None:
    for key in node:
        if key not in schema:
            close = difflib.get_close_matches(str(key), schema, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            probs.add(node.kpos[key], f"{what}: unknown key {key!r}{hint}")
    for key, required in schema.items():
        if required and key not in node:
            probs.add(node.pos, f"{what}: missing required key {key!r}")


def _threshold(probs: _Problems, node: Any, pos: Pos, check: _RuleCheck) -> Threshold | None:
    if not isinstance(node, YMap):
        probs.add(pos, "threshold: expected {count: N, seconds: S, by: [field, ...]}")
        return None
    n = len(probs.items)
    _check_keys(probs, node, THRESHOLD_KEYS, "threshold")
    count, seconds = node.get("count"), node.get("seconds")
    if "count" in node and (not isinstance(count, int) or isinstance(count, bool) or count < 1):
        probs.add(node.vpos["count"], f"threshold.count: expected a positive integer, got {count!r}")
    if "seconds" in node and (not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds <= 0):
        probs.add(node.vpos["seconds"], f"threshold.seconds: expected a positive number, got {seconds!r}")
    by: list[str] = []
    if "by" in node:
        if not isinstance(node["by"], YList):
            probs.add(node.vpos["by"], "threshold.by: expected a list of field names")
        else:
            for item, ipos in zip(node["by"], node["by"].ipos, strict=True):
                if check.path(item, ipos) is not None:
                    by.append(item)
    distinct = node.get("distinct")
    if distinct is not None:
        check.path(distinct, node.vpos["distinct"])
    if len(probs.items) > n:
        return None
    return Threshold(int(count), float(seconds), tuple(by), distinct)


def _ip_or_text(value: Any) -> bool:
    return isinstance(value, str | int) and not isinstance(value, bool)


def _tests(probs: _Problems, node: Any, pos: Pos, base: Path, check: _RuleCheck, rule_lists: set[str]) -> list[RuleTest]:
    if not isinstance(node, YList):
        probs.add(pos, "tests: expected a list of {pcap, lists, expect}")
        return []
    out: list[RuleTest] = []
    for t, tpos in zip(node, node.ipos, strict=True):
        if not isinstance(t, YMap):
            probs.add(tpos, "tests: each test is a mapping {pcap, lists, expect}")
            continue
        n = len(probs.items)
        _check_keys(probs, t, TEST_KEYS, "test")
        pcaps: list[Path] = []
        raw = t.get("pcap")
        for p, ppos in (zip(raw, raw.ipos, strict=True) if isinstance(raw, YList) else [(raw, t.vpos.get("pcap", tpos))]):
            if not isinstance(p, str):
                probs.add(ppos, f"test.pcap: expected a path relative to the rule file, got {p!r}")
            else:
                pcaps.append((base / p).resolve())
        lists: dict[str, tuple[str, ...]] = {}
        if "lists" in t:
            ln = t["lists"]
            if not isinstance(ln, YMap):
                probs.add(t.vpos["lists"], "test.lists: expected {name: [addresses or names]}")
            else:
                for name, entries in ln.items():
                    if name not in rule_lists:
                        probs.add(ln.kpos[name], f"test.lists: {name!r} is not in the rule's requires_lists")
                    if not isinstance(entries, YList) or not all(_ip_or_text(e) for e in entries):
                        probs.add(ln.vpos[name], f"test.lists.{name}: expected a list of addresses, networks or names")
                        continue
                    lists[str(name)] = tuple(str(e) for e in entries)
        count: int | None = None
        min_count: int | None = None
        match: dict[str, Any] = {}
        exp = t.get("expect")
        if "expect" in t:
            if not isinstance(exp, YMap):
                probs.add(t.vpos["expect"], "test.expect: expected {count: N, match: {field: value}}")
            else:
                _check_keys(probs, exp, EXPECT_KEYS, "test.expect")
                c = exp.get("count")
                if isinstance(c, int) and not isinstance(c, bool) and c >= 0:
                    count = c
                elif isinstance(c, YMap) and set(c) == {"gte"} and isinstance(c["gte"], int) and c["gte"] >= 1:
                    min_count = c["gte"]
                elif "count" in exp:
                    probs.add(exp.vpos["count"], f"test.expect.count: expected an integer >= 0 or {{gte: N}}, got {c!r}")
                m = exp.get("match")
                if m is not None:
                    if not isinstance(m, YMap):
                        probs.add(exp.vpos["match"], "test.expect.match: expected {document.field: value}")
                    else:
                        match = dict(m)
        if len(probs.items) == n:
            where = f"{probs.file}:{tpos[0]}"
            out.append(RuleTest(tuple(pcaps), lists, count, min_count, match, str(t.get("name", "")), where))
    return out


def _rule(probs: _Problems, node: Any, pos: Pos, catalog: Catalog, base: Path) -> Rule | None:
    if not isinstance(node, YMap):
        probs.add(pos, "each rule must be a mapping")
        return None
    n = len(probs.items)
    rid = node.get("id", "?")
    what = f"rule {rid}"
    _check_keys(probs, node, RULE_KEYS, what)

    def want_str(key: str) -> str:
        v = node.get(key)
        if key in node and (not isinstance(v, str) or not v.strip()):
            probs.add(node.vpos[key], f"{key}: expected a non-empty string")
            return ""
        return v or ""

    rid = want_str("id")
    if rid and not ID_RE.match(rid):
        probs.add(node.vpos["id"], f"id: {rid!r} is not of the form PREFIX-NAME-0001 (upper case, dashes)")
    title, description = want_str("title"), want_str("description")
    protocol = want_str("protocol")
    if protocol and protocol != ANY_PROTOCOL and protocol not in catalog.registries:
        names = ", ".join([*sorted(catalog.registries), ANY_PROTOCOL])
        probs.add(node.vpos["protocol"], f"protocol: unknown protocol {protocol!r} (known: {names})")
        protocol = ""
    severity = want_str("severity")
    if severity and severity not in SEVERITIES:
        probs.add(node.vpos["severity"], f"severity: {severity!r} is not one of {', '.join(SEVERITIES)}")
    status = node.get("status", "stable")
    if status not in STATUSES:
        probs.add(node.vpos["status"], f"status: {status!r} is not one of {', '.join(STATUSES)}")
    rev = node.get("rev", 1)
    if not isinstance(rev, int) or isinstance(rev, bool) or rev < 1:
        probs.add(node.vpos["rev"], f"rev: expected a positive integer, got {rev!r}")
    enabled = node.get("enabled", True)
    if not isinstance(enabled, bool):
        probs.add(node.vpos["enabled"], f"enabled: expected true or false, got {enabled!r}")

    version, techniques = "", ()
    att = node.get("attack")
    if "attack" in node:
        if not isinstance(att, YMap) or set(att) != {"version", "techniques"}:
            probs.add(node.vpos["attack"], 'attack: expected {version: "19" or "18", techniques: [T0xxx, ...]}')
        else:
            version = str(att["version"])
            if version not in RELEASES:
                probs.add(att.vpos["version"], f"attack.version: {version!r} is not one of {', '.join(RELEASES)}")
            tl = att["techniques"]
            if not isinstance(tl, YList) or not tl:
                probs.add(att.vpos["techniques"], "attack.techniques: expected a non-empty list of technique ids")
            else:
                for t, tpos in zip(tl, tl.ipos, strict=True):
                    if version in RELEASES and not known(version, str(t)):
                        probs.add(tpos, f"attack.techniques: unknown technique {t!r} in ATT&CK for ICS v{version}")
                techniques = tuple(str(t) for t in tl)

    requires = _str_list(probs, node, "requires_lists")
    check = _RuleCheck(probs, catalog, protocol or ANY_PROTOCOL, set(requires))
    if protocol and "match" in node:
        check.condition(node["match"], node.vpos["match"])
    threshold = None
    if protocol and "threshold" in node:
        threshold = _threshold(probs, node["threshold"], node.vpos["threshold"], check)
    exceptions: list[tuple[str, Mapping[str, Any]]] = []
    if protocol and "exceptions" in node:
        ex = node["exceptions"]
        if not isinstance(ex, YList):
            probs.add(node.vpos["exceptions"], "exceptions: expected a list of {name, match}")
        else:
            for e, epos in zip(ex, ex.ipos, strict=True):
                if not isinstance(e, YMap):
                    probs.add(epos, "exceptions: each is {name: ..., match: {...}}")
                    continue
                _check_keys(probs, e, EXCEPTION_KEYS, "exception")
                if "match" in e:
                    check.condition(e["match"], e.vpos["match"])
                exceptions.append((str(e.get("name", "")), e.get("match", YMap())))
    for name in sorted(set(requires) - check.used_lists):
        probs.add(node.vpos["requires_lists"], f"requires_lists: {name!r} is declared but no condition uses it")
    tests: list[RuleTest] = []
    if "tests" in node:
        tests = _tests(probs, node["tests"], node.vpos["tests"], base, check, set(requires))
    on_anomalies = any(p in ANOMALY_FIELDS for p in check.types)
    if protocol == ANY_PROTOCOL and not on_anomalies:
        probs.add(node.vpos.get("protocol", pos), "protocol any is only for anomaly rules (match on error.code)")
    if len(probs.items) > n:
        return None
    return Rule(
        id=rid, title=title, description=description, protocol=protocol, severity=severity,
        attack_version=version, techniques=techniques, match=node["match"], rev=rev, status=status,
        threshold=threshold, exceptions=tuple(exceptions), requires_lists=requires, enabled=enabled,
        references=_str_list(probs, node, "references"), falsepositives=_str_list(probs, node, "falsepositives"),
        tags=_str_list(probs, node, "tags"), tests=tuple(tests), on_anomalies=on_anomalies,
        field_types=dict(check.types), file=probs.file, line=pos[0],
    )  # fmt: skip


def expand_rule_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, directories as their *.yml / *.yaml files (sorted, not recursive)."""
    out: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            out += sorted(q for q in path.iterdir() if q.suffix in (".yml", ".yaml") and q.is_file())
        else:
            out.append(path)
    return out


def load_rules(paths: Iterable[str | Path], registries: Mapping[str, FieldRegistry] | None = None) -> list[Rule]:
    """Load every rule of ``paths`` (files or directories) or raise RuleLoadError with all problems."""
    catalog = Catalog(default_registries() if registries is None else registries)
    problems: list[Problem] = []
    rules: list[Rule] = []
    seen: dict[str, str] = {}
    files = expand_rule_paths(paths)
    for path in files:
        probs = _Problems(str(path))
        data = read_yaml(path, probs)
        if not probs.items:
            if data is None:
                data = YList()
                data.pos, data.ipos = Pos((1, 1)), []
            if not isinstance(data, YList):
                probs.add(getattr(data, "pos", None), "a rule file is a YAML list of rules")
            else:
                for node, pos in zip(data, data.ipos, strict=True):
                    rule = _rule(probs, node, pos, catalog, path.parent)
                    if rule is None:
                        continue
                    if rule.id in seen:
                        probs.add(node.vpos["id"], f"duplicate rule id {rule.id} (first in {seen[rule.id]})")
                        continue
                    seen[rule.id] = rule.where
                    rules.append(rule)
        problems += probs.items
    if problems:
        raise RuleLoadError(problems)
    return rules
