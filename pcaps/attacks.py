"""Regenerate the rule test captures in rules/tests/<protocol>/ from real peers on loopback.

Why separate from generate.py: these are attack scenarios for the rule pack (one small capture per rule, plus a
quiet capture of normal traffic and a mixed one), written next to the rules that use them. The capture helper,
servers and clients come from generate.py, so a scenario here is real pymodbus / python-snap7 / mosquitto +
paho-mqtt traffic recorded by tcpdump on `lo`.

Malformed traffic (a broken MBAP header, non-Modbus bytes on 502, malformed MQTT) is something no real peer
produces: those scenarios send hand-built bytes over a real TCP socket to the real server, and say so.

    python pcaps/attacks.py [NAME ...|all] [-v]        # needs root (tcpdump) and free ports 502/102/1883
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import generate as gen

LOG = logging.getLogger("pcaps.attacks")
ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "rules" / "tests"
ATTACKER = "127.0.0.66"  # the intruder on every protocol
ATTACKER2 = "127.0.0.67"

ATTACKS: dict[str, tuple[str, str, Callable[[gen.Run], None]]] = {}


def attack(name: str, filename: str, bpf: str) -> Callable[[Callable[[gen.Run], None]], Callable[[gen.Run], None]]:
    """Register a scenario writing rules/tests/``filename``."""

    def register(func: Callable[[gen.Run], None]) -> Callable[[gen.Run], None]:
        ATTACKS[name] = (filename, bpf, func)
        return func

    return register


# ---------------------------------------------------------------------------------------------------------
# Modbus/TCP: pymodbus server on :502 (units 1, 2), HMI 127.0.0.10, engineering workstation 127.0.0.20
# ---------------------------------------------------------------------------------------------------------

MB_BPF = "tcp port 502"


def _mbap(tid: int, unit: int, pdu: bytes, pid: int = 0, length: int | None = None) -> bytes:
    return struct.pack(">HHHB", tid, pid, len(pdu) + 1 if length is None else length, unit) + pdu


def _raw_session(source: str, frames: list[bytes], wait: float = 0.3, pause: float = 0.0) -> None:
    """Send hand-built frames on one real TCP connection to the pymodbus server and drain its answers."""
    with socket.create_connection((gen.LOOPBACK, 502), timeout=2, source_address=(source, 0)) as sock:
        sock.settimeout(wait)
        for f in frames:
            sock.sendall(f)
            if pause:
                time.sleep(pause)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                if not sock.recv(4096):
                    break
            except TimeoutError:
                break


def _hmi_poll(run: gen.Run, cycles: int, period: float = 0.2) -> None:
    hmi = gen._modbus_client(gen.MODBUS_HMI)
    for cycle in range(cycles):
        for unit in gen.MODBUS_UNITS:
            with run.op(f"hmi poll {cycle} unit {unit} FC3"):
                hmi.read_holding_registers(0, count=10, device_id=unit)
            with run.op(f"hmi poll {cycle} unit {unit} FC4"):
                hmi.read_input_registers(0, count=8, device_id=unit)
        with run.op(f"hmi poll {cycle} FC1"):
            hmi.read_coils(0, count=16, device_id=1)
        time.sleep(period)
    hmi.close()


def _ews_work(run: gen.Run) -> None:
    """What the engineering workstation legitimately does: writes, identification, a harmless diagnostic."""
    ews = gen._modbus_client(gen.MODBUS_EWS)
    for name, call in [
        ("FC6 write setpoint", lambda: ews.write_register(10, 1234, device_id=1)),
        ("FC16 write recipe", lambda: ews.write_registers(20, [11, 22, 33], device_id=1)),
        ("FC5 write coil", lambda: ews.write_coil(3, True, device_id=1)),
        ("FC17 report server id", ews.report_device_id),
        ("FC43/14 read device id", lambda: ews.read_device_information(read_code=1)),
        ("FC8/0 return query data", lambda: ews.diag_query_data(b"\x12\x34")),
    ]:
        with run.op(f"ews {name}"):
            call()
    ews.close()


def _mb_writes(run: gen.Run) -> None:
    bad = gen._modbus_client(ATTACKER)
    for name, call in [
        ("FC5 write single coil", lambda: bad.write_coil(0, True, device_id=1)),
        ("FC6 write single register", lambda: bad.write_register(10, 9999, device_id=1)),
        ("FC15 write multiple coils", lambda: bad.write_coils(0, [True] * 8, device_id=1)),
        ("FC16 write multiple registers", lambda: bad.write_registers(20, [0, 0, 0, 0], device_id=1)),
        ("FC22 mask write register", lambda: bad.mask_write_register(address=21, and_mask=0, or_mask=0xFFFF)),
        ("FC23 read/write registers", lambda: bad.readwrite_registers(read_address=0, read_count=2, write_address=30, values=[1, 2])),
    ]:
        with run.op(f"attacker {name}"):
            call()
    bad.close()


def _mb_diagnostics(run: gen.Run) -> None:
    bad = gen._modbus_client(ATTACKER)
    with run.op("attacker FC8/1 restart communications"):
        bad.diag_restart_communication(False)
    with run.op("attacker FC8/10 clear counters"):
        bad.diag_clear_counters()
    with run.op("attacker FC8/4 force listen only mode (no response expected)"):
        bad.diag_force_listen_only()
    time.sleep(0.2)
    bad.close()


def _mb_identification(run: gen.Run) -> None:
    bad = gen._modbus_client(ATTACKER)
    with run.op("attacker FC17 report server id"):
        bad.report_device_id()
    with run.op("attacker FC43/14 read device id basic"):
        bad.read_device_information(read_code=1)
    with run.op("attacker FC43/14 read device id extended"):
        bad.read_device_information(read_code=3)
    bad.close()


# One plausible PDU per function code: a scanner asks each code with a minimal body.
_SCAN_PDUS = [
    bytes([1, 0, 0, 0, 1]), bytes([2, 0, 0, 0, 1]), bytes([3, 0, 0, 0, 1]), bytes([4, 0, 0, 0, 1]), bytes([7]),
    bytes([11]), bytes([12]), bytes([17]), bytes([20, 7, 6, 0, 1, 0, 0, 0, 1]), bytes([24, 0, 0]),
    bytes([43, 14, 1, 0]), bytes([41, 0]), bytes([65, 0]), bytes([90, 0]), bytes([100, 0]), bytes([125, 0]),
]  # fmt: skip


def _mb_fc_scan(run: gen.Run) -> None:
    with run.op(f"attacker function code scan: {len(_SCAN_PDUS)} codes, one raw frame each"):
        _raw_session(ATTACKER, [_mbap(0x5000 + i, 1, pdu) for i, pdu in enumerate(_SCAN_PDUS)], pause=0.02)


def _mb_unit_scan(run: gen.Run) -> None:
    with run.op("attacker unit id scan 1..20, FC3 one register each"):
        _raw_session(ATTACKER, [_mbap(0x6000 + u, u, bytes([3, 0, 0, 0, 1])) for u in range(1, 21)], pause=0.02)


def _mb_sweep(run: gen.Run) -> None:
    bad = gen._modbus_client(ATTACKER)
    for addr in range(0, 1500, 50):  # 30 distinct start addresses, most beyond the 100-register table
        with run.op(f"attacker sweep FC3 @{addr}"):
            bad.read_holding_registers(addr, count=1, device_id=1)
    bad.close()


def _mb_exceptions(run: gen.Run) -> None:
    bad = gen._modbus_client(ATTACKER)
    for i in range(12):
        with run.op(f"attacker FC3 beyond the table #{i} (illegal data address)"):
            bad.read_holding_registers(200 + i, count=4, device_id=1)
    bad.close()


def _mb_broadcast(run: gen.Run) -> None:
    bad = gen._modbus_client(ATTACKER)
    with run.op("attacker FC6 broadcast write to unit 0 (no response expected)"):
        bad.write_register(10, 0, device_id=0, no_response_expected=True)
    with run.op("attacker FC5 broadcast write to unit 0 (no response expected)"):
        bad.write_coil(1, False, device_id=0, no_response_expected=True)
    time.sleep(0.2)
    bad.close()


def _mb_malformed(run: gen.Run) -> None:
    """Hand-built bytes over a real socket: a valid read, then an MBAP with protocol id 1, then length 300."""
    good = _mbap(1, 1, bytes([3, 0, 0, 0, 2]))
    with run.op("attacker raw: valid FC3 then MBAP protocol id 0x0001"):
        _raw_session(ATTACKER, [good, _mbap(2, 1, bytes([3, 0, 0, 0, 2]), pid=1)], pause=0.1)
    with run.op("attacker raw: valid FC3 then MBAP length 300"):
        _raw_session(ATTACKER, [good, _mbap(3, 1, bytes([3, 0, 0, 0, 2]), length=300)], pause=0.1)


def _mb_not_modbus(run: gen.Run) -> None:
    with run.op("attacker raw: HTTP request to TCP 502"):
        _raw_session(ATTACKER2, [b"GET / HTTP/1.1\r\nHost: plc\r\nUser-Agent: scanner\r\n\r\n"])


def _mb_flood(run: gen.Run, n: int = 230) -> None:
    bad = gen._modbus_client(ATTACKER2)
    with run.op(f"attacker2 flood: {n} FC3 requests back to back"):
        for _ in range(n):
            bad.read_holding_registers(0, count=1, device_id=1)
    bad.close()


def _mb_inconsistent(run: gen.Run) -> None:
    """Hand-built requests the server must refuse: quantity 0 and 300, and a byte count that lies."""
    frames = [
        _mbap(0x7001, 1, bytes([3, 0, 0, 0, 0])),  # FC3 quantity 0
        _mbap(0x7002, 1, bytes([3, 0, 0, 0x01, 0x2C])),  # FC3 quantity 300 > 125
        _mbap(0x7003, 1, bytes([16, 0, 0, 0, 2, 8, 0, 1, 0, 2])),  # FC16 byte count 8 but 4 data bytes
    ]
    with run.op("attacker raw: three requests that break their layouts"):
        _raw_session(ATTACKER, frames, pause=0.05)


def _mb_duplicate_tid(run: gen.Run) -> None:
    """Hand-built: three pipelined requests with one transaction id, as a careless or spoofing tool sends."""
    frames = [_mbap(0x0BAD, 1, bytes([3, 0, i, 0, 1])) for i in range(3)]
    with run.op("attacker raw: 3 pipelined FC3 requests reusing transaction id 0x0BAD"):
        _raw_session(ATTACKER, [b"".join(frames)])


def _modbus(run: gen.Run, *steps: Callable[[gen.Run], None]) -> None:
    with gen.modbus_servers((502,)), run.capture():
        for step in steps:
            step(run)


MODBUS_ATTACKS = {
    "write-unknown-host": _mb_writes,
    "diagnostics": _mb_diagnostics,
    "identification": _mb_identification,
    "fc-scan": _mb_fc_scan,
    "unit-scan": _mb_unit_scan,
    "address-sweep": _mb_sweep,
    "exceptions": _mb_exceptions,
    "broadcast-write": _mb_broadcast,
    "malformed-mbap": _mb_malformed,
    "not-modbus": _mb_not_modbus,
    "flood": _mb_flood,
    "inconsistent-pdu": _mb_inconsistent,
    "duplicate-tid": _mb_duplicate_tid,
}
for _name, _step in MODBUS_ATTACKS.items():
    attack(f"modbus-{_name}", f"modbus/{_name}.pcap", MB_BPF)(lambda run, s=_step: _modbus(run, s))


@attack("modbus-normal", "modbus/normal.pcap", MB_BPF)
def modbus_normal(run: gen.Run) -> None:
    """Quiet capture: HMI polling both units, the engineering workstation writing and identifying the PLC."""
    _modbus(run, lambda r: _hmi_poll(r, 4), _ews_work, lambda r: _hmi_poll(r, 2))


@attack("modbus-mixed", "modbus/mixed.pcap", MB_BPF)
def modbus_mixed(run: gen.Run) -> None:
    """Normal polling in the background while every Modbus attack runs, for the end-to-end test."""
    with gen.modbus_servers((502,)), run.capture():
        stop = threading.Event()

        def poll() -> None:
            while not stop.is_set():
                _hmi_poll(run, 1, period=0.3)

        t = threading.Thread(target=poll, daemon=True)
        t.start()
        _ews_work(run)
        for step in MODBUS_ATTACKS.values():
            step(run)
            time.sleep(0.3)
        stop.set()
        t.join(10)


# ---------------------------------------------------------------------------------------------------------
# MQTT: mosquitto (allow_anonymous false, password file) with paho-mqtt peers
# ---------------------------------------------------------------------------------------------------------

MQTT_BPF = f"tcp port {gen.MQTT_PORT}"


def _mqtt_normal_peers(run: gen.Run, rounds: int) -> None:
    """Historian, controller and pump sensor doing their usual work (all known client ids, all authenticated)."""
    historian = gen.MqttPeer("historian-01", "127.0.0.70", "historian")
    controller = gen.MqttPeer("line1-controller", "127.0.0.60", "controller")
    pump = gen.MqttPeer("pump1-sensor", "127.0.0.50", "sensor-pump1")
    with run.op("historian connect, subscribe plant/#"):
        historian.connect()
        historian.subscribe("plant/#", 1)
    with run.op("controller connect, subscribe plant/+/telemetry"):
        controller.connect()
        controller.subscribe("plant/+/telemetry", 1)
    with run.op("pump1 connect, subscribe its command topic, retained status"):
        pump.connect()
        pump.subscribe("plant/pump1/cmd", 1)
        pump.publish("plant/pump1/status", "online", qos=1, retain=True)
    for i in range(rounds):
        with run.op(f"pump1 telemetry #{i}"):
            pump.publish("plant/pump1/telemetry", f'{{"flow":{12.5 + i},"rpm":{1450 + i}}}', qos=1)
    with run.op("controller command to pump1"):
        controller.publish("plant/pump1/cmd", '{"setpoint_rpm":1500}', qos=1)
    with run.op("disconnect all"):
        for peer in (pump, controller, historian):
            peer.disconnect()


def _mqtt_attacker(client_id: str = "maint-laptop", user: str = "controller", password: str | None = None) -> gen.MqttPeer:
    """The intruder on 127.0.0.66, by default with the controller's stolen credentials."""
    return gen.MqttPeer(client_id, ATTACKER, user, password=password)


