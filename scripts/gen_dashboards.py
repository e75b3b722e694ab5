"""Generate dashboards/ics_sensor.ndjson: the Kibana 8 saved objects of the sensor (data views, Lens, searches, dashboards).

    python scripts/gen_dashboards.py [--out dashboards/ics_sensor.ndjson]

One file, imported in one step (``ics-sensor es setup --kibana URL`` or Stack Management > Saved objects > Import).
Ids are fixed, so a re-import with overwrite replaces the objects. The objects state Kibana 8.8 migration versions;
Kibana migrates them forward on import. tests/test_dashboards.py checks that every field used exists in the mappings
``es setup`` installs, and that this file is what the script generates.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "dashboards" / "ics_sensor.ndjson"
CORE = "8.8.0"
Obj = dict[str, Any]

DATA_VIEWS = {  # id -> (title pattern, name)
    "ics-sensor-alerts": ("logs-ics_sensor.alert-*", "ICS sensor alerts"),
    "ics-sensor-events": ("logs-ics_sensor.event-*", "ICS sensor protocol events"),
    "ics-sensor-assets": ("logs-ics_sensor.asset-*", "ICS sensor assets"),
    "ics-sensor-stats": ("metrics-ics_sensor.stats-*", "ICS sensor statistics"),
}


def data_view(vid: str) -> Obj:
    title, name = DATA_VIEWS[vid]
    return {
        "id": vid, "type": "index-pattern", "coreMigrationVersion": CORE, "typeMigrationVersion": "8.0.0",
        "attributes": {"title": title, "name": name, "timeFieldName": "@timestamp", "fieldFormatMap": "{}",
                       "runtimeFieldMap": "{}", "sourceFilters": "[]", "fieldAttrs": "{}", "typeMeta": "{}"},
        "references": [],
    }  # fmt: skip


# -- Lens columns ----------------------------------------------------------------------------------------------
def c_date(label: str = "@timestamp") -> Obj:
    return {"label": label, "dataType": "date", "operationType": "date_histogram", "sourceField": "@timestamp",
            "isBucketed": True, "scale": "interval",
            "params": {"interval": "auto", "includeEmptyRows": True, "dropPartials": False}}  # fmt: skip


def c_count(label: str = "Count") -> Obj:
    return {"label": label, "dataType": "number", "operationType": "count", "isBucketed": False, "scale": "ratio",
            "sourceField": "___records___", "params": {"emptyAsNull": True}, "customLabel": True}  # fmt: skip


def c_terms(field: str, label: str, order_by: str, size: int = 10, dtype: str = "string") -> Obj:
    return {"label": label, "dataType": dtype, "operationType": "terms", "scale": "ordinal", "sourceField": field,
            "isBucketed": True, "customLabel": True,
            "params": {"size": size, "orderBy": {"type": "column", "columnId": order_by}, "orderDirection": "desc",
                       "otherBucket": True, "missingBucket": False, "parentFormat": {"id": "terms"}}}  # fmt: skip


def c_last(field: str, label: str, dtype: str = "string") -> Obj:
    return {"label": label, "dataType": dtype, "operationType": "last_value", "isBucketed": False, "scale": "ordinal",
            "sourceField": field, "customLabel": True,
            "params": {"sortField": "@timestamp", "showArrayValues": True}}  # fmt: skip


def c_max(field: str, label: str, dtype: str = "number") -> Obj:
    return {"label": label, "dataType": dtype, "operationType": "max", "isBucketed": False, "scale": "ratio",
            "sourceField": field, "customLabel": True, "params": {"emptyAsNull": True}}  # fmt: skip


def c_unique(field: str, label: str) -> Obj:
    return {"label": label, "dataType": "number", "operationType": "unique_count", "isBucketed": False,
            "scale": "ratio", "sourceField": field, "customLabel": True, "params": {"emptyAsNull": True}}  # fmt: skip


# -- Lens visualizations ---------------------------------------------------------------------------------------
def lens(
    lid: str, title: str, dv: str, vis_type: str, cols: dict[str, Obj], vis: Obj, query: str = "", description: str = ""
) -> Obj:
    layer = "l1"
    vis = {"layerId": layer, "layerType": "data", **vis} if vis_type != "lnsXY" else vis
    return {
        "id": lid, "type": "lens", "coreMigrationVersion": CORE, "typeMigrationVersion": "8.6.0",
        "attributes": {
            "title": title, "description": description, "visualizationType": vis_type,
            "state": {
                "datasourceStates": {"formBased": {"layers": {layer: {"columns": cols, "columnOrder": list(cols), "incompleteColumns": {}}}}},
                "visualization": vis, "query": {"query": query, "language": "kuery"}, "filters": [],
                "internalReferences": [], "adHocDataViews": {},
            },
        },
        "references": [{"type": "index-pattern", "id": dv, "name": f"indexpattern-datasource-layer-{layer}"}],
    }  # fmt: skip


def xy(series: str, x: str, ys: list[str], split: str | None = None) -> Obj:
    layer: Obj = {"layerId": "l1", "layerType": "data", "seriesType": series, "xAccessor": x, "accessors": ys,
                  "position": "top", "showGridlines": False}  # fmt: skip
    if split:
        layer["splitAccessor"] = split
    return {"legend": {"isVisible": True, "position": "right"}, "valueLabels": "hide", "preferredSeriesType": series,
            "fittingFunction": "None", "layers": [layer]}  # fmt: skip


def over_time(
    lid: str, title: str, dv: str, split_field: str, split_label: str, query: str = "", dtype: str = "string"
) -> Obj:
    cols = {"t": c_date(), "s": c_terms(split_field, split_label, "n", 10, dtype), "n": c_count()}
    return lens(lid, title, dv, "lnsXY", cols, xy("bar_stacked", "t", ["n"], "s"), query)


def top(
    lid: str, title: str, dv: str, field: str, label: str, query: str = "", size: int = 10, dtype: str = "string"
) -> Obj:
    cols = {"k": c_terms(field, label, "n", size, dtype), "n": c_count()}
    return lens(lid, title, dv, "lnsXY", cols, xy("bar_horizontal", "k", ["n"]), query)


def table(lid: str, title: str, dv: str, cols: dict[str, Obj], query: str = "") -> Obj:
    return lens(lid, title, dv, "lnsDatatable", cols, {"columns": [{"columnId": c} for c in cols]}, query)


def talkers(lid: str, title: str, query: str) -> Obj:
    cols = {"s": c_terms("source.ip", "Client", "n", 50, "ip"), "d": c_terms("destination.ip", "Server", "n", 50, "ip"),
            "n": c_count("Requests")}  # fmt: skip
    return table(lid, title, "ics-sensor-events", cols, query)


def metric(lid: str, title: str, dv: str, col: Obj, query: str = "") -> Obj:
    return lens(lid, title, dv, "lnsMetric", {"m": col}, {"metricAccessor": "m"}, query)


def search(sid: str, title: str, dv: str, columns: list[str], query: str = "") -> Obj:
    source = {"query": {"query": query, "language": "kuery"}, "filter": [], "highlightAll": True,
              "indexRefName": "kibanaSavedObjectMeta.searchSourceJSON.index"}  # fmt: skip
    return {
        "id": sid, "type": "search", "coreMigrationVersion": CORE, "typeMigrationVersion": "8.0.0",
        "attributes": {"title": title, "description": "", "columns": columns, "sort": [["@timestamp", "desc"]],
                       "kibanaSavedObjectMeta": {"searchSourceJSON": json.dumps(source)}},
        "references": [{"name": "kibanaSavedObjectMeta.searchSourceJSON.index", "type": "index-pattern", "id": dv}],
    }  # fmt: skip


def dashboard(did: str, title: str, description: str, panels: list[tuple[Obj, int, int, int, int]]) -> Obj:
    """``panels``: (saved object, x, y, w, h) on Kibana's 48-column grid, embedded by reference."""
    pj, refs = [], []
    for i, (obj, x, y, w, h) in enumerate(panels):
        pid = f"p{i}"
        pj.append({"version": CORE, "type": obj["type"], "gridData": {"x": x, "y": y, "w": w, "h": h, "i": pid},
                   "panelIndex": pid, "embeddableConfig": {"enhancements": {}}, "panelRefName": f"panel_{pid}"})  # fmt: skip
        refs.append({"name": f"{pid}:panel_{pid}", "type": obj["type"], "id": obj["id"]})
    return {
        "id": did, "type": "dashboard", "coreMigrationVersion": CORE, "typeMigrationVersion": "8.7.0",
        "attributes": {
            "title": title, "description": description, "version": 1, "timeRestore": False,
            "panelsJSON": json.dumps(pj),
            "optionsJSON": json.dumps({"useMargins": True, "syncColors": False, "syncCursor": True, "syncTooltips": False, "hidePanelTitles": False}),
            "kibanaSavedObjectMeta": {"searchSourceJSON": json.dumps({"query": {"query": "", "language": "kuery"}, "filter": []})},
        },
        "references": refs,
    }  # fmt: skip


