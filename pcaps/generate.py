"""Regenerate the demo captures in pcaps/ from real protocol peers on loopback.

Why: decoder, rule and baseline tests need traffic that real stacks produced (pymodbus, python-snap7,
mosquitto + paho-mqtt), not hand-built packets that share our own misreadings of the specs. Every peer runs
on 127.0.0.0/8 with its own source address, so captures show several hosts without any network access,
and tcpdump records them on `lo` exactly as a sensor would see them.

    python pcaps/generate.py [modbus|s7comm|mqtt|all] [--out DIR]

Adding a scenario (attack traffic for rule tests, floods, scans): write a function taking a `Journal`,
decorate it with `@scenario(name, filename, bpf)`, and start the servers it needs inside it. Servers are
started before the capture so that readiness probes stay out of the file.
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
from typing import Any

LOG = logging.getLogger("pcaps.generate")
HERE = Path(__file__).resolve().parent
LOOPBACK = "127.0.0.1"

# ---------------------------------------------------------------------------------------------------------
# Framework: capture context manager, scenario registry, operation journal
# ---------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def capture(path: Path, bpf: str, interface: str = "lo", settle: float = 0.5) -> Iterator[None]:
    """Record everything matching `bpf` on `interface` into `path` while the block runs.

    tcpdump gets a full snaplen, `-U` (flush each packet to the file) and `--immediate-mode`: without it
    libpcap hands over packets a ring-buffer block at a time, and whatever sits in the last, unfinished
    block when SIGINT arrives is counted as received but never written. We wait for its "listening on"
    line plus `settle` seconds before yielding (no lost SYN) and again before SIGINT (no lost FIN/ACK),
    then wait for it to exit so the file is complete when the block ends.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["tcpdump", "-i", interface, "-s", "0", "-U", "--immediate-mode", "-n", "-w", str(path)]
    if os.geteuid() == 0:
        cmd += ["-Z", "root"]  # Debian's tcpdump otherwise drops to user tcpdump and may not write `path`.
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
        LOG.info("tcpdump: %s", "; ".join(line for line in stderr_lines if "packets" in line))


@dataclass(slots=True)
class Journal:
    """What a scenario did and how each operation ended, so the run reports failures instead of hiding them."""

    entries: list[tuple[str, str, str]] = field(default_factory=list)  # (operation, outcome, detail)

    @contextlib.contextmanager
    def op(self, name: str) -> Iterator[list[str]]:
        """Run one operation; an exception is recorded as `error` and swallowed, the scenario goes on.

        The body may append to the yielded list to note a protocol-level error (an exception response)
        that arrived as a normal return value.
        """
        notes: list[str] = []
        try:
            yield notes
        except Exception as exc:  # noqa: BLE001 - a refused operation is data here, not a bug
            self.entries.append((name, "error", f"{type(exc).__name__}: {exc}"))
            LOG.debug("  %-48s error  %s: %s", name, type(exc).__name__, exc)
            return
        outcome = "refused" if notes else "ok"
        self.entries.append((name, outcome, "; ".join(notes)))
        LOG.debug("  %-48s %-7s %s", name, outcome, "; ".join(notes))

    def summary(self) -> str:
        """Return counts per outcome plus every non-ok line, for the end-of-run report."""
        counts: dict[str, int] = {}
        for _, outcome, _ in self.entries:
            counts[outcome] = counts.get(outcome, 0) + 1
        lines = [", ".join(f"{k}={v}" for k, v in sorted(counts.items()))]
        lines += [f"    {o:7} {n}: {d}" for n, o, d in self.entries if o != "ok"]
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class Scenario:
    """One capture: the traffic function, the file it writes and the BPF that keeps other loopback noise out."""

    name: str
    filename: str
    bpf: str
    run: Callable[[Journal], None]


SCENARIOS: dict[str, Scenario] = {}


def scenario(name: str, filename: str, bpf: str) -> Callable[[Callable[[Journal], None]], Callable[[Journal], None]]:
    """Register a traffic function under `name` (the CLI choice) writing `filename`."""

    def register(func: Callable[[Journal], None]) -> Callable[[Journal], None]:
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
# Modbus/TCP: pymodbus server with two units on 502, a second server on 5020, HMI and engineering clients
# ---------------------------------------------------------------------------------------------------------