def _mq_subscribe_all(run: gen.Run) -> None:
    bad = _mqtt_attacker()
    with run.op("attacker subscribe # and $SYS/#"):
        bad.connect()
        bad.subscribe("#", 0)
        bad.subscribe("$SYS/#", 0)
        time.sleep(0.2)
        bad.disconnect()


def _mq_anonymous(run: gen.Run) -> None:
    import paho.mqtt.client as mqtt

    with run.op("attacker anonymous CONNECT (no user name; refusal expected)") as notes:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="anon-probe", reconnect_on_failure=False)
        done = threading.Event()
        client.on_connect = lambda *a: done.set()
        client.connect(gen.LOOPBACK, gen.MQTT_PORT, 30, bind_address=ATTACKER)
        client.loop_start()
        done.wait(5)
        client.loop_stop()
        client.disconnect()
        notes.append("refused")


def _mq_brute_force(run: gen.Run) -> None:
    for i in range(6):
        with run.op(f"attacker2 login as controller, guess #{i} (refusal expected)") as notes:
            try:
                gen.MqttPeer("line1-controller", ATTACKER2, "controller", password=f"guess{i}").connect()
            except PermissionError as exc:
                notes.append(str(exc))


def _mq_command_publish(run: gen.Run) -> None:
    pump = gen.MqttPeer("pump1-sensor", "127.0.0.50", "sensor-pump1")
    bad = _mqtt_attacker()
    with run.op("pump1 subscribes its command topic (so the broker forwards the attack)"):
        pump.connect()
        pump.subscribe("plant/pump1/cmd", 1)
    with run.op("attacker publishes a command and a config change"):
        bad.connect()
        bad.publish("plant/pump1/cmd", '{"setpoint_rpm":3600}', qos=1)
        bad.publish("plant/boiler/config", '{"max_temp_c":140}', qos=1)
        pump.wait_messages(1)
    with run.op("disconnect"):
        bad.disconnect()
        pump.disconnect()


