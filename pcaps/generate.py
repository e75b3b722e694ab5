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

    tcpdump gets a full snaplen and `-U` so each packet is flushed as it arrives; we wait for its
    "listening on" line plus `settle` seconds before yielding (no lost SYN) and again before SIGINT
    (no lost FIN/ACK), then wait for it to exit so the file is complete when the block ends.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["tcpdump", "-i", interface, "-s", "0", "-U", "-n", "-w", str(path)]
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
            LOG.info("  %-48s error  %s: %s", name, type(exc).__name__, exc)
            return
        outcome = "refused" if notes else "ok"
        self.entries.append((name, outcome, "; ".join(notes)))
        LOG.info("  %-48s %-6s %s", name, outcome, "; ".join(notes))

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
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    LOG.setLevel(logging.INFO)
    for noisy in ("pymodbus", "snap7", "s7"):
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
