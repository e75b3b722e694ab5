"""Index templates, component templates and ILM policies for the sensor's data streams (``ics-sensor es setup``).

ECS fields come from the generated table in es_ecs_fields.py (the sensor never reads ../shared at run time); every
``ics.<protocol>.*`` field is typed from the field registry of its decoder, so a new decoder brings its mapping.
Everything is PUT (idempotent) and safe to run from every sensor: a template installed by a newer sensor version is
left alone.
"""

from __future__ import annotations

from typing import Any

from sensor import __version__
from sensor.outputs.es_ecs_fields import ECS_VERSION, FIELDS

Mapping = dict[str, Any]
PRIORITY = 200  # above the built-in logs-*-* / metrics-*-* templates (100), like Fleet integration templates
ECS_COMPONENT = "ics_sensor-ecs@mappings"
ICS_COMPONENT = "ics_sensor-ics@mappings"
HOT_ROLLOVER = {"max_primary_shard_size": "50gb", "max_age": "30d"}

# dataset suffix -> (data stream type, ILM policy, days kept)
DATASETS: dict[str, tuple[str, str, int]] = {
    "event": ("logs", "ics_sensor-events", 180),
    "alert": ("logs", "ics_sensor-alerts", 365),
    "asset": ("logs", "ics_sensor-assets", 365),
    "stats": ("metrics", "ics_sensor-stats", 180),
}
_META = {"managed_by": "ics-sensor", "version": __version__, "ecs_version": ECS_VERSION}

# Registry types -> Elasticsearch field mappings.
_TYPES: dict[str, Mapping] = {
    "keyword": {"type": "keyword", "ignore_above": 1024},
    "long": {"type": "long"},
    "integer": {"type": "long"},
    "float": {"type": "float"},
    "double": {"type": "double"},
    "boolean": {"type": "boolean"},
    "ip": {"type": "ip"},
    "date": {"type": "date"},
    "flattened": {"type": "flattened"},
    "object": {"type": "object"},
    "text": {"type": "match_only_text"},
}

# Fields under ics.* that are not protocol fields (the mapper's own bookkeeping).
ICS_COMMON: dict[str, Mapping] = {
    "ics.frame": {"type": "long"},
    "ics.record_offset": {"type": "long"},
    "ics.alert.count": {"type": "long"},
    "ics.alert.severity": {"type": "keyword", "ignore_above": 1024},
    "ics.alert.detector": {"type": "keyword", "ignore_above": 1024},
    "ics.alert.attack_version": {"type": "keyword", "ignore_above": 1024},
    "ics.alert.details": {"type": "flattened"},
    "ics.stats": {"type": "object"},
    # counters the Kibana dashboards read (dashboards/): typed up front, the rest of ics.stats.* is dynamic
    "ics.stats.packets": {"type": "long"},
    "ics.stats.alerts": {"type": "long"},
    "ics.stats.decode_errors": {"type": "long"},
}

DYNAMIC_TEMPLATES: list[Mapping] = [
    {"labels": {"path_match": "labels.*", "match_mapping_type": "string", "mapping": {"type": "keyword", "ignore_above": 1024}}},
    {"ics_stats_long": {"path_match": "ics.stats.*", "match_mapping_type": "long", "mapping": {"type": "long"}}},
    {"ics_stats_double": {"path_match": "ics.stats.*", "match_mapping_type": "double", "mapping": {"type": "double"}}},
    {"ics_stats_string": {"path_match": "ics.stats.*", "match_mapping_type": "string", "mapping": {"type": "keyword", "ignore_above": 1024}}},
    {"strings_as_keyword": {"match_mapping_type": "string", "mapping": {"type": "keyword", "ignore_above": 1024}}},
]


def stream_name(kind: str, namespace: str) -> str:
    """``logs-ics_sensor.event-default``: the data stream for a dataset suffix and namespace."""
    typ = DATASETS[kind][0]
    return f"{typ}-ics_sensor.{kind}-{namespace}"


def nest(flat: dict[str, Mapping]) -> Mapping:
    """Dotted field names -> nested ``properties`` (``a.b`` -> ``{a: {properties: {b: ...}}}``)."""
    root: Mapping = {}
    for path in sorted(flat):
        parts = path.split(".")
        node = root
        for p in parts[:-1]:
            node = node.setdefault(p, {}).setdefault("properties", {})
        leaf = node.setdefault(parts[-1], {})
        leaf.update(flat[path])
    return root


def ecs_fields() -> dict[str, Mapping]:
    fields = {k: dict(v) for k, v in FIELDS.items()}
    fields["@timestamp"] = {"type": "date_nanos"}  # capture time keeps its nanoseconds (ECS type date, same values)
    return fields


def ics_fields(registries: dict[str, Any] | None = None) -> dict[str, Mapping]:
    """``ics.*`` fields: the common ones plus every field of every decoder's registry."""
    if registries is None:
        from sensor.protocols import registry

        registries = {n: registry.create(n).registry for n in registry.names()}
    from sensor.messages.asset import REGISTRY as ASSET_REGISTRY  # ics.asset.*: the inventory's own registry

    fields = {k: dict(v) for k, v in ICS_COMMON.items()}
    for reg in (*registries.values(), ASSET_REGISTRY):
        for path, f in reg.paths().items():
            if f.type not in _TYPES:
                raise ValueError(f"{path}: registry type {f.type!r} has no Elasticsearch mapping")
            fields[path] = dict(_TYPES[f.type])
    return fields