def _mq_new_client(run: gen.Run) -> None:
    bad = _mqtt_attacker(client_id="mqtt-explorer-4f2a")
    with run.op("unknown client id connects and reads telemetry"):
        bad.connect()
        bad.subscribe("plant/+/telemetry", 0)
        bad.disconnect()


def _mq_oversized(run: gen.Run) -> None:
    pump = gen.MqttPeer("pump1-sensor", "127.0.0.50", "sensor-pump1")
    historian = gen.MqttPeer("historian-01", "127.0.0.70", "historian")
    with run.op("historian subscribes plant/# (sees the forwarded copy)"):
        historian.connect()
        historian.subscribe("plant/#", 0)
    with run.op("pump1 publishes a 10 000-byte payload"):
        pump.connect()
        pump.publish("plant/pump1/blob", "A" * 10_000, qos=1)
        historian.wait_messages(1)
    with run.op("disconnect"):
        pump.disconnect()
        historian.disconnect()


def _mq_malformed(run: gen.Run) -> None:
    """Hand-built bytes over real sockets to mosquitto: no real client sends these."""

    def send(data: bytes) -> None:
        with socket.create_connection((gen.LOOPBACK, gen.MQTT_PORT), timeout=2, source_address=(ATTACKER, 0)) as s:
            s.settimeout(0.3)
            s.sendall(data)
            with contextlib.suppress(TimeoutError, ConnectionResetError):
                s.recv(64)

    name = b"\x00\x04MQTT"
    with run.op("attacker raw: CONNECT with protocol level 9"):
        body = name + bytes([9, 0x02, 0, 30]) + b"\x00\x03bad"
        send(bytes([0x10, len(body)]) + body)
    with run.op("attacker raw: CONNECT with the reserved flag bit set"):
        body = name + bytes([4, 0x03, 0, 30]) + b"\x00\x03bad"
        send(bytes([0x10, len(body)]) + body)


