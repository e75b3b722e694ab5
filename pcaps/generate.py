"""Regenerate the demo captures in pcaps/ from real protocol peers on loopback.

Why: decoder, rule and baseline tests need traffic that real stacks produced (pymodbus, python-snap7,
mosquitto + paho-mqtt), not hand-built packets that repeat our own reading of the specs. Every peer runs on
127.0.0.0/8 with its own source address, so a capture shows several hosts without any network, and tcpdump
records them on `lo` as a sensor would see them.

    python pcaps/generate.py [modbus|s7comm|mqtt|all] [--out DIR] [-v]

Adding a scenario (attack traffic for rule tests: writes from unknown hosts, scans, floods): write a function
taking a `Run`, decorate it with `@scenario(name, filename, bpf)`, start the servers it needs and then
`run.capture()` (servers first, so their readiness probes stay out of the file), and wrap each operation in
`run.op(...)` so a refusal is reported instead of ending the scenario.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import snap7
import snap7.client
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from pymodbus.client import ModbusTcpClient
from pymodbus.pdu import ModbusPDU
from pymodbus.pdu.device import ModbusDeviceIdentification
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
from snap7.connection import ISOTCPConnection
from snap7.type import Area, Block, SrvArea

LOG = logging.getLogger("pcaps.generate")
HERE = Path(__file__).resolve().parent
LOOPBACK = "127.0.0.1"

# ---------------------------------------------------------------------------------------------------------
# Framework: tcpdump capture, scenario registry, per-operation journal
# ---------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def capture(path: Path, bpf: str, interface: str = "lo", settle: float = 0.5) -> Iterator[None]:
    """Record everything matching `bpf` on `interface` into `path` while the block runs.

    tcpdump gets a full snaplen, `-U` (flush each packet to the file) and `--immediate-mode`: without it
    libpcap hands packets over a ring-buffer block at a time, and what sits in the last, unfinished block
    when SIGINT arrives is counted as received but never written (seen: 38 of 136 packets). We wait for
    its "listening on" line plus `settle` seconds before yielding (no lost SYN) and again before SIGINT
    (no lost FIN), then wait for it to exit so the file is complete when the block ends.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["tcpdump", "-i", interface, "-s", "0", "-U", "--immediate-mode", "-n", "-w", str(path)]
    if os.geteuid() == 0:
        cmd += ["-Z", "root"]  # Debian's tcpdump otherwise drops to user tcpdump, who may not write `path`
    cmd.append(bpf)
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    stderr_lines: list[str] = []
    listening = threading.Event()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            stderr_lines.append(line.rstrip())
            if "listening on" in line:
                listening.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        if not listening.wait(10) or proc.poll() is not None:
            raise RuntimeError(f"tcpdump did not start: {' | '.join(stderr_lines)}")
        time.sleep(settle)
        yield
        time.sleep(settle)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.terminate()
                proc.wait(5)
        reader.join(5)
        LOG.info("  tcpdump: %s", "; ".join(line for line in stderr_lines if "packets" in line))


@dataclass(slots=True)
class Run:
    """One scenario run: where it captures, with which filter, and how each operation ended."""

    pcap: Path
    bpf: str
    entries: list[tuple[str, str, str]] = field(default_factory=list)  # (operation, outcome, detail)

    def capture(self) -> contextlib.AbstractContextManager[None]:
        """Capture this scenario's traffic; start it after the servers are up."""
        return capture(self.pcap, self.bpf)

    @contextlib.contextmanager
    def op(self, name: str) -> Iterator[list[str]]:
        """Run one operation; an exception is recorded as `error` and swallowed so the scenario goes on.

        The body may append to the yielded list to note a protocol-level refusal that arrived as a normal
        return value (a Modbus exception response, a refused CONNACK); the outcome is then `refused`.
        """
        notes: list[str] = []
        try:
            yield notes
        except Exception as exc:  # a refused operation is part of the traffic, not a bug
            self._record(name, "error", f"{type(exc).__name__}: {exc}")
            return
        self._record(name, "refused" if notes else "ok", "; ".join(notes))

    def _record(self, name: str, outcome: str, detail: str) -> None:
        self.entries.append((name, outcome, detail))
        LOG.debug("  %-58s %-7s %s", name, outcome, detail)

    def summary(self) -> str:
        """Return counts per outcome and every operation that did not simply succeed."""
        counts: dict[str, int] = {}
        for _, outcome, _ in self.entries:
            counts[outcome] = counts.get(outcome, 0) + 1
        lines = [", ".join(f"{k}={v}" for k, v in sorted(counts.items()))]
        lines += [f"    {outcome:7} {name}: {detail}" for name, outcome, detail in self.entries if outcome != "ok"]
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class Scenario:
    """One capture: the traffic function, the file it writes and the BPF that keeps other loopback noise out."""

    name: str
    filename: str
    bpf: str
    func: Callable[[Run], None]