def component_templates(registries: dict[str, Any] | None = None) -> dict[str, Mapping]:
    comps: dict[str, Mapping] = {
        ECS_COMPONENT: {
            "template": {"mappings": {"properties": nest(ecs_fields())}},
            "_meta": {**_META, "description": "ECS fields written by ics-sensor"},
        },
        ICS_COMPONENT: {
            "template": {
                "mappings": {"dynamic_templates": DYNAMIC_TEMPLATES, "properties": nest(ics_fields(registries))}
            },
            "_meta": {**_META, "description": "ics.* protocol fields, typed from the decoders' field registries"},
        },
    }
    for kind, (typ, policy, _days) in DATASETS.items():
        comps[f"{typ}-ics_sensor.{kind}@settings"] = {
            "template": {"settings": {"index": {"lifecycle": {"name": policy}, "mapping": {"total_fields": {"limit": 5000}}}}},
            "_meta": {**_META, "description": f"ILM policy of {typ}-ics_sensor.{kind}-*"},
        }
    return comps


def index_templates() -> dict[str, Mapping]:
    out: dict[str, Mapping] = {}
    for kind, (typ, _policy, _days) in DATASETS.items():
        name = f"{typ}-ics_sensor.{kind}"
        custom = f"{name}@custom"  # site additions (extra settings, runtime fields): created by the operator, kept
        out[name] = {
            "index_patterns": [f"{name}-*"],
            "data_stream": {},
            "priority": PRIORITY,
            "composed_of": [ECS_COMPONENT, ICS_COMPONENT, f"{name}@settings", custom],
            "ignore_missing_component_templates": [custom],
            "allow_auto_create": True,
            "_meta": {**_META, "description": f"ics-sensor {kind} documents"},
        }
    return out


def ilm_policies() -> dict[str, Mapping]:
    return {
        policy: {
            "_meta": {**_META, "description": f"hot with rollover at 50gb per primary shard or 30 days, delete after {days} days"},
            "phases": {
                "hot": {"min_age": "0ms", "actions": {"rollover": dict(HOT_ROLLOVER)}},
                "delete": {"min_age": f"{days}d", "actions": {"delete": {}}},
            },
        }
        for _kind, (_typ, policy, days) in DATASETS.items()
    }


def _version_tuple(v: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in v.split(".")[:3])
    except ValueError:
        return (0,)


def installed_version(client: Any, name: str) -> str | None:
    """The ics-sensor version recorded in an installed index template's _meta, or None."""
    resp = client.options(ignore_status=404).indices.get_index_template(name=name)
    for it in resp.body.get("index_templates", []) if resp.meta.status == 200 else []:
        meta = it.get("index_template", {}).get("_meta") or {}
        if meta.get("managed_by") == "ics-sensor":
            return str(meta.get("version"))
    return None


def install(client: Any, registries: dict[str, Any] | None = None, force: bool = False) -> list[str]:
    """PUT policies, component templates and index templates; returns what was done, one line each."""
    done: list[str] = []
    newer = [
        (n, v) for n in index_templates()
        if (v := installed_version(client, n)) and _version_tuple(v) > _version_tuple(__version__)
    ]  # fmt: skip
    if newer and not force:
        return [f"skipped: {n} was installed by ics-sensor {v}, newer than {__version__} (use --force)" for n, v in newer]
    for name, body in ilm_policies().items():
        client.ilm.put_lifecycle(name=name, policy=body)
        done.append(f"ilm policy {name}")
    for name, body in component_templates(registries).items():
        client.cluster.put_component_template(name=name, template=body["template"], meta=body["_meta"])
        done.append(f"component template {name}")
    for name, body in index_templates().items():
        client.indices.put_index_template(
            name=name, index_patterns=body["index_patterns"], data_stream=body["data_stream"],
            priority=body["priority"], composed_of=body["composed_of"],
            ignore_missing_component_templates=body["ignore_missing_component_templates"],
            allow_auto_create=body["allow_auto_create"], meta=body["_meta"],
        )  # fmt: skip
        done.append(f"index template {name}")
    return done


def check(client: Any) -> dict[str, Any]:
    """What is installed: templates and policies present or missing, with the version that installed them."""
    missing: list[str] = []
    present: dict[str, str | None] = {}
    for name in index_templates():
        v = installed_version(client, name)
        if v is None:
            missing.append(f"index template {name}")
        else:
            present[f"index template {name}"] = v
    for name in component_templates():
        if client.options(ignore_status=404).cluster.get_component_template(name=name).meta.status != 200:
            missing.append(f"component template {name}")
        else:
            present[f"component template {name}"] = None
    for name in ilm_policies():
        if client.options(ignore_status=404).ilm.get_lifecycle(name=name).meta.status != 200:
            missing.append(f"ilm policy {name}")
        else:
            present[f"ilm policy {name}"] = None
    return {"present": present, "missing": missing}