def _mq_retained_flood(run: gen.Run) -> None:
    bad = _mqtt_attacker()
    with run.op("attacker publishes 25 retained messages"):
        bad.connect()
        for i in range(25):
            bad.publish(f"plant/junk/{i}", "x" * 16, qos=0, retain=True)
        bad.disconnect()


def _mq_raw(data: bytes, source: str = ATTACKER) -> None:
    with socket.create_connection((gen.LOOPBACK, gen.MQTT_PORT), timeout=2, source_address=(source, 0)) as s:
        s.settimeout(0.3)
        s.sendall(data)
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            s.recv(64)


def _mq_unintroduced(run: gen.Run) -> None:
    with run.op("attacker raw: SUBSCRIBE # before any CONNECT"):
        _mq_raw(bytes([0x82, 6, 0, 1, 0, 1]) + b"#" + bytes([0]))


def _mq_not_mqtt(run: gen.Run) -> None:
    with run.op("attacker2 raw: HTTP request to TCP 1883"):
        _mq_raw(b"GET / HTTP/1.1\r\nHost: broker\r\nUser-Agent: scanner\r\n\r\n", ATTACKER2)


def _mqtt(run: gen.Run, *steps: Callable[[gen.Run], None]) -> None:
    with gen.mosquitto_broker(), run.capture():
        for step in steps:
            step(run)