SCENARIOS: dict[str, Scenario] = {}


def scenario(name: str, filename: str, bpf: str) -> Callable[[Callable[[Run], None]], Callable[[Run], None]]:
    """Register a traffic function under `name` (the CLI choice) writing `filename`."""

    def register(func: Callable[[Run], None]) -> Callable[[Run], None]:
        if name in SCENARIOS:
            raise ValueError(f"duplicate scenario {name}")
        SCENARIOS[name] = Scenario(name, filename, bpf, func)
        return func

    return register


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Block until something accepts TCP on host:port; called before the capture starts."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listening on {host}:{port}") from None
            time.sleep(0.05)


def ensure_port_free(port: int) -> None:
    """Refuse to run when another process already owns the port: its traffic would end up in our capture."""
    with socket.socket() as sock:
        sock.settimeout(0.3)
        if sock.connect_ex((LOOPBACK, port)) == 0:
            raise RuntimeError(f"port {port} is already in use on {LOOPBACK}; stop that service first")


# ---------------------------------------------------------------------------------------------------------
# Modbus/TCP: pymodbus server with units 1 and 2 on :502, a second one on :5020, HMI and engineering clients
# ---------------------------------------------------------------------------------------------------------

MODBUS_HMI = "127.0.0.10"  # polls units 1 and 2 on :502
MODBUS_HMI2 = "127.0.0.11"  # polls the second server on the non-standard port 5020
MODBUS_EWS = "127.0.0.20"  # engineering workstation: writes, diagnostics, identification, errors
MODBUS_UNITS = (1, 2)
MODBUS_SIZE = 100  # entries per table; reading beyond answers Illegal Data Address


def _modbus_device(unit: int) -> SimDevice:
    """Build one unit with four separate tables: coils, discrete inputs, holding and input registers."""

    def bits(seed: int) -> list[SimData]:
        return [SimData(0, values=[(i * seed) % 3 == 0 for i in range(MODBUS_SIZE)], datatype=DataType.BITS)]

    def regs(base: int) -> list[SimData]:
        return [SimData(0, values=[base + i for i in range(MODBUS_SIZE)], datatype=DataType.REGISTERS)]

    return SimDevice(unit, simdata=(bits(unit), bits(unit + 1), regs(1000 * unit), regs(100 * unit)))


MODBUS_IDENTITY = {
    "VendorName": "Demo Automation",
    "ProductCode": "DA-1200",
    "MajorMinorRevision": "2.4.1",
    "VendorUrl": "http://plc.example.invalid",
    "ProductName": "Demo Pump Station PLC",
    "ModelName": "DA-1200-PN",
    "UserApplicationName": "pump-station-1",
}


