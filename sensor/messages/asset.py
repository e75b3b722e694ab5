"""Asset inventory fields (``ics.asset.*``): the one registry that names them for the tracker, templates and tests.

ECS carries what ECS has a name for (``host.ip``, ``host.id``, ``host.type`` = the primary role, ``host.name``,
``device.manufacturer``, ``device.model.*``, ``device.serial_number``); everything the wire revealed stays here,
under the protocol that revealed it. MQTT passwords are never kept (the decoder does not keep them either).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sensor.messages.base import Field, FieldRegistry

F = Field
ROLES = ("plc", "mqtt_broker", "engineering_workstation", "hmi", "mqtt_client", "unknown")  # priority order
ACTIVITIES = ("read", "write", "upload", "download", "control", "security", "diagnostic", "identify", "publish",
              "subscribe", "other")  # fmt: skip

REGISTRY = FieldRegistry(
    "asset",
    [
        F("role", "keyword", "Primary role: plc, mqtt_broker, engineering_workstation, hmi, mqtt_client, unknown"),
        F("roles", "keyword", "Every role the traffic showed, highest priority first"),
        F("protocols", "keyword", "Industrial protocols the asset spoke (modbus, s7comm, s7comm_plus, mqtt)"),
        F("server_ports", "long", "Ports on which the asset answered as a server (bounded)"),
        F("first_seen", "date", "Capture time of the first message to or from the asset"),
        F("last_seen", "date", "Capture time of the latest message to or from the asset"),
        F("peers", "long", "Distinct peers talked to (counted up to assets.max_peers)"),
        F("peers_capped", "boolean", "The peer count reached assets.max_peers and stopped counting"),
        F("messages_sent", "long", "Messages the asset sent"),
        F("messages_received", "long", "Messages the asset received"),
        *(F(f"activity.{a}", "long", f"Requests the asset sent as a client whose intent is {a}") for a in ACTIVITIES),
        F("modbus.unit_ids", "long", "Modbus unit ids addressed on this server, or by this client (bounded)"),
        F("modbus.vendor_name", "keyword", "FC 43/14 object 0 VendorName", "modbus.object_str_value"),
        F("modbus.product_code", "keyword", "FC 43/14 object 1 ProductCode", "modbus.object_str_value"),
        F("modbus.revision", "keyword", "FC 43/14 object 2 MajorMinorRevision", "modbus.object_str_value"),
        F("modbus.vendor_url", "keyword", "FC 43/14 object 3 VendorUrl", "modbus.object_str_value"),
        F("modbus.product_name", "keyword", "FC 43/14 object 4 ProductName", "modbus.object_str_value"),
        F("modbus.model_name", "keyword", "FC 43/14 object 5 ModelName", "modbus.object_str_value"),
        F(
            "modbus.user_application_name",
            "keyword",
            "FC 43/14 object 6 UserApplicationName",
            "modbus.object_str_value",
        ),
        F("modbus.server_id", "keyword", "FC 17 Report Server ID data in hex"),
        F("modbus.server_id_text", "keyword", "FC 17 server id as text, when it is printable ASCII"),
        F("modbus.run_indicator", "boolean", "FC 17 run indicator status"),
        F("s7comm.order_number", "keyword", "Order number (MLFB), SZL 0x0011", "s7comm.szl.xy11.0001.anz"),
        F("s7comm.module_type_id", "long", "Module type id (BGTyp), SZL 0x0011", "s7comm.szl.xy11.0001.bgtyp"),
        F("s7comm.module_version", "keyword", "Module version, SZL 0x0011 index 1", "s7comm.szl.xy11.0001.ausbg"),
        F("s7comm.firmware_version", "keyword", "Firmware version, SZL 0x0011 index 7"),
        F("s7comm.system_name", "keyword", "Automation system name, SZL 0x001c index 1"),
        F("s7comm.module_name", "keyword", "Module name, SZL 0x001c index 2"),
        F("s7comm.plant_id", "keyword", "Plant designation, SZL 0x001c index 3"),
        F("s7comm.serial_number", "keyword", "Module serial number, SZL 0x001c index 5"),
        F("s7comm.module_type_name", "keyword", "Module type name, SZL 0x001c index 7"),
        F("s7comm.memory_card_serial", "keyword", "Memory card serial number, SZL 0x001c index 8"),
        F("s7comm.location_id", "keyword", "Location designation, SZL 0x001c index 11"),
        F("s7comm.cpu_mode", "keyword", "CPU operating mode, SZL 0x0424"),
        F("s7comm.rack", "long", "Racks addressed by clients' COTP connect requests (called TSAP)"),
        F("s7comm.slot", "long", "Slots addressed by clients' COTP connect requests (called TSAP)"),
        F(
            "s7comm.tsaps",
            "keyword",
            "Called TSAPs of COTP connect requests to this server, hex (bounded)",
            "cotp.dst-tsap",
        ),
        F("s7comm.connection_types", "keyword", "Connection types this client asked for (PG, OP, S7 basic)"),
        F("mqtt.client_ids", "keyword", "MQTT client identifiers used by this host (bounded)", "mqtt.clientid"),
        F("mqtt.usernames", "keyword", "MQTT user names used by this host, never passwords (bounded)", "mqtt.username"),
        F("mqtt.protocol_versions", "keyword", "MQTT protocol versions used (3.1, 3.1.1, 5.0)"),
        F("mqtt.clients", "long", "On a broker: distinct client ids seen (bounded)"),
    ],
    {},
    action_field="role",
)


@dataclass(slots=True)
class AssetState:
    """One asset as the tracker reports it: ``fields`` are the ``ics.asset.*`` values by registry name."""

    ts: int  # capture time of the latest message to or from the asset, nanoseconds (ics.asset.last_seen)
    first: int  # capture time of the first one (ics.asset.first_seen)
    ip: str
    fields: dict[str, Any]  # without first_seen/last_seen, which the ECS mapper formats
    action: str  # discovered | changed | inventory (final, at close) | evicted (final, pushed out by the cap)