MQTT_ATTACKS = {
    "subscribe-all": _mq_subscribe_all,
    "anonymous": _mq_anonymous,
    "brute-force": _mq_brute_force,
    "command-publish": _mq_command_publish,
    "new-client": _mq_new_client,
    "oversized": _mq_oversized,
    "malformed": _mq_malformed,
    "retained-flood": _mq_retained_flood,
    "unintroduced": _mq_unintroduced,
    "not-mqtt": _mq_not_mqtt,
}
for _name, _step in MQTT_ATTACKS.items():
    attack(f"mqtt-{_name}", f"mqtt/{_name}.pcap", MQTT_BPF)(lambda run, s=_step: _mqtt(run, s))


@attack("mqtt-normal", "mqtt/normal.pcap", MQTT_BPF)
def mqtt_normal(run: gen.Run) -> None:
    """Quiet capture: historian, controller and a pump sensor, all known and authenticated."""
    _mqtt(run, lambda r: _mqtt_normal_peers(r, 5))


@attack("mqtt-mixed", "mqtt/mixed.pcap", MQTT_BPF)
def mqtt_mixed(run: gen.Run) -> None:
    """Normal telemetry, then every MQTT attack, then normal telemetry again."""
    steps = [lambda r: _mqtt_normal_peers(r, 3), *MQTT_ATTACKS.values(), lambda r: _mqtt_normal_peers(r, 3)]
    _mqtt(run, *steps)


# ---------------------------------------------------------------------------------------------------------
# S7comm: python-snap7 server on :102, HMI 127.0.0.30, engineering station 127.0.0.40, attacker 127.0.0.66
# ---------------------------------------------------------------------------------------------------------

S7_BPF = "tcp port 102"


def _s7_attacker(rack: int = 0, slot: int = 1, connection_type: int | None = None) -> gen.snap7.Client:
    client = gen.snap7.Client()
    if connection_type is not None:
        client.set_connection_type(connection_type)
    with gen.s7_source_address(ATTACKER):
        client.connect(gen.LOOPBACK, rack, slot)
    return client