@contextlib.contextmanager
def modbus_servers(ports: tuple[int, ...]) -> Iterator[None]:
    """Run one pymodbus TCP server per port in a background event loop for the duration of the block.

    Each server answers FC 43/14 and FC 17 from MODBUS_IDENTITY (FC 43/14 objects 0-6: vendor, product code,
    revision, URL, product, model, application name), so the capture carries identification strings.
    """
    for port in ports:
        ensure_port_free(port)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="modbus-server", daemon=True)
    thread.start()

    async def start() -> list[ModbusTcpServer]:
        # Built inside the loop: the server creates an asyncio future in its constructor.
        servers = [
            ModbusTcpServer(
                [_modbus_device(unit) for unit in MODBUS_UNITS],
                # One identity for all: pymodbus keeps it in a process-wide control block, the last server wins.
                identity=ModbusDeviceIdentification(info_name=MODBUS_IDENTITY),
                address=(LOOPBACK, port),
            )
            for port in ports
        ]
        for server in servers:
            await server.serve_forever(background=True)
        return servers

    servers = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        for port in ports:
            wait_for_port(LOOPBACK, port)
        yield
    finally:
        for server in servers:
            asyncio.run_coroutine_threadsafe(server.shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def _modbus_client(source: str, port: int = 502) -> ModbusTcpClient:
    client = ModbusTcpClient(LOOPBACK, port=port, source_address=(source, 0), timeout=2, retries=0)
    if not client.connect():
        raise RuntimeError(f"modbus client {source} could not connect to port {port}")
    return client


def _note_exception(notes: list[str], response: ModbusPDU) -> None:
    """Note an exception response: pymodbus returns it as a normal value, not as an exception."""
    if response.isError():
        code = getattr(response, "exception_code", None)
        notes.append(f"exception response fc=0x{response.function_code:02x} code={code}")


def _raw_modbus(source: str, pdu: bytes, unit: int, tid: int, port: int = 502) -> bytes:
    """Send one hand-built MBAP frame: pymodbus clients cannot send a function code they do not know."""
    with socket.create_connection((LOOPBACK, port), timeout=2, source_address=(source, 0)) as sock:
        sock.sendall(struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu)
        return sock.recv(260)


@scenario("modbus", "modbus_demo.pcap", "tcp port 502 or tcp port 5020")
def modbus_demo(run: Run) -> None:
    """Capture HMI polling, engineering writes and diagnostics, exception responses, and polling on :5020."""
    with modbus_servers((502, 5020)), run.capture():
        hmi = _modbus_client(MODBUS_HMI)
        for cycle in range(4):
            for unit in MODBUS_UNITS:
                with run.op(f"hmi poll {cycle} unit {unit} FC3 read holding registers") as n:
                    _note_exception(n, hmi.read_holding_registers(0, count=10, device_id=unit))
                with run.op(f"hmi poll {cycle} unit {unit} FC4 read input registers") as n:
                    _note_exception(n, hmi.read_input_registers(0, count=8, device_id=unit))
            with run.op(f"hmi poll {cycle} unit 1 FC1 read coils") as n:
                _note_exception(n, hmi.read_coils(0, count=16, device_id=1))
            with run.op(f"hmi poll {cycle} unit 1 FC2 read discrete inputs") as n:
                _note_exception(n, hmi.read_discrete_inputs(0, count=16, device_id=1))
            time.sleep(0.2)
        hmi.close()

        ews = _modbus_client(MODBUS_EWS)
        steps: list[tuple[str, Callable[[], ModbusPDU]]] = [
            ("FC5 write single coil", lambda: ews.write_coil(3, True, device_id=1)),
            ("FC6 write single register", lambda: ews.write_register(10, 1234, device_id=1)),
            ("FC15 write multiple coils", lambda: ews.write_coils(8, [True, False, True, True], device_id=1)),
            ("FC16 write multiple registers", lambda: ews.write_registers(20, [11, 22, 33, 44], device_id=1)),
            ("FC22 mask write register", lambda: ews.mask_write_register(address=21, and_mask=0xF2, or_mask=0x25)),
            (
                "FC23 read/write multiple registers",
                lambda: ews.readwrite_registers(read_address=20, read_count=4, write_address=30, values=[7, 8, 9]),
            ),
            ("FC16 write multiple registers unit 2", lambda: ews.write_registers(0, [500, 501], device_id=2)),
            ("FC8/0 diagnostics return query data", lambda: ews.diag_query_data(b"\xa5\x37")),
            ("FC8/1 diagnostics restart communications", lambda: ews.diag_restart_communication(False)),
            ("FC8/10 diagnostics clear counters", ews.diag_clear_counters),
            ("FC8/11 diagnostics bus message count", ews.diag_read_bus_message_count),
            ("FC7 read exception status", ews.read_exception_status),
            ("FC11 get comm event counter", ews.diag_get_comm_event_counter),
            ("FC12 get comm event log", ews.diag_get_comm_event_log),
            ("FC17 report server id", ews.report_device_id),
            ("FC24 read FIFO queue", lambda: ews.read_fifo_queue(address=0)),
            ("FC43/14 read device id basic", lambda: ews.read_device_information(read_code=1)),
            ("FC43/14 read device id regular", lambda: ews.read_device_information(read_code=2)),
            ("FC43/14 read device id specific object 5", lambda: ews.read_device_information(read_code=4, object_id=5)),
            ("FC3 read past the table (0x02 expected)", lambda: ews.read_holding_registers(95, count=10)),
            ("FC1 read past the table on unit 2", lambda: ews.read_coils(MODBUS_SIZE + 50, count=8, device_id=2)),
            ("FC3 to unit 7 that is not served", lambda: ews.read_holding_registers(0, count=2, device_id=7)),
        ]
        for name, call in steps:
            with run.op(f"ews {name}") as n:
                _note_exception(n, call())
        ews.close()
        with run.op("ews FC65 user-defined function, raw socket (0x01 expected)") as n:
            reply = _raw_modbus(MODBUS_EWS, bytes([0x41, 0x00, 0x01]), unit=1, tid=0x4141)
            if len(reply) > 8 and reply[7] & 0x80:  # MBAP is 7 bytes, then function code and exception code
                n.append(f"exception response fc=0x{reply[7]:02x} code={reply[8]}")

        gateway = _modbus_client(MODBUS_HMI2, port=5020)
        for cycle in range(3):
            with run.op(f"hmi2 :5020 poll {cycle} FC3 read holding registers") as n:
                _note_exception(n, gateway.read_holding_registers(0, count=6, device_id=1))
            with run.op(f"hmi2 :5020 poll {cycle} FC1 read coils") as n:
                _note_exception(n, gateway.read_coils(0, count=8, device_id=1))
            time.sleep(0.2)
        with run.op("hmi2 :5020 FC4 read input registers unit 2") as n:
            _note_exception(n, gateway.read_input_registers(0, count=4, device_id=2))
        gateway.close()


# ---------------------------------------------------------------------------------------------------------
# S7comm: python-snap7 server on :102, an HMI reading and an engineering station doing everything else
# ---------------------------------------------------------------------------------------------------------

S7_HMI = "127.0.0.30"
S7_EWS = "127.0.0.40"


@contextlib.contextmanager
def s7_source_address(source: str) -> Iterator[None]:
    """Make snap7 clients connect from `source`: snap7's ISO-on-TCP connection has no bind option.

    For the block only, snap7.client instantiates a connection subclass that binds its socket first;
    everything above TCP is still snap7's own code.
    """

    class BoundConnection(ISOTCPConnection):
        def _tcp_connect(self) -> None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(self.timeout)
            sock.bind((source, 0))
            sock.connect((self.host, self.port))
            self.socket = sock

    original = snap7.client.ISOTCPConnection
    snap7.client.ISOTCPConnection = BoundConnection  # type: ignore[misc]
    try:
        yield
    finally:
        snap7.client.ISOTCPConnection = original  # type: ignore[misc]


@contextlib.contextmanager
def s7_server(port: int = 102) -> Iterator[snap7.Server]:
    """Run a snap7 server with DB1, DB2, inputs, outputs, merkers, timers and counters registered."""
    ensure_port_free(port)
    server = snap7.Server(log=False)
    areas = {
        (SrvArea.DB, 1): bytearray(range(64)),
        (SrvArea.DB, 2): bytearray(b"PUMP-01\x00" + bytes(24)),
        (SrvArea.PE, 0): bytearray([0b1010_0101, 0x0F, 0, 0]),
        (SrvArea.PA, 0): bytearray([0b0000_0011, 0, 0, 0]),
        (SrvArea.MK, 0): bytearray(32),
        (SrvArea.TM, 0): bytearray(16),
        (SrvArea.CT, 0): bytearray(16),
    }
    for (area, index), data in areas.items():
        server.register_area(area, index, data)
    server.start_to(LOOPBACK, port)
    try:
        wait_for_port(LOOPBACK, port)
        yield server
    finally:
        server.stop()


def _s7_client(source: str) -> snap7.Client:
    client = snap7.Client()
    with s7_source_address(source):
        client.connect(LOOPBACK, 0, 1)  # rack 0, slot 1: remote TSAP 0x0101
    return client


@scenario("s7comm", "s7comm_demo.pcap", "tcp port 102")
def s7comm_demo(run: Run) -> None:
    """Capture HMI reads, then an engineering station doing SZL, blocks, transfer, run/stop, clock, password."""
    with s7_server(), run.capture():
        with run.op("hmi connect (COTP CR/CC, setup communication)"):
            hmi = _s7_client(S7_HMI)
        for cycle in range(3):
            with run.op(f"hmi poll {cycle} read DB1.DBB0, 16 bytes"):
                hmi.db_read(1, 0, 16)
            with run.op(f"hmi poll {cycle} read inputs IB0..3"):
                hmi.read_area(Area.PE, 0, 0, 4)
            with run.op(f"hmi poll {cycle} read outputs QB0..3"):
                hmi.read_area(Area.PA, 0, 0, 4)
            with run.op(f"hmi poll {cycle} read merkers MB0..7"):
                hmi.read_area(Area.MK, 0, 0, 8)
            time.sleep(0.2)
        with run.op("hmi read multi vars (DB1, DB2, MK, PE in one job)"):
            hmi.read_multi_vars(
                [
                    {"area": Area.DB, "db_number": 1, "start": 0, "size": 4},
                    {"area": Area.DB, "db_number": 2, "start": 0, "size": 8},
                    {"area": Area.MK, "db_number": 0, "start": 4, "size": 2},
                    {"area": Area.PE, "db_number": 0, "start": 0, "size": 1},
                ]
            )
        with run.op("hmi disconnect"):
            hmi.disconnect()

        with run.op("ews connect (COTP CR/CC, setup communication)"):
            ews = _s7_client(S7_EWS)
        steps: list[tuple[str, Callable[[], object]]] = [
            ("read SZL 0x0000 (list of SZL ids)", ews.read_szl_list),
            ("read SZL 0x0011 (module identification)", lambda: ews.read_szl(0x0011, 0)),
            ("read SZL 0x001C (component identification)", lambda: ews.read_szl(0x001C, 0)),
            ("read SZL 0x0424 (current mode)", lambda: ews.read_szl(0x0424, 0)),
            ("read SZL 0x0131 (communication capabilities)", lambda: ews.read_szl(0x0131, 1)),
            ("get cpu info", ews.get_cpu_info),
            ("get order code", ews.get_order_code),
            ("get cp info", ews.get_cp_info),
            ("get protection", ews.get_protection),
            ("get cpu state", ews.get_cpu_state),
            ("list blocks", ews.list_blocks),
            ("list blocks of type DB", lambda: ews.list_blocks_of_type(Block.DB, 16)),
            ("get block info DB1", lambda: ews.get_block_info(Block.DB, 1)),
            ("upload DB1", lambda: ews.upload(1)),
            ("full upload DB2", lambda: ews.full_upload(Block.DB, 2)),
            ("download DB3", lambda: ews.download(bytearray(range(32)), 3)),
            ("write DB1.DBB8, 4 bytes", lambda: ews.db_write(1, 8, bytearray(b"\x00\x00\x04\xd2"))),
            ("write outputs QB0", lambda: ews.write_area(Area.PA, 0, 0, bytearray([0b0000_0111]))),
            ("write merkers MB10..11", lambda: ews.write_area(Area.MK, 0, 10, bytearray([0x12, 0x34]))),
            (
                "write multi vars (DB1, MK)",
                lambda: ews.write_multi_vars(
                    [
                        {"area": Area.DB, "db_number": 1, "start": 12, "data": bytearray(b"\x01\x02")},
                        {"area": Area.MK, "db_number": 0, "start": 20, "data": bytearray(b"\xff")},
                    ]
                ),
            ),
            ("get plc datetime", ews.get_plc_datetime),
            ("set plc datetime", lambda: ews.set_plc_datetime(datetime(2024, 5, 17, 8, 30, 0))),
            ("set session password", lambda: ews.set_session_password("s7secret")),
            ("clear session password", ews.clear_session_password),
            ("plc stop", ews.plc_stop),
            ("get cpu state after stop", ews.get_cpu_state),
            ("plc hot start", ews.plc_hot_start),
            ("plc stop again", ews.plc_stop),
            ("plc cold start", ews.plc_cold_start),
            ("get cpu state after start", ews.get_cpu_state),
            ("compress memory", lambda: ews.compress(1000)),
            ("copy ram to rom", lambda: ews.copy_ram_to_rom(1000)),
            ("delete block DB3", lambda: ews.delete(Block.DB, 3)),
            ("read DB99 (not registered)", lambda: ews.db_read(99, 0, 4)),
        ]
        for name, call in steps:
            with run.op(f"ews {name}"):
                call()
        with run.op("ews disconnect"):
            ews.disconnect()


# ---------------------------------------------------------------------------------------------------------
# MQTT: mosquitto with a password file; paho-mqtt sensors, controller, historian, a refused login, MQTT 5
# ---------------------------------------------------------------------------------------------------------

MQTT_PORT = 1883
MQTT_USERS = {
    "sensor-pump1": "pump1-pass",
    "sensor-boiler": "boiler-pass",
    "controller": "ctrl-pass",
    "historian": "hist-pass",
    "mes-gateway": "mes-pass",
}


@contextlib.contextmanager
def mosquitto_broker(port: int = MQTT_PORT) -> Iterator[None]:
    """Run mosquitto on 127.0.0.1:`port` with `allow_anonymous false` and the MQTT_USERS password file."""
    ensure_port_free(port)
    with tempfile.TemporaryDirectory(prefix="mqtt-demo-") as tmp:
        passwd = Path(tmp) / "passwd"
        passwd.touch(mode=0o600)
        for user, password in MQTT_USERS.items():
            subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, password], check=True)
        conf = Path(tmp) / "mosquitto.conf"
        lines = [
            f"listener {port} {LOOPBACK}",
            "allow_anonymous false",
            f"password_file {passwd}",
            "persistence false",  # no retained message survives between runs: the same capture every time
            "log_dest stderr",
            "connection_messages true",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # otherwise it drops to user mosquitto, who cannot read the temp dir
        conf.write_text("\n".join(lines) + "\n")
        with (Path(tmp) / "mosquitto.log").open("w+") as log:
            broker = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
            try:
                wait_for_port(LOOPBACK, port)
                yield
            finally:
                broker.terminate()
                broker.wait(10)
                log.seek(0)
                LOG.debug("  mosquitto log:\n%s", log.read().rstrip())


class MqttPeer:
    """A paho-mqtt 2.x client on its own source address, with calls that block until the broker answers.

    Blocking on CONNACK, SUBACK, UNSUBACK, PUBACK and PUBCOMP keeps the packet order the same run to run.
    """

    def __init__(
        self,
        client_id: str,
        source: str,
        user: str,
        *,
        password: str | None = None,
        protocol: mqtt.MQTTProtocolVersion = mqtt.MQTTv311,
        keepalive: int = 60,
    ) -> None:
        """Create the client; `password` defaults to the user's correct one from MQTT_USERS."""
        self.source = source
        self.keepalive = keepalive
        # reconnect_on_failure=False: a refused login must stay one attempt, not a reconnect loop.
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol, reconnect_on_failure=False
        )
        self.client.username_pw_set(user, MQTT_USERS[user] if password is None else password)
        self._cond = threading.Condition()
        self._acked: set[int] = set()
        self.connack: ReasonCode | None = None
        self.messages: list[tuple[str, bytes]] = []
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_ack
        self.client.on_unsubscribe = self._on_ack
        self.client.on_message = self._on_message

    def _on_connect(self, _c: mqtt.Client, _u: object, _f: mqtt.ConnectFlags, rc: ReasonCode, _p: object) -> None:
        with self._cond:
            self.connack = rc
            self._cond.notify_all()

    def _on_ack(self, _c: mqtt.Client, _u: object, mid: int, _rcs: list[ReasonCode], _p: object) -> None:
        with self._cond:
            self._acked.add(mid)
            self._cond.notify_all()

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, msg.payload))
            self._cond.notify_all()

    def _wait(self, predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
        with self._cond:
            if not self._cond.wait_for(predicate, timeout):
                raise TimeoutError(f"{self.source}: no {what}")

    def connect(self, properties: Properties | None = None) -> None:
        """Send CONNECT and wait for CONNACK; raise PermissionError if the broker refused the login."""
        self.client.connect(LOOPBACK, MQTT_PORT, self.keepalive, bind_address=self.source, properties=properties)
        self.client.loop_start()
        self._wait(lambda: self.connack is not None, "CONNACK")
        assert self.connack is not None
        if self.connack.is_failure:
            self.client.loop_stop()
            raise PermissionError(f"CONNACK refused: {self.connack}")

    def subscribe(
        self, topic: str, qos: int = 0, options: SubscribeOptions | None = None, properties: Properties | None = None
    ) -> None:
        """Subscribe and wait for the SUBACK."""
        if options is not None:
            _, mid = self.client.subscribe(topic, options=options, properties=properties)
        else:
            _, mid = self.client.subscribe(topic, qos, properties=properties)
        self._wait(lambda: mid in self._acked, "SUBACK")

    def unsubscribe(self, topic: str) -> None:
        """Unsubscribe and wait for the UNSUBACK."""
        _, mid = self.client.unsubscribe(topic)
        self._wait(lambda: mid in self._acked, "UNSUBACK")

    def publish(
        self, topic: str, payload: str, qos: int = 0, *, retain: bool = False, props: Properties | None = None
    ) -> None:
        """Publish; for QoS 1/2 wait for PUBACK/PUBCOMP, then let the broker fan out before the next step."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        if qos:
            info.wait_for_publish(5)
        time.sleep(0.05)

    def wait_messages(self, count: int) -> None:
        """Wait until this peer has received `count` messages in total."""
        self._wait(lambda: len(self.messages) >= count, f"{count} messages")

    def disconnect(self, reasoncode: ReasonCode | None = None, properties: Properties | None = None) -> None:
        """Send DISCONNECT and stop the network thread."""
        self.client.disconnect(reasoncode=reasoncode, properties=properties)
        self.client.loop_stop()


def _mqtt_properties(packet_type: int, **values: object) -> Properties:
    """Build an MQTT 5 property set for `packet_type` from keyword arguments named as in paho."""
    props = Properties(packet_type)
    for name, value in values.items():
        setattr(props, name, value)
    return props


def _mqtt_mes_gateway(run: Run) -> None:
    """MQTT 5 client: connect/subscribe/publish properties, topic alias, unsubscribe, disconnect reason."""
    mes = MqttPeer("mes-gateway", "127.0.0.80", "mes-gateway", protocol=mqtt.MQTTv5)
    with run.op("mes-gateway connect (MQTT 5: session expiry, receive maximum, user properties)"):
        mes.connect(
            _mqtt_properties(
                PacketTypes.CONNECT,
                SessionExpiryInterval=300,
                ReceiveMaximum=20,
                UserProperty=[("site", "demo-plant"), ("line", "1")],
            )
        )
    with run.op("mes-gateway subscribe plant/+/status (no local, subscription id 7)"):
        sub_props = _mqtt_properties(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=7)
        mes.subscribe("plant/+/status", options=SubscribeOptions(qos=1, noLocal=True), properties=sub_props)
        mes.wait_messages(1)  # the retained "online" status
    with run.op("mes-gateway publish with properties, defines topic alias 1"):
        props = _mqtt_properties(
            PacketTypes.PUBLISH,
            PayloadFormatIndicator=1,
            ContentType="application/json",
            ResponseTopic="mes/line1/replies",
            CorrelationData=b"order-0001",
            MessageExpiryInterval=120,
            UserProperty=[("schema", "order/v2")],
            TopicAlias=1,
        )
        mes.publish("mes/line1/orders", '{"order":1,"qty":40}', qos=1, props=props)
    with run.op("mes-gateway publish through topic alias 1 (empty topic name)"):
        props = _mqtt_properties(PacketTypes.PUBLISH, TopicAlias=1, ContentType="application/json")
        mes.publish("", '{"order":2,"qty":25}', qos=1, props=props)
    with run.op("mes-gateway publish QoS 2 with response topic and correlation data"):
        props = _mqtt_properties(PacketTypes.PUBLISH, ResponseTopic="mes/line1/replies", CorrelationData=b"order-0003")
        mes.publish("mes/line1/orders", '{"order":3,"qty":10}', qos=2, props=props)
    with run.op("mes-gateway unsubscribe plant/+/status"):
        mes.unsubscribe("plant/+/status")
    with run.op("mes-gateway disconnect (reason 0x00, session expiry 0)"):
        mes.disconnect(
            ReasonCode(PacketTypes.DISCONNECT, "Normal disconnection"),
            _mqtt_properties(PacketTypes.DISCONNECT, SessionExpiryInterval=0),
        )


@scenario("mqtt", "mqtt_demo.pcap", f"tcp port {MQTT_PORT}")
def mqtt_demo(run: Run) -> None:
    """Capture telemetry at QoS 0/1/2 with retained messages, a command, a `#` historian, a refused login, MQTT 5."""
    with mosquitto_broker(), run.capture():
        historian = MqttPeer("historian-01", "127.0.0.70", "historian")
        controller = MqttPeer("line1-controller", "127.0.0.60", "controller", keepalive=2)
        pump = MqttPeer("pump1-sensor", "127.0.0.50", "sensor-pump1")
        boiler = MqttPeer("boiler-sensor", "127.0.0.51", "sensor-boiler", protocol=mqtt.MQTTv31)
        rogue = MqttPeer("maint-laptop", "127.0.0.99", "controller", password="Passw0rd!")

        with run.op("historian connect (3.1.1), subscribe # QoS 1"):
            historian.connect()
            historian.subscribe("#", 1)
        with run.op("controller connect (3.1.1, keepalive 2 s), subscribe plant/+/telemetry QoS 1"):
            controller.connect()
            controller.subscribe("plant/+/telemetry", 1)
        with run.op("pump1 connect (3.1.1), subscribe plant/pump1/cmd QoS 1"):
            pump.connect()
            pump.subscribe("plant/pump1/cmd", 1)
        with run.op("pump1 publish retained status, QoS 1"):
            pump.publish("plant/pump1/status", "online", qos=1, retain=True)
        for i in range(3):
            with run.op(f"pump1 publish telemetry QoS 0 #{i}"):
                pump.publish("plant/pump1/telemetry", f'{{"flow":{12.5 + i},"rpm":{1450 + 10 * i}}}')
        for i in range(2):
            with run.op(f"pump1 publish telemetry QoS 1 #{i}"):
                pump.publish("plant/pump1/telemetry", f'{{"flow":{15.5 + i},"rpm":{1480 + 10 * i}}}', qos=1)
        with run.op("boiler connect (MQTT 3.1, protocol name MQIsdp)"):
            boiler.connect()
        for i in range(2):
            with run.op(f"boiler publish telemetry QoS 2 #{i}"):
                boiler.publish("plant/boiler/telemetry", f'{{"temp_c":{81.0 + i},"bar":2.{i}}}', qos=2)
        with run.op("boiler publish retained config, QoS 2"):
            boiler.publish("plant/boiler/config", '{"max_temp_c":95}', qos=2, retain=True)
        with run.op("controller received the 7 telemetry messages"):
            controller.wait_messages(7)
        with run.op("controller publish command plant/pump1/cmd QoS 1"):
            controller.publish("plant/pump1/cmd", '{"setpoint_rpm":1500}', qos=1)
            pump.wait_messages(1)

        with run.op("maint-laptop login as controller, wrong password (refusal expected)") as notes:
            try:
                rogue.connect()
            except PermissionError as exc:
                notes.append(str(exc))

        _mqtt_mes_gateway(run)

        with run.op("controller idle past its keepalive (PINGREQ/PINGRESP)"):
            time.sleep(controller.keepalive + 0.8)
        with run.op("controller unsubscribe, disconnect"):
            controller.unsubscribe("plant/+/telemetry")
            controller.disconnect()
        with run.op("sensors disconnect"):
            pump.disconnect()
            boiler.disconnect()
        with run.op("historian unsubscribe #, disconnect"):
            historian.unsubscribe("#")
            historian.disconnect()


# ---------------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the chosen scenarios, each into its own capture, and print what was refused or failed."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("scenario", nargs="?", default="all", choices=[*SCENARIOS, "all"])
    parser.add_argument("--out", type=Path, default=HERE, help="directory for the captures (default: pcaps/)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every operation and the broker log")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    LOG.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    for noisy in ("pymodbus", "snap7", "s7"):  # they log refusals that the run summary already reports
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    for tool in ("tcpdump", "mosquitto", "mosquitto_passwd"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is required")
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    for name in names:
        sc = SCENARIOS[name]
        run = Run(args.out.resolve() / sc.filename, sc.bpf)
        LOG.info("%s -> %s", name, run.pcap)
        sc.func(run)
        LOG.info("  %s", run.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
