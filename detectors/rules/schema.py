"""What a rule file may contain: rule keys, condition operators and the non-protocol fields rules can name.

Why one module: the loader validates against these tables, the compiler implements exactly these operators and
`rules lint` documents them, so adding an operator or an ECS field is a change in one place.
"""

from __future__ import annotations

# Top-level keys of a rule and whether they are required.
RULE_KEYS: dict[str, bool] = {
    "id": True,
    "rev": False,
    "status": False,
    "title": True,
    "description": True,
    "protocol": True,
    "severity": True,
    "attack": True,
    "match": True,
    "threshold": False,
    "exceptions": False,
    "requires_lists": False,
    "enabled": False,
    "falsepositives": False,
    "references": False,
    "tags": False,
    "tests": False,
}
SEVERITIES = ("low", "medium", "high", "critical")
STATUSES = ("experimental", "test", "stable", "deprecated")
ANY_PROTOCOL = "any"  # anomaly rules that apply to every decoder (error.code of any protocol)

# Leaf operators: name -> what the value must be (checked by the loader, implemented by the compiler).
OPERATORS = ("eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "range", "re", "glob", "exists")
BOOLEAN_KEYS = ("any", "all", "not")
NUMERIC_TYPES = ("long", "float", "double", "integer", "short", "byte", "unsigned_long")
OPEN_TYPES = ("flattened", "object")  # sub-paths below these are accepted (ics.modbus.objects.vendor_name)

# ECS fields every message or anomaly document carries, readable from the Message/Anomaly without building the
# document. Anomaly-only fields make a rule an anomaly rule (it is evaluated on decode errors, not messages).
ECS_FIELDS: dict[str, str] = {
    "source.ip": "ip",
    "source.port": "long",
    "destination.ip": "ip",
    "destination.port": "long",
    "client.ip": "ip",
    "client.port": "long",
    "server.ip": "ip",
    "server.port": "long",
    "network.protocol": "keyword",
    "network.transport": "keyword",
    "network.community_id": "keyword",
    "event.duration": "long",
    "error.code": "keyword",
    "error.message": "keyword",
}
ANOMALY_FIELDS = frozenset({"error.code", "error.message"})

THRESHOLD_KEYS: dict[str, bool] = {"count": True, "seconds": True, "by": False, "distinct": False}
TEST_KEYS: dict[str, bool] = {"pcap": True, "lists": False, "expect": True, "name": False}
EXPECT_KEYS: dict[str, bool] = {"count": True, "match": False}
EXCEPTION_KEYS: dict[str, bool] = {"name": True, "match": True}

# The fields each protocol's rules are indexed by (nested, in this order), when a rule pins them with an
# equality or `in` at top level: a write rule is never evaluated on a read poll, a request rule never on a response.
INDEX_FIELDS: dict[str, tuple[str, ...]] = {
    "modbus": ("function_code", "is_request"),
    "s7comm": ("function", "is_request"),
    "mqtt": ("msgtype",),
}