MODBUS_HMI = "127.0.0.10"  # polls unit 1 and 2 on :502
MODBUS_EWS = "127.0.0.20"  # engineering workstation: writes, diagnostics, identification, errors
MODBUS_HMI2 = "127.0.0.11"  # polls the gateway on the non-standard port 5020
MODBUS_UNITS = (1, 2)
MODBUS_SIZE = 100  # registers and bits per table; reads beyond raise Illegal Data Address


def _modbus_device(unit: int) -> Any:
    """Build one unit with four separate tables (coils, discrete inputs, holding, input registers)."""
    from pymodbus.simulator import DataType, SimData, SimDevice

    def bits(seed: int) -> list[SimData]:
        return [SimData(0, values=[(i * seed) % 3 == 0 for i in range(MODBUS_SIZE)], datatype=DataType.BITS)]

    def regs(base: int) -> list[SimData]:
        return [SimData(0, values=[base + i for i in range(MODBUS_SIZE)], datatype=DataType.REGISTERS)]

    return SimDevice(unit, simdata=(bits(unit), bits(unit + 1), regs(1000 * unit), regs(100 * unit)))


def _modbus_identity(product: str) -> Any:
    """Device identification (FC 43/14 objects 0-6) so the capture carries vendor and product strings."""
    from pymodbus.pdu.device import ModbusDeviceIdentification

    return ModbusDeviceIdentification(
        info_name={
            "VendorName": "Demo Automation",
            "ProductCode": product,
            "MajorMinorRevision": "2.4.1",
            "VendorUrl": "http://plc.example.invalid",
            "ProductName": "Demo Pump Station PLC",
            "ModelName": "DA-1200",
            "UserApplicationName": "pump-station-1",
        }
    )