def objects() -> list[Obj]:
    A, E, S, T = "ics-sensor-alerts", "ics-sensor-events", "ics-sensor-assets", "ics-sensor-stats"
    out: list[Obj] = [data_view(v) for v in DATA_VIEWS]

    # Fleet overview
    sev_time = over_time(
        "ics-sensor-alerts-by-severity", "Alerts by severity over time", A, "ics.alert.severity", "Severity"
    )
    site_time = over_time("ics-sensor-alerts-by-site", "Alerts by site over time", A, "labels.site", "Site")
    site_sev = table("ics-sensor-alerts-site-severity", "Alerts per site and severity", A, {
        "s": c_terms("labels.site", "Site", "n", 50), "v": c_terms("ics.alert.severity", "Severity", "n", 4),
        "n": c_count("Alerts")})  # fmt: skip
    sensors = table("ics-sensor-sensors", "Sensors and their last heartbeat", T, {
        "o": c_terms("observer.name", "Sensor", "h", 200), "h": c_max("@timestamp", "Last heartbeat", "date"),
        "s": c_last("labels.site", "Site"), "v": c_last("observer.version", "Version"),
        "p": c_last("ics.stats.packets", "Packets (last report)", "number"),
        "a": c_last("ics.stats.alerts", "Alerts (last report)", "number"),
        "e": c_last("ics.stats.decode_errors", "Decode errors (last report)", "number")})  # fmt: skip
    alerts_total = metric("ics-sensor-alerts-count", "Alerts", A, c_count("Alerts"))
    hosts_total = metric("ics-sensor-assets-count", "Hosts seen", S, c_unique("host.id", "Hosts"))
    fleet = [alerts_total, hosts_total, sev_time, site_time, site_sev, sensors]
    out += fleet
    out.append(dashboard("ics-sensor-fleet", "[ICS sensor] Fleet overview", "Alerts by site and severity, sensors and their heartbeat.", [
        (alerts_total, 0, 0, 12, 8), (hosts_total, 12, 0, 12, 8), (sensors, 24, 0, 24, 16),
        (sev_time, 0, 8, 24, 14), (site_time, 24, 16, 24, 14), (site_sev, 0, 22, 24, 14)]))  # fmt: skip

    # Alert triage
    rules = table("ics-sensor-top-rules", "Top rules", A, {
        "r": c_terms("rule.id", "Rule", "n", 20), "m": c_last("rule.name", "Name"),
        "v": c_last("ics.alert.severity", "Severity"), "n": c_count("Alerts"),
        "c": c_max("ics.alert.count", "Largest aggregated count")})  # fmt: skip
    sources = top("ics-sensor-top-sources", "Top alert sources", A, "source.ip", "Source", size=15, dtype="ip")
    dests = top("ics-sensor-top-targets", "Top alert targets", A, "destination.ip", "Destination", size=15, dtype="ip")
    techniques = table("ics-sensor-attack-techniques", "ATT&CK for ICS techniques", A, {
        "t": c_terms("threat.technique.id", "Technique", "n", 30), "m": c_last("threat.technique.name", "Name"),
        "a": c_last("threat.tactic.name", "Tactic"), "n": c_count("Alerts")})  # fmt: skip
    detectors = top("ics-sensor-alert-detectors", "Alerts by detector", A, "ics.alert.detector", "Detector")
    latest = search("ics-sensor-latest-alerts", "Latest alerts", A, [
        "ics.alert.severity", "rule.id", "rule.name", "source.ip", "destination.ip", "destination.port", "network.protocol",
        "event.action", "threat.technique.id", "ics.alert.count", "observer.name", "labels.site", "message"])  # fmt: skip
    triage = [rules, sources, dests, techniques, detectors, latest]
    out += triage
    out.append(dashboard("ics-sensor-triage", "[ICS sensor] Alert triage", "Top rules, sources and ATT&CK for ICS techniques; latest alerts.", [
        (sev_time, 0, 0, 32, 12), (detectors, 32, 0, 16, 12), (rules, 0, 12, 24, 16), (techniques, 24, 12, 24, 16),
        (sources, 0, 28, 24, 14), (dests, 24, 28, 24, 14), (latest, 0, 42, 48, 24)]))  # fmt: skip

    # Modbus
    mq = "network.protocol : modbus"
    mb_fc = top("ics-sensor-modbus-functions", "Modbus requests by function", E, "ics.modbus.function_name", "Function",
                f"{mq} and ics.modbus.is_request : true", 25)  # fmt: skip
    mb_writes = over_time("ics-sensor-modbus-writes", "Modbus writes over time, by client", E, "source.ip", "Client",
                          f"{mq} and ics.modbus.is_request : true and ics.modbus.access : (write or read_write)", "ip")  # fmt: skip
    mb_targets = table("ics-sensor-modbus-write-targets", "Modbus write targets", E, {
        "s": c_terms("source.ip", "Client", "n", 20, "ip"), "d": c_terms("destination.ip", "Server", "n", 20, "ip"),
        "u": c_terms("ics.modbus.unit_id", "Unit", "n", 20, "number"), "t": c_terms("ics.modbus.table", "Table", "n", 5),
        "r": c_terms("ics.modbus.reference_number", "Address", "n", 50, "number"), "n": c_count("Writes")},
        f"{mq} and ics.modbus.is_request : true and ics.modbus.access : (write or read_write)")  # fmt: skip
    mb_talk = talkers(
        "ics-sensor-modbus-talkers", "Modbus: who talks to whom", f"{mq} and ics.modbus.is_request : true"
    )
    mb_exc = top("ics-sensor-modbus-exceptions", "Modbus exception responses", E, "ics.modbus.exception_name", "Exception",
                 f"{mq} and ics.modbus.is_exception : true")  # fmt: skip
    modbus = [mb_fc, mb_writes, mb_targets, mb_talk, mb_exc]
    out += modbus
    out.append(dashboard("ics-sensor-modbus", "[ICS sensor] Modbus/TCP", "Function codes, writes and who talks to whom.", [
        (mb_fc, 0, 0, 24, 16), (mb_talk, 24, 0, 24, 16), (mb_writes, 0, 16, 48, 12), (mb_targets, 0, 28, 32, 16),
        (mb_exc, 32, 28, 16, 16)]))  # fmt: skip

    # S7comm
    sq = "network.protocol : s7comm"
    s7_fn = top("ics-sensor-s7-functions", "S7 requests by function", E, "ics.s7comm.function_name", "Function",
                f"{sq} and ics.s7comm.is_request : true", 25)  # fmt: skip
    s7_access = over_time("ics-sensor-s7-access", "S7 requests by intent over time", E, "ics.s7comm.access", "Intent",
                          f"{sq} and ics.s7comm.is_request : true")  # fmt: skip
    s7_changes = table("ics-sensor-s7-changes", "S7 writes, transfers, PI services and security functions", E, {
        "s": c_terms("source.ip", "Client", "n", 20, "ip"), "d": c_terms("destination.ip", "PLC", "n", 20, "ip"),
        "f": c_terms("ics.s7comm.function_name", "Function", "n", 20), "n": c_count("Requests")},
        f"{sq} and ics.s7comm.is_request : true and ics.s7comm.access : (write or download or upload or control or security or program)")  # fmt: skip
    s7_szl = top("ics-sensor-s7-szl", "SZL lists read", E, "ics.s7comm.szl_id_name", "SZL list",
                 f"{sq} and ics.s7comm.is_request : true")  # fmt: skip
    s7_talk = talkers("ics-sensor-s7-talkers", "S7: who talks to whom", f"{sq} and ics.s7comm.is_request : true")
    s7 = [s7_fn, s7_access, s7_changes, s7_szl, s7_talk]
    out += s7
    out.append(dashboard("ics-sensor-s7comm", "[ICS sensor] S7comm", "S7 functions, writes, program transfers, PI services and who talks to whom.", [
        (s7_fn, 0, 0, 24, 16), (s7_talk, 24, 0, 24, 16), (s7_access, 0, 16, 48, 12), (s7_changes, 0, 28, 32, 16),
        (s7_szl, 32, 28, 16, 16)]))  # fmt: skip

    # MQTT
    qq = "network.protocol : mqtt"
    mq_types = top("ics-sensor-mqtt-types", "MQTT packet types", E, "ics.mqtt.msgtype_name", "Packet type", qq, 16)
    mq_topics = table("ics-sensor-mqtt-topics", "MQTT topics published", E, {
        "t": c_terms("ics.mqtt.topic", "Topic", "n", 50), "c": c_unique("ics.mqtt.clientid", "Publishers"),
        "n": c_count("Publishes")},
        f"{qq} and ics.mqtt.msgtype : 3")  # fmt: skip
    mq_clients = table("ics-sensor-mqtt-clients", "MQTT clients", E, {
        "i": c_terms("ics.mqtt.clientid", "Client id", "n", 100), "s": c_last("source.ip", "Host", "ip"),
        "u": c_last("ics.mqtt.username", "User"), "v": c_last("ics.mqtt.protocol_version_name", "Version"),
        "n": c_count("Messages")}, f"{qq} and ics.mqtt.clientid : *")  # fmt: skip
    mq_refused = top("ics-sensor-mqtt-errors", "MQTT refusals and errors", E, "ics.mqtt.conack_val_name", "CONNACK",
                     f"{qq} and ics.mqtt.is_error : true")  # fmt: skip
    mq_subs = top("ics-sensor-mqtt-subscriptions", "MQTT subscription filters", E, "ics.mqtt.topics", "Filter",
                  f"{qq} and ics.mqtt.msgtype : 8", 25)  # fmt: skip
    mqtt = [mq_types, mq_topics, mq_clients, mq_refused, mq_subs]
    out += mqtt
    out.append(dashboard("ics-sensor-mqtt", "[ICS sensor] MQTT", "Packet types, topics, clients and refusals.", [
        (mq_types, 0, 0, 16, 16), (mq_clients, 16, 0, 32, 16), (mq_topics, 0, 16, 32, 16), (mq_subs, 32, 16, 16, 16),
        (mq_refused, 0, 32, 24, 12)]))  # fmt: skip

    # Asset inventory
    roles = top("ics-sensor-asset-roles", "Hosts by role", S, "host.type", "Role")
    protos = top("ics-sensor-asset-protocols", "Hosts by protocol", S, "ics.asset.protocols", "Protocol")
    inventory = table("ics-sensor-asset-inventory", "Asset inventory (latest document per host)", S, {
        "h": c_terms("host.ip", "Host", "l", 500, "ip"), "r": c_last("host.type", "Role"),
        "p": c_last("ics.asset.protocols", "Protocols"), "v": c_last("device.manufacturer", "Vendor"),
        "m": c_last("device.model.identifier", "Model / order number"), "n": c_last("device.model.name", "Model name"),
        "f": c_last("ics.asset.s7comm.firmware_version", "Firmware"), "u": c_last("ics.asset.modbus.unit_ids", "Modbus units", "number"),
        "q": c_last("ics.asset.mqtt.client_ids", "MQTT client ids"), "e": c_last("ics.asset.peers", "Peers", "number"),
        "l": c_max("ics.asset.last_seen", "Last seen", "date")})  # fmt: skip
    asset_docs = search("ics-sensor-asset-documents", "Asset documents", S, [
        "host.ip", "host.type", "ics.asset.roles", "ics.asset.protocols", "device.manufacturer", "device.model.identifier",
        "ics.asset.s7comm.order_number", "ics.asset.s7comm.rack", "ics.asset.s7comm.slot", "ics.asset.mqtt.usernames",
        "ics.asset.first_seen", "event.action", "observer.name"])  # fmt: skip
    assets = [roles, protos, inventory, asset_docs]
    out += assets
    out.append(dashboard("ics-sensor-assets", "[ICS sensor] Asset inventory", "Hosts, inferred roles and what the wire revealed about them.", [
        (hosts_total, 0, 0, 12, 8), (roles, 12, 0, 18, 12), (protos, 30, 0, 18, 12), (inventory, 0, 12, 48, 20),
        (asset_docs, 0, 32, 48, 20)]))  # fmt: skip
    return out


def render() -> str:
    return "".join(json.dumps(o, sort_keys=True, separators=(",", ":")) + "\n" for o in objects())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(render(), encoding="utf-8")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
