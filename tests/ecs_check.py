"""Check documents against the ECS field list (../shared/ecs/ecs_flat.yml) and the protocol field registries."""

from __future__ import annotations

import functools
import ipaddress
import re
from pathlib import Path
from typing import Any

import yaml

from sensor.messages import FieldRegistry

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


@functools.cache
def ecs_fields(path: Path) -> dict[str, dict[str, Any]]:
    return yaml.safe_load(path.read_text())


def _flatten(doc: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in doc.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and key != "labels":
            out.extend(_flatten(v, key + "."))
        else:
            out.append((key, v))
    return out


def _type_ok(es_type: str, value: Any) -> bool:
    values = value if isinstance(value, list) else [value]
    for v in values:
        if es_type in ("keyword", "constant_keyword", "wildcard", "match_only_text", "text"):
            ok = isinstance(v, str)
        elif es_type == "long":
            ok = isinstance(v, int) and not isinstance(v, bool)
        elif es_type in ("float", "scaled_float", "double"):
            ok = isinstance(v, int | float) and not isinstance(v, bool)
        elif es_type == "boolean":
            ok = isinstance(v, bool)
        elif es_type == "ip":
            try:
                ipaddress.ip_address(v)
                ok = True
            except (ValueError, TypeError):
                ok = False
        elif es_type in ("date", "date_nanos"):
            ok = isinstance(v, str) and bool(ISO.match(v))
        elif es_type in ("object", "flattened"):
            ok = isinstance(v, dict)
        else:
            ok = False
        if not ok:
            return False
    return True


def check_document(doc: dict[str, Any], ecs_path: Path, registries: dict[str, FieldRegistry]) -> list[str]:
    """Problems with one document: non-ECS fields outside ics.*, wrong ECS types, unregistered ics fields."""
    ecs = ecs_fields(ecs_path)
    problems = []
    for key, value in _flatten(doc):
        if key.startswith("ics."):
            parts = key.split(".")
            reg = registries.get(parts[1])
            if reg is None:
                continue  # sensor-level ics fields (frame, record_offset, stats, alert) are typed by the templates
            name = ".".join(parts[2:])
            field = reg.fields.get(name) or reg.fields.get(parts[2])
            if field is None:
                problems.append(f"{key}: not in the {parts[1]} field registry")
            elif field.type not in ("object", "flattened") and not _type_ok(field.type, value):
                problems.append(f"{key}: {value!r} is not a {field.type} (registry)")
            continue
        spec = ecs.get(key)
        if spec is None:
            problems.append(f"{key}: not an ECS field")
        elif not _type_ok(spec["type"], value):
            problems.append(f"{key}: {value!r} is not an ECS {spec['type']}")
    return problems