@contextlib.contextmanager
def modbus_servers(ports: tuple[int, ...]) -> Iterator[None]:
    """Run pymodbus TCP servers on `ports` in a background event loop for the duration of the block."""
    from pymodbus.server import ModbusTcpServer

    for port in ports:
        ensure_port_free(port)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="modbus-server", daemon=True)
    thread.start()

    async def start() -> list[Any]:
        # Built inside the loop: the server creates asyncio futures in its constructor.
        servers = [
            ModbusTcpServer(
                [_modbus_device(u) for u in MODBUS_UNITS],
                identity=_modbus_identity(f"DA-1200-{port}"),
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


def _modbus_client(source: str, port: int = 502) -> Any:
    from pymodbus.client import ModbusTcpClient

    client = ModbusTcpClient(LOOPBACK, port=port, source_address=(source, 0), timeout=2, retries=0)
    if not client.connect():
        raise RuntimeError(f"modbus client {source} could not connect to port {port}")
    return client


def _check(notes: list[str], response: Any) -> Any:
    """Note an exception response (it is a normal return value in pymodbus) so the journal shows it."""
    if response.isError():
        code = getattr(response, "exception_code", None)
        notes.append(f"exception response fc=0x{response.function_code:02x} code={code}")
    return response


def _raw_modbus(source: str, pdu: bytes, unit: int, tid: int, port: int = 502) -> bytes:
    """Send one hand-built MBAP frame: pymodbus clients cannot send function codes they do not know."""
    with socket.create_connection((LOOPBACK, port), timeout=2, source_address=(source, 0)) as sock:
        sock.sendall(struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu)
        return sock.recv(260)


@scenario("modbus", "modbus_demo.pcap", "tcp port 502 or tcp port 5020")
def modbus_demo(journal: Journal) -> None:
    """Normal polling, engineering writes and diagnostics, a few exception responses, and port 5020."""
    with modbus_servers((502, 5020)), capture(_out("modbus_demo.pcap"), SCENARIOS["modbus"].bpf):
        hmi = _modbus_client(MODBUS_HMI)
        for cycle in range(4):
            for unit in MODBUS_UNITS:
                with journal.op(f"hmi poll {cycle} unit {unit} FC3 read holding") as n:
                    _check(n, hmi.read_holding_registers(0, count=10, device_id=unit))
                with journal.op(f"hmi poll {cycle} unit {unit} FC4 read input") as n:
                    _check(n, hmi.read_input_registers(0, count=8, device_id=unit))
            with journal.op(f"hmi poll {cycle} unit 1 FC1 read coils") as n:
                _check(n, hmi.read_coils(0, count=16, device_id=1))
            with journal.op(f"hmi poll {cycle} unit 1 FC2 read discrete inputs") as n:
                _check(n, hmi.read_discrete_inputs(0, count=16, device_id=1))
            time.sleep(0.2)
        hmi.close()

        ews = _modbus_client(MODBUS_EWS)
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("FC5 write single coil", lambda: ews.write_coil(3, True, device_id=1)),
            ("FC6 write single register", lambda: ews.write_register(10, 1234, device_id=1)),
            ("FC15 write multiple coils", lambda: ews.write_coils(8, [True, False, True, True], device_id=1)),
            ("FC16 write multiple registers", lambda: ews.write_registers(20, [11, 22, 33, 44], device_id=1)),
            ("FC22 mask write register", lambda: ews.mask_write_register(address=21, and_mask=0x00F2, or_mask=0x0025)),
            (
                "FC23 read/write multiple registers",
                lambda: ews.readwrite_registers(
                    read_address=20, read_count=4, write_address=30, values=[7, 8, 9], device_id=1
                ),
            ),
            ("FC16 write multiple registers unit 2", lambda: ews.write_registers(0, [500, 501], device_id=2)),
            ("FC8/0 diagnostics return query data", lambda: ews.diag_query_data(b"\xa5\x37", device_id=1)),
            ("FC8/1 diagnostics restart communications", lambda: ews.diag_restart_communication(False, device_id=1)),
            ("FC8/10 diagnostics clear counters", lambda: ews.diag_clear_counters(device_id=1)),
            ("FC8/11 diagnostics bus message count", lambda: ews.diag_read_bus_message_count(device_id=1)),
            ("FC7 read exception status", lambda: ews.read_exception_status(device_id=1)),
            ("FC11 get comm event counter", lambda: ews.diag_get_comm_event_counter(device_id=1)),
            ("FC12 get comm event log", lambda: ews.diag_get_comm_event_log(device_id=1)),
            ("FC17 report server id", lambda: ews.report_device_id(device_id=1)),
            ("FC24 read FIFO queue", lambda: ews.read_fifo_queue(address=0, device_id=1)),
            ("FC43/14 read device id basic", lambda: ews.read_device_information(read_code=1, device_id=1)),
            ("FC43/14 read device id regular", lambda: ews.read_device_information(read_code=2, device_id=1)),
            ("FC43/14 read device id specific", lambda: ews.read_device_information(read_code=4, object_id=5)),
            ("FC3 read past end (expect 0x02)", lambda: ews.read_holding_registers(95, count=10, device_id=1)),
            ("FC1 read past end (expect 0x02)", lambda: ews.read_coils(MODBUS_SIZE + 50, count=8, device_id=2)),
            ("FC3 unit 7 not served (expect 0x0b)", lambda: ews.read_holding_registers(0, count=2, device_id=7)),
        ]
        for name, call in steps:
            with journal.op(f"ews {name}") as n:
                _check(n, call())
        ews.close()
        with journal.op("ews FC65 user-defined function (expect 0x01)") as n:
            reply = _raw_modbus(MODBUS_EWS, bytes([0x41, 0x00, 0x01]), unit=1, tid=0x4141)
            if len(reply) >= 9 and reply[7] & 0x80:
                n.append(f"exception response fc=0x{reply[7]:02x} code={reply[8]}")

        gw = _modbus_client(MODBUS_HMI2, port=5020)
        for cycle in range(3):
            with journal.op(f"hmi2 :5020 poll {cycle} FC3 read holding") as n:
                _check(n, gw.read_holding_registers(0, count=6, device_id=1))
            with journal.op(f"hmi2 :5020 poll {cycle} FC1 read coils") as n:
                _check(n, gw.read_coils(0, count=8, device_id=1))
            time.sleep(0.2)
        with journal.op("hmi2 :5020 FC4 read input unit 2") as n:
            _check(n, gw.read_input_registers(0, count=4, device_id=2))
        gw.close()


# ---------------------------------------------------------------------------------------------------------
# S7comm: python-snap7 server on 102, an HMI reading and an engineering station doing everything else
# ---------------------------------------------------------------------------------------------------------

S7_HMI = "127.0.0.30"
S7_EWS = "127.0.0.40"


@contextlib.contextmanager
def s7_source_address(source: str) -> Iterator[None]:
    """Make snap7 clients connect from `source`: snap7's ISO-on-TCP connection has no bind option.

    Swaps, for the block only, the connection class snap7.client instantiates for one that binds its
    socket first; everything above TCP stays snap7's own code.
    """
    import snap7.client
    from snap7.connection import ISOTCPConnection

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
def s7_server(port: int = 102) -> Iterator[Any]:
    """Run a snap7 server with DB1, DB2, inputs, outputs, merkers, timers and counters registered."""
    import snap7
    from snap7.type import SrvArea

    ensure_port_free(port)
    server = snap7.server.Server(log=False)
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


def _s7_client(source: str) -> Any:
    import snap7

    client = snap7.client.Client()
    with s7_source_address(source):
        client.connect(LOOPBACK, 0, 1)  # rack 0 slot 1: remote TSAP 0x0101
    return client


@scenario("s7comm", "s7comm_demo.pcap", "tcp port 102")
def s7comm_demo(journal: Journal) -> None:
    """HMI reads, then an engineering station covering SZL, blocks, transfer, run/stop, clock and password."""
    from snap7.type import Area, Block

    with s7_server(), capture(_out("s7comm_demo.pcap"), SCENARIOS["s7comm"].bpf):
        with journal.op("hmi connect (COTP CR/CC, setup communication)"):
            hmi = _s7_client(S7_HMI)
        for cycle in range(3):
            with journal.op(f"hmi poll {cycle} read DB1.DBB0 16 bytes"):
                hmi.db_read(1, 0, 16)
            with journal.op(f"hmi poll {cycle} read inputs IB0..3"):
                hmi.read_area(Area.PE, 0, 0, 4)
            with journal.op(f"hmi poll {cycle} read outputs QB0..3"):
                hmi.read_area(Area.PA, 0, 0, 4)
            with journal.op(f"hmi poll {cycle} read merkers MB0..7"):
                hmi.read_area(Area.MK, 0, 0, 8)
            time.sleep(0.2)
        with journal.op("hmi read multi vars (DB1, DB2, MK, PE)"):
            hmi.read_multi_vars(
                [
                    {"area": Area.DB, "db_number": 1, "start": 0, "size": 4},
                    {"area": Area.DB, "db_number": 2, "start": 0, "size": 8},
                    {"area": Area.MK, "db_number": 0, "start": 4, "size": 2},
                    {"area": Area.PE, "db_number": 0, "start": 0, "size": 1},
                ]
            )
        with journal.op("hmi disconnect"):
            hmi.disconnect()

        with journal.op("ews connect (COTP CR/CC, setup communication)"):
            ews = _s7_client(S7_EWS)
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("read SZL 0x0000 (list of SZL ids)", lambda: ews.read_szl_list()),
            ("read SZL 0x0011 (module identification)", lambda: ews.read_szl(0x0011, 0)),
            ("read SZL 0x001C (component identification)", lambda: ews.read_szl(0x001C, 0)),
            ("read SZL 0x0424 (mode transition)", lambda: ews.read_szl(0x0424, 0)),
            ("read SZL 0x0131 (communication capabilities)", lambda: ews.read_szl(0x0131, 1)),
            ("get cpu info", lambda: ews.get_cpu_info()),
            ("get order code", lambda: ews.get_order_code()),
            ("get cp info", lambda: ews.get_cp_info()),
            ("get protection", lambda: ews.get_protection()),
            ("get cpu state", lambda: ews.get_cpu_state()),
            ("list blocks", lambda: ews.list_blocks()),
            ("list blocks of type DB", lambda: ews.list_blocks_of_type(Block.DB, 16)),
            ("get block info DB1", lambda: ews.get_block_info(Block.DB, 1)),
            ("upload DB1", lambda: ews.upload(1)),
            ("full upload DB2", lambda: ews.full_upload(Block.DB, 2)),
            ("download DB3", lambda: ews.download(bytearray(range(32)), 3)),
            ("write DB1.DBB8 4 bytes", lambda: ews.db_write(1, 8, bytearray(b"\x00\x00\x04\xd2"))),
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
            ("get plc datetime", lambda: ews.get_plc_datetime()),
            ("set plc datetime", lambda: ews.set_plc_datetime(datetime(2024, 5, 17, 8, 30, 0))),
            ("set session password", lambda: ews.set_session_password("s7secret")),
            ("clear session password", lambda: ews.clear_session_password()),
            ("plc stop", lambda: ews.plc_stop()),
            ("get cpu state after stop", lambda: ews.get_cpu_state()),
            ("plc hot start", lambda: ews.plc_hot_start()),
            ("plc stop again", lambda: ews.plc_stop()),
            ("plc cold start", lambda: ews.plc_cold_start()),
            ("get cpu state after start", lambda: ews.get_cpu_state()),
            ("compress memory", lambda: ews.compress(1000)),
            ("copy ram to rom", lambda: ews.copy_ram_to_rom(1000)),
            ("delete block DB3", lambda: ews.delete(Block.DB, 3)),
            ("read DB99 (not registered)", lambda: ews.db_read(99, 0, 4)),
        ]
        for name, call in steps:
            with journal.op(f"ews {name}"):
                call()
        with journal.op("ews disconnect"):
            ews.disconnect()