def _s7_normal(run: gen.Run, cycles: int = 3) -> None:
    with run.op("hmi connect"):
        hmi = gen._s7_client(gen.S7_HMI)
    for cycle in range(cycles):
        with run.op(f"hmi poll {cycle}: DB1, inputs, outputs, merkers"):
            hmi.db_read(1, 0, 16)
            hmi.read_area(gen.Area.PE, 0, 0, 4)
            hmi.read_area(gen.Area.PA, 0, 0, 4)
            hmi.read_area(gen.Area.MK, 0, 0, 8)
        time.sleep(0.1)
    with run.op("hmi disconnect"):
        hmi.disconnect()
    with run.op("ews connect, identify the CPU, write a setpoint"):
        ews = gen._s7_client(gen.S7_EWS)
        ews.read_szl(0x0011, 0)
        ews.get_cpu_state()
        ews.db_write(1, 8, bytearray(b"\x00\x00\x04\xd2"))
        ews.disconnect()


def _s7_ops(name: str, *calls: Callable[[gen.snap7.Client], object], **connect: int) -> Callable[[gen.Run], None]:
    def step(run: gen.Run) -> None:
        with run.op(f"attacker connect ({name})"):
            bad = _s7_attacker(**connect)
        for i, call in enumerate(calls):
            with run.op(f"attacker {name} #{i}"):
                call(bad)
        with run.op("attacker disconnect"):
            bad.disconnect()

    return step


S7_ATTACKS: dict[str, Callable[[gen.Run], None]] = {
    "stop": _s7_ops("plc stop", lambda c: c.plc_stop()),
    "restart": _s7_ops("hot and cold restart", lambda c: c.plc_hot_start(), lambda c: c.plc_cold_start()),
    "download-delete": _s7_ops(
        "download DB3, delete DB3", lambda c: c.download(bytearray(range(32)), 3), lambda c: c.delete(gen.Block.DB, 3)
    ),
    "upload": _s7_ops("upload DB1", lambda c: c.upload(1)),
    "szl": _s7_ops("read SZL: module id, component id", lambda c: c.read_szl(0x0011, 0), lambda c: c.get_cpu_info()),
    "write": _s7_ops(
        "write DB1 and merkers",
        lambda c: c.db_write(1, 8, bytearray(b"\xff\xff")),
        lambda c: c.write_area(gen.Area.MK, 0, 10, bytearray([0x55])),
    ),
    "clock": _s7_ops("set the PLC clock", lambda c: c.set_plc_datetime(gen.datetime(2030, 1, 1))),
    "password": _s7_ops("set and clear the session password",
                        lambda c: c.set_session_password("guess123"), lambda c: c.clear_session_password()),
    "unusual-tsap": _s7_ops("connect as S7 basic (TSAP 03xx), read DB1", lambda c: c.db_read(1, 0, 4),
                            connection_type=3),
}


def _s7(run: gen.Run, *steps: Callable[[gen.Run], None]) -> None:
    with gen.s7_server(), run.capture():
        for step in steps:
            step(run)


for _name, _step in S7_ATTACKS.items():
    attack(f"s7comm-{_name}", f"s7comm/{_name}.pcap", S7_BPF)(lambda run, s=_step: _s7(run, s))


@attack("s7comm-normal", "s7comm/normal.pcap", S7_BPF)
def s7comm_normal(run: gen.Run) -> None:
    """Quiet capture: HMI polling, the engineering station identifying the CPU and writing a setpoint."""
    _s7(run, _s7_normal)


@attack("s7comm-mixed", "s7comm/mixed.pcap", S7_BPF)
def s7comm_mixed(run: gen.Run) -> None:
    """Normal traffic, every S7 attack, normal traffic again."""
    _s7(run, lambda r: _s7_normal(r, 2), *S7_ATTACKS.values(), lambda r: _s7_normal(r, 2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("names", nargs="*", default=["all"], help=f"scenarios: all or {', '.join(ATTACKS)}")
    parser.add_argument("--prefix", help="only scenarios whose name starts with this (modbus, s7comm, mqtt)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    for log in (LOG, gen.LOG):
        log.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    for noisy in ("pymodbus", "snap7", "s7"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    names = list(ATTACKS) if args.names == ["all"] else args.names
    if args.prefix:
        names = [n for n in names if n.startswith(args.prefix)]
    for name in names:
        if name not in ATTACKS:
            parser.error(f"unknown scenario {name}")
        filename, bpf, func = ATTACKS[name]
        run = gen.Run(args.out.resolve() / filename, bpf)
        LOG.info("%s -> %s", name, run.pcap)
        func(run)
        LOG.info("  %s", run.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