# ---------------------------------------------------------------------------------------------------------
# MQTT: mosquitto broker with a password file, paho-mqtt sensors, controller, historian and an MQTT 5 client
# ---------------------------------------------------------------------------------------------------------

MQTT_USERS = {
    "sensor-pump1": "pump1-pass",
    "sensor-boiler": "boiler-pass",
    "controller": "ctrl-pass",
    "historian": "hist-pass",
    "mes-gateway": "mes-pass",
}


@contextlib.contextmanager
def mosquitto_broker(port: int = 1883) -> Iterator[None]:
    """Run mosquitto on 127.0.0.1:`port` with `allow_anonymous false` and the MQTT_USERS password file."""
    ensure_port_free(port)
    with tempfile.TemporaryDirectory(prefix="mqtt-demo-") as tmp:
        passwd = Path(tmp) / "passwd"
        passwd.touch(mode=0o600)
        for user, password in MQTT_USERS.items():
            subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, password], check=True)
        conf = Path(tmp) / "mosquitto.conf"
        conf.write_text(
            "\n".join(
                [
                    f"listener {port} {LOOPBACK}",
                    "allow_anonymous false",
                    f"password_file {passwd}",
                    "persistence false",  # no retained state survives between runs: same capture every time
                    "user root" if os.geteuid() == 0 else "",  # else it drops to `mosquitto` and cannot read tmp
                    "log_dest stderr",
                    "connection_messages true",
                    "",
                ]
            )
        )
        log = (Path(tmp) / "mosquitto.log").open("w+")
        broker = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_port(LOOPBACK, port)
            yield
        finally:
            broker.terminate()
            broker.wait(10)
            log.seek(0)
            LOG.debug("mosquitto log:\n%s", log.read())
            log.close()


class MqttPeer:
    """A paho-mqtt 2.x client on its own source address, with calls that block until the broker answers.

    Blocking on CONNACK/SUBACK/UNSUBACK/PUBACK/PUBCOMP keeps the packet order the same from run to run.
    """

    def __init__(
        self,
        client_id: str,
        source: str,
        *,
        protocol: int | None = None,
        user: str | None = None,
        password: str | None = None,
        keepalive: int = 60,
    ) -> None:
        import paho.mqtt.client as mqtt

        self.source = source
        self.keepalive = keepalive
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311 if protocol is None else protocol,
            reconnect_on_failure=False,  # a refused login must stay one attempt, not a reconnect loop
        )
        if user is not None:
            self.client.username_pw_set(user, MQTT_USERS.get(user) if password is None else password)
        self._cond = threading.Condition()
        self._acked: set[int] = set()
        self.connack: Any = None
        self.messages: list[tuple[str, bytes]] = []
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_ack
        self.client.on_unsubscribe = self._on_ack
        self.client.on_message = self._on_message

    def _on_connect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        with self._cond:
            self.connack = reason
            self._cond.notify_all()

    def _on_ack(self, _c: Any, _u: Any, mid: int, _reasons: Any, _props: Any) -> None:
        with self._cond:
            self._acked.add(mid)
            self._cond.notify_all()

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        with self._cond:
            self.messages.append((msg.topic, msg.payload))
            self._cond.notify_all()

    def _wait(self, predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
        with self._cond:
            if not self._cond.wait_for(predicate, timeout):
                raise TimeoutError(f"{self.source}: no {what}")

    def connect(self, properties: Any = None) -> Any:
        """Send CONNECT and wait for CONNACK; raise if the broker refused the login."""
        self.client.connect(LOOPBACK, 1883, self.keepalive, bind_address=self.source, properties=properties)
        self.client.loop_start()
        self._wait(lambda: self.connack is not None, "CONNACK")
        if self.connack.is_failure:
            self.client.loop_stop()
            raise PermissionError(f"CONNACK refused: {self.connack}")
        return self.connack

    def subscribe(self, topic: str, qos: int = 0, options: Any = None, properties: Any = None) -> None:
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

    def publish(self, topic: str, payload: str | bytes, qos: int = 0, retain: bool = False, properties: Any = None) -> None:
        """Publish; for QoS 1/2 wait for PUBACK/PUBCOMP, and let the broker fan out before the next step."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if qos:
            info.wait_for_publish(5)
        time.sleep(0.05)

    def wait_messages(self, count: int) -> None:
        """Wait until this peer has received `count` messages in total."""
        self._wait(lambda: len(self.messages) >= count, f"{count} messages")

    def disconnect(self, reasoncode: Any = None, properties: Any = None) -> None:
        """Send DISCONNECT and stop the network thread."""
        self.client.disconnect(reasoncode=reasoncode, properties=properties)
        self.client.loop_stop()


@scenario("mqtt", "mqtt_demo.pcap", "tcp port 1883")
def mqtt_demo(journal: Journal) -> None:
    """Telemetry at QoS 0/1/2 with retained status, a command, a wildcard historian, a refused login, MQTT 5."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode
    from paho.mqtt.subscribeoptions import SubscribeOptions

    with mosquitto_broker(), capture(_out("mqtt_demo.pcap"), SCENARIOS["mqtt"].bpf):
        historian = MqttPeer("historian-01", "127.0.0.70", user="historian")
        controller = MqttPeer("line1-controller", "127.0.0.60", user="controller", keepalive=2)
        pump = MqttPeer("pump1-sensor", "127.0.0.50", user="sensor-pump1")
        boiler = MqttPeer("boiler-sensor", "127.0.0.51", user="sensor-boiler", protocol=mqtt.MQTTv31)
        rogue = MqttPeer("maint-laptop", "127.0.0.99", user="controller", password="Passw0rd!")
        mes = MqttPeer("mes-gateway", "127.0.0.80", user="mes-gateway", protocol=mqtt.MQTTv5)

        with journal.op("historian connect (3.1.1) + subscribe # QoS 1"):
            historian.connect()
            historian.subscribe("#", 1)
        with journal.op("controller connect (3.1.1, keepalive 2 s) + subscribe plant/+/telemetry"):
            controller.connect()
            controller.subscribe("plant/+/telemetry", 1)
        with journal.op("pump1 connect (3.1.1) + subscribe plant/pump1/cmd"):
            pump.connect()
            pump.subscribe("plant/pump1/cmd", 1)
        with journal.op("pump1 publish retained status QoS 1"):
            pump.publish("plant/pump1/status", "online", qos=1, retain=True)
        for i in range(3):
            with journal.op(f"pump1 publish telemetry QoS 0 #{i}"):
                pump.publish("plant/pump1/telemetry", f'{{"flow":{12.5 + i},"rpm":{1450 + 10 * i}}}')
        for i in range(2):
            with journal.op(f"pump1 publish telemetry QoS 1 #{i}"):
                pump.publish("plant/pump1/telemetry", f'{{"flow":{15.5 + i},"rpm":{1480 + 10 * i}}}', qos=1)
        with journal.op("boiler connect (MQTT 3.1, MQIsdp)"):
            boiler.connect()
        for i in range(2):
            with journal.op(f"boiler publish telemetry QoS 2 #{i}"):
                boiler.publish("plant/boiler/telemetry", f'{{"temp_c":{81.0 + i},"bar":2.{i}}}', qos=2)
        with journal.op("boiler publish retained config QoS 2"):
            boiler.publish("plant/boiler/config", '{"max_temp_c":95}', qos=2, retain=True)
        with journal.op("controller received 7 telemetry messages"):
            controller.wait_messages(7)
        with journal.op("controller publish command plant/pump1/cmd QoS 1"):
            controller.publish("plant/pump1/cmd", '{"setpoint_rpm":1500}', qos=1)
            pump.wait_messages(1)

        with journal.op("rogue login with wrong password (expect refused)") as notes:
            try:
                rogue.connect()
            except PermissionError as exc:
                notes.append(str(exc))

        with journal.op("mes-gateway connect (MQTT 5, session expiry, user property)"):
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 300
            props.ReceiveMaximum = 20
            props.UserProperty = [("site", "demo-plant"), ("line", "1")]
            mes.connect(properties=props)
        with journal.op("mes-gateway subscribe plant/+/status (no local, subscription id)"):
            sub_props = Properties(PacketTypes.SUBSCRIBE)
            sub_props.SubscriptionIdentifier = 7
            mes.subscribe("plant/+/status", options=SubscribeOptions(qos=1, noLocal=True), properties=sub_props)
            mes.wait_messages(1)  # the retained "online"
        with journal.op("mes-gateway publish order with properties + topic alias 1"):
            pub = Properties(PacketTypes.PUBLISH)
            pub.PayloadFormatIndicator = 1
            pub.ContentType = "application/json"
            pub.ResponseTopic = "mes/line1/replies"
            pub.CorrelationData = b"order-0001"
            pub.MessageExpiryInterval = 120
            pub.UserProperty = [("schema", "order/v2")]
            pub.TopicAlias = 1
            mes.publish("mes/line1/orders", '{"order":1,"qty":40}', qos=1, properties=pub)
        with journal.op("mes-gateway publish via topic alias only (empty topic)"):
            alias = Properties(PacketTypes.PUBLISH)
            alias.TopicAlias = 1
            alias.ContentType = "application/json"
            mes.publish("", '{"order":2,"qty":25}', qos=1, properties=alias)
        with journal.op("mes-gateway publish QoS 2 with correlation data"):
            req = Properties(PacketTypes.PUBLISH)
            req.ResponseTopic = "mes/line1/replies"
            req.CorrelationData = b"order-0003"
            mes.publish("mes/line1/orders", '{"order":3,"qty":10}', qos=2, properties=req)
        with journal.op("mes-gateway unsubscribe plant/+/status"):
            mes.unsubscribe("plant/+/status")
        with journal.op("mes-gateway disconnect (reason 0, session expiry 0)"):
            bye = Properties(PacketTypes.DISCONNECT)
            bye.SessionExpiryInterval = 0
            mes.disconnect(ReasonCode(PacketTypes.DISCONNECT, "Normal disconnection"), bye)

        with journal.op("controller idle past keepalive (PINGREQ/PINGRESP)"):
            time.sleep(controller.keepalive + 0.8)
        with journal.op("controller unsubscribe + disconnect"):
            controller.unsubscribe("plant/+/telemetry")
            controller.disconnect()
        with journal.op("sensors disconnect"):
            pump.disconnect()
            boiler.disconnect()
        with journal.op("historian unsubscribe # + disconnect"):
            historian.unsubscribe("#")
            historian.disconnect()


# ---------------------------------------------------------------------------------------------------------
# Output location (set by main) and entry point
# ---------------------------------------------------------------------------------------------------------

_OUT_DIR = HERE


def _out(filename: str) -> Path:
    return _OUT_DIR / filename


def main(argv: list[str] | None = None) -> int:
    """Run the chosen scenarios, each into its own capture, and print what failed."""
    global _OUT_DIR
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", nargs="?", default="all", choices=[*SCENARIOS, "all"])
    parser.add_argument("--out", type=Path, default=HERE, help="directory for the captures (default: pcaps/)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every operation")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    LOG.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    for noisy in ("pymodbus", "snap7", "s7"):  # they log refused operations that the journal already reports
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    if shutil.which("tcpdump") is None:
        parser.error("tcpdump is required")
    _OUT_DIR = args.out.resolve()
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    for name in names:
        sc = SCENARIOS[name]
        LOG.info("== %s -> %s", name, _out(sc.filename))
        journal = Journal()
        sc.run(journal)
        print(f"{name}: {_out(sc.filename)}: {journal.summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
