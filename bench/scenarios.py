"""Labelled scenario generator for the learned baseline and anomaly model (issue 6).

Real peers on loopback, each with its own 127.0.0.x address, recorded by tcpdump as pcaps/generate.py does
(its capture helper, pymodbus servers, python-snap7 server, mosquitto broker and paho-mqtt peers are reused):

- normal operation: two HMIs polling the pymodbus server on :502 and a third one on :5020 with jitter, an S7 HMI
  polling the python-snap7 server, an engineering workstation doing occasional legitimate writes (setpoint within
  its range, a recipe, a coil), MQTT telemetry from two sensors, a controller command now and then, a historian;
- one attack capture per class, each with normal background traffic and ``instances`` labelled attack instances.

Time compression: hours of operation are played ``SCALE`` (500) times faster than real time and every capture
timestamp is rewritten afterwards as ``base + (t - t0) * SCALE`` into a nanosecond pcap. Polling every 5 s of
capture time is therefore 10 ms of wall time; jitter, latency and everything else are scaled alike. Labels
(``<capture>.labels.json``: attack class, start and end of each instance in rewritten capture time) use the same
transform.

    python bench/scenarios.py normal --hours 24 --seed 1 --out bench/out/scenarios/train.pcap
    python bench/scenarios.py attack polling_flood --seed 7 --out bench/out/scenarios/polling_flood.pcap
    python bench/scenarios.py all --out-dir bench/out/scenarios       # what bench/eval_model.py runs

The small captures in tests/data/anomaly/ (gzip'd afterwards):

    python bench/scenarios.py normal --small --ews-period-s 40 --hours 0.1667 --seed 11 --day 30 --out normal_train.pcap
    python bench/scenarios.py normal --small --ews-period-s 40 --hours 0.1 --seed 12 --day 31 --out normal_other.pcap
    python bench/scenarios.py attack mixed --small --ews-period-s 40 --seed 13 --day 32 --warmup-min 1 \
        --gap-min 1 1.5 --period-change-min 2 --flood-s 15 --tail-min 1 --out attacks_mixed.pcap

Needs root (tcpdump on lo, ports 502/5020/102/1883) and the peers of pcaps/generate.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import random
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "pcaps"))

import generate as gen  # noqa: E402

LOG = logging.getLogger("bench.scenarios")
SCALE = 500  # capture seconds per wall second
BPF = "tcp port 502 or tcp port 5020 or tcp port 102 or tcp port 1883"
BASE_NS = 1_714_953_600 * 10**9  # 2024-05-06 00:00:00 UTC: start of rewritten capture time

HMI_A, HMI_B, HMI_C = "127.0.0.10", "127.0.0.11", "127.0.0.12"
EWS = gen.MODBUS_EWS  # 127.0.0.20
S7_HMI = gen.S7_HMI  # 127.0.0.30
PUMP, BOILER, CONTROLLER, HISTORIAN = "127.0.0.50", "127.0.0.51", "127.0.0.60", "127.0.0.70"
SETPOINT_REG, SETPOINT_RANGE = 10, (1400, 1600)
PERIOD_CHANGE_S = 600.0  # how long a changed polling period lasts (capture seconds)
EWS_PERIOD_S = 1200.0  # the engineering workstation considers a visit this often (half of them happen)
FLOOD_S = 60.0  # how long a polling flood lasts (capture seconds)
NO_ACK_BPF = f"({BPF}) and (tcp[tcpflags] & (tcp-syn|tcp-fin|tcp-rst) != 0 or ip[2:2] - ((ip[0] & 0xf) << 2) - ((tcp[12] & 0xf0) >> 2) != 0)"
TAIL_MIN = 10.0  # normal traffic after the last attack instance (capture minutes)
SMALL = False  # the small test captures: no pure TCP ACKs, every EWS visit writes everything
ATTACKS = (
    "recon_scan", "write_new_host", "setpoint_out_of_range", "replay_writes", "polling_flood",
    "polling_period_change", "s7_cpu_stop", "mqtt_new_topic",
)  # fmt: skip


def real(capture_seconds: float) -> float:
    """Wall seconds for a span of capture time."""
    return capture_seconds / SCALE


@dataclass
class Label:
    attack: str
    start_ns: int
    end_ns: int
    detail: str


@dataclass
class Plant:
    """The normal plant: periodic peers in threads until ``stop`` is set."""

    rng: random.Random
    stop: threading.Event = field(default_factory=threading.Event)
    period_factor: dict[str, float] = field(default_factory=dict)  # per peer name; 1.0 = normal polling
    ews_history: list[int] = field(default_factory=list)  # setpoints written, for the replay attack
    threads: list[threading.Thread] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _periodic(self, name: str, period: float, jitter: float, body: Callable[[], None]) -> None:
        """Run ``body`` every ``period`` capture seconds (uniform jitter ±``jitter``), phase-shifted at random."""
        rng = random.Random(self.rng.random())
        nxt = time.monotonic() + real(period) * rng.random()
        while not self.stop.is_set():
            delay = nxt - time.monotonic()
            if delay > 0:
                self.stop.wait(delay)
                if self.stop.is_set():
                    return
            try:
                body()
            except Exception as e:  # a refused operation is traffic, not the end of the plant
                with self.lock:
                    self.errors.append(f"{name}: {type(e).__name__}: {e}")
            f = self.period_factor.get(name, 1.0)
            nxt = max(nxt + real(period * f) * rng.uniform(1 - jitter, 1 + jitter), time.monotonic())

    def start(self) -> None:
        hmi_a = gen._modbus_client(HMI_A)
        hmi_b = gen._modbus_client(HMI_B)
        hmi_c = gen._modbus_client(HMI_C, port=5020)
        s7 = gen._s7_client(S7_HMI)
        from snap7.type import Area

        def poll_a() -> None:
            hmi_a.read_holding_registers(0, count=20, device_id=1)
            hmi_a.read_coils(0, count=16, device_id=1)

        def poll_b() -> None:
            hmi_b.read_input_registers(0, count=8, device_id=2)
            hmi_b.read_holding_registers(0, count=10, device_id=2)

        def poll_c() -> None:
            hmi_c.read_holding_registers(0, count=6, device_id=1)

        def poll_s7() -> None:
            s7.db_read(1, 0, 16)
            s7.read_area(Area.PE, 0, 0, 4)

        ews_rng = random.Random(self.rng.random())

        def ews_work() -> None:
            """An engineer's visit: one to three legitimate writes on a fresh connection."""
            if ews_rng.random() > 0.5 and not SMALL:  # visits at random: mean one per 2 * EWS_PERIOD_S
                return
            c = gen._modbus_client(EWS)
            try:
                value = ews_rng.randint(*SETPOINT_RANGE)
                c.write_register(SETPOINT_REG, value, device_id=1)
                self.ews_history.append(value)
                if ews_rng.random() < 0.5 or SMALL:  # small captures: every visit does every kind of write
                    c.write_registers(20, [ews_rng.randint(0, 100) for _ in range(4)], device_id=1)
                if ews_rng.random() < 0.3 or SMALL:
                    c.write_coil(3, ews_rng.random() < 0.5, device_id=1)
            finally:
                c.close()

        pump = self._mqtt("pump1-sensor", PUMP, "sensor-pump1")
        boiler = self._mqtt("boiler-sensor", BOILER, "sensor-boiler")
        controller = self._mqtt("line1-controller", CONTROLLER, "controller")
        historian = self._mqtt("historian-01", HISTORIAN, "historian")
        controller.subscribe("plant/+/telemetry", 1)
        historian.subscribe("plant/#", 0)
        pump.subscribe("plant/pump1/cmd", 1)
        self.mqtt_pump = pump
        mq_rng = random.Random(self.rng.random())

        def pump_tel() -> None:
            pump.client.publish("plant/pump1/telemetry", f'{{"flow":{mq_rng.uniform(10, 20):.2f},"rpm":{mq_rng.randint(1400, 1500)}}}')

        def boiler_tel() -> None:
            boiler.client.publish("plant/boiler/telemetry", f'{{"temp_c":{mq_rng.uniform(75, 85):.1f},"bar":{mq_rng.uniform(1.8, 2.4):.2f}}}', qos=1)

        def controller_cmd() -> None:
            if mq_rng.random() < 0.5:
                controller.client.publish("plant/pump1/cmd", f'{{"setpoint_rpm":{mq_rng.randint(1400, 1500)}}}', qos=1)

        for name, period, jitter, body in (
            ("hmi_a", 5.0, 0.05, poll_a), ("hmi_b", 10.0, 0.05, poll_b), ("hmi_c", 10.0, 0.05, poll_c),
            ("s7_hmi", 5.0, 0.05, poll_s7), ("ews", EWS_PERIOD_S, 0.5, ews_work), ("pump", 10.0, 0.1, pump_tel),
            ("boiler", 10.0, 0.1, boiler_tel), ("controller", 900.0, 0.5, controller_cmd),
        ):  # fmt: skip
            t = threading.Thread(target=self._periodic, args=(name, period, jitter, body), name=name, daemon=True)
            self.threads.append(t)
        self._closers = [hmi_a.close, hmi_b.close, hmi_c.close, s7.disconnect] + [
            p.disconnect for p in (pump, boiler, controller, historian)
        ]
        for t in self.threads:
            t.start()

    def _mqtt(self, client_id: str, source: str, user: str) -> gen.MqttPeer:
        peer = gen.MqttPeer(client_id, source, user, keepalive=60)
        peer.connect()
        return peer

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(5)
        for c in self._closers:
            with contextlib.suppress(Exception):
                c()


# ---------------------------------------------------------------------------------------------------------
# Attacks: each takes the plant, the instance number and a rng, and returns a short description
# ---------------------------------------------------------------------------------------------------------


def _mbap(tid: int, unit: int, pdu: bytes) -> bytes:
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


def _raw(source: str, port: int, frames: list[bytes]) -> None:
    with socket.create_connection((gen.LOOPBACK, port), timeout=1, source_address=(source, 0)) as s:
        s.settimeout(0.05)
        for f in frames:
            s.sendall(f)
            with contextlib.suppress(OSError):
                s.recv(4096)


def recon_scan(plant: Plant, i: int, rng: random.Random) -> str:
    """A new host identifies the Modbus server, sweeps unit ids and addresses, then touches S7 and MQTT."""
    src = f"127.0.0.{100 + i}"
    frames = [_mbap(1, 1, bytes([0x2B, 0x0E, 0x01, 0x00])), _mbap(2, 1, bytes([0x11]))]
    frames += [_mbap(3 + u, u, struct.pack(">BHH", 3, 0, 1)) for u in range(0, 8)]
    frames += [_mbap(20 + k, 1, struct.pack(">BHH", 3, a, 10)) for k, a in enumerate(range(0, 200, 40))]
    _raw(src, 502, frames)
    with contextlib.suppress(Exception):
        c = gen._s7_client(src)
        c.read_szl(0x0011, 0)
        c.disconnect()
    with contextlib.suppress(Exception):
        peer = gen.MqttPeer(f"scan-{i}", src, "controller", password="guess")
        with contextlib.suppress(PermissionError, TimeoutError):
            peer.connect()
    return f"scan from {src}"


def write_new_host(plant: Plant, i: int, rng: random.Random) -> str:
    """A host never seen before writes an in-range setpoint."""
    src = f"127.0.0.{90 + i}"
    c = gen._modbus_client(src)
    c.write_register(SETPOINT_REG, rng.randint(*SETPOINT_RANGE), device_id=1)
    c.close()
    return f"FC6 from {src}"


def setpoint_out_of_range(plant: Plant, i: int, rng: random.Random) -> str:
    """The engineering workstation's address writes the setpoint far outside its range."""
    value = rng.choice([rng.randint(0, 900), rng.randint(3000, 9000)])
    c = gen._modbus_client(EWS)
    c.write_register(SETPOINT_REG, value, device_id=1)
    c.write_register(SETPOINT_REG, rng.randint(*SETPOINT_RANGE), device_id=1)  # and sets it back
    c.close()
    return f"setpoint {value}"


def replay_writes(plant: Plant, i: int, rng: random.Random) -> str:
    """Old, legitimate writes (values seen before) replayed from the EWS address in one burst."""
    old = list(plant.ews_history[-20:]) or [SETPOINT_RANGE[0]]
    c = gen._modbus_client(EWS)
    for k in range(20):
        c.write_register(SETPOINT_REG, old[k % len(old)], device_id=1)
    c.close()
    return f"{20} replayed writes"


def polling_flood(plant: Plant, i: int, rng: random.Random) -> str:
    """HMI A's address reads as fast as it can for FLOOD_S (60) capture seconds."""
    c = gen._modbus_client(HMI_A)
    end = time.monotonic() + real(FLOOD_S)
    n = 0
    while time.monotonic() < end:
        c.read_holding_registers(0, count=20, device_id=1)
        n += 1
    c.close()
    return f"{n} reads"


def polling_period_change(plant: Plant, i: int, rng: random.Random) -> str:
    """HMI A polls at another period (faster or slower) for 10 capture minutes, then returns to normal."""
    factor = 0.4 if i % 2 == 0 else 2.5
    plant.period_factor["hmi_a"] = factor
    time.sleep(real(PERIOD_CHANGE_S))
    plant.period_factor["hmi_a"] = 1.0
    return f"period x{factor}"


def s7_cpu_stop(plant: Plant, i: int, rng: random.Random) -> str:
    """The S7 HMI's address stops the CPU, then starts it again a minute later."""
    c = gen._s7_client(S7_HMI)
    c.plc_stop()
    time.sleep(real(60))
    c.plc_hot_start()
    c.disconnect()
    return "plc stop"


def mqtt_new_topic(plant: Plant, i: int, rng: random.Random) -> str:
    """The pump sensor (same client, same connection) publishes to a topic it never used."""
    topic = ("plant/pump1/cmd", "plant/boiler/cmd", "plant/pump1/firmware", "$SYS/broker/debug")[i % 4]
    plant.mqtt_pump.client.publish(topic, '{"x":1}', qos=1)
    return f"publish {topic}"


ATTACK_FUNCS: dict[str, Callable[[Plant, int, random.Random], str]] = {f.__name__: f for f in (
    recon_scan, write_new_host, setpoint_out_of_range, replay_writes, polling_flood, polling_period_change,
    s7_cpu_stop, mqtt_new_topic,
)}  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# Capture and timestamp rewrite
# ---------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def big_buffer_capture(path: Path, bpf: str) -> Iterator[None]:
    """generate.capture with a 64 MiB kernel buffer (tcpdump -B): hours of compressed traffic otherwise lose
    packets to the kernel in bursts, and a lost poll looks like a stalled poller."""
    real_popen = subprocess.Popen

    def popen(cmd: list[str], *args: object, **kwargs: object) -> subprocess.Popen[str]:
        if cmd and cmd[0] == "tcpdump":
            cmd = [cmd[0], "-B", "65536", *cmd[1:]]
        return real_popen(cmd, *args, **kwargs)  # type: ignore[call-overload,no-any-return]

    gen.subprocess.Popen = popen  # type: ignore[assignment]
    try:
        with gen.capture(path, bpf, settle=0.3):
            yield
    finally:
        gen.subprocess.Popen = real_popen  # type: ignore[misc]


@contextlib.contextmanager
def servers() -> Iterator[None]:
    with gen.modbus_servers((502, 5020)), gen.s7_server(), gen.mosquitto_broker():
        yield


def rewrite(raw: Path, out: Path, t0: float, base_ns: int) -> None:
    """Copy a microsecond pcap from tcpdump into a nanosecond pcap with time scaled by SCALE around ``t0``."""
    data = raw.read_bytes()
    magic = data[:4]
    order = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">"}[magic]
    hdr = struct.Struct(order + "IIII")
    t0_us = int(t0 * 1e6)
    parts = [struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, *struct.unpack_from(order + "II", data, 16))]
    pos = 24
    while pos + 16 <= len(data):
        sec, usec, incl, orig = hdr.unpack_from(data, pos)
        ns = base_ns + (sec * 1_000_000 + usec - t0_us) * 1000 * SCALE
        parts.append(struct.pack("<IIII", ns // 10**9, ns % 10**9, incl, orig))
        parts.append(data[pos + 16 : pos + 16 + incl])
        pos += 16 + incl
    out.write_bytes(b"".join(parts))


def run_capture(
    out: Path, hours: float, seed: int, base_ns: int, attack: str | None = None, instances: int = 10,
    warmup_min: float = 20.0, gap_min: tuple[float, float] = (12.0, 18.0),
) -> list[Label]:  # fmt: skip
    """Play the plant for ``hours`` of capture time (or until the attack instances are done) into ``out``."""
    rng = random.Random(seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    raw = out.with_suffix(".raw.pcap")
    labels: list[Label] = []
    with servers():
        plant = Plant(rng)
        t0 = time.time()
        with big_buffer_capture(raw, NO_ACK_BPF if SMALL else BPF):
            t0 = time.time()
            plant.start()
            try:
                if attack is None:
                    time.sleep(real(hours * 3600))
                else:
                    # "mixed": one instance of every class in turn (the small capture the tests use)
                    plan = [(a, 0) for a in ATTACKS] if attack == "mixed" else [(attack, i) for i in range(instances)]
                    time.sleep(real(warmup_min * 60))
                    for name, i in plan:
                        func = ATTACK_FUNCS[name]
                        time.sleep(real(rng.uniform(*gap_min) * 60))
                        start = time.time()
                        try:
                            detail = func(plant, i, rng)
                        except Exception as e:
                            detail = f"error {type(e).__name__}: {e}"
                            LOG.warning("%s #%d: %s", name, i, detail)
                        end = time.time()
                        labels.append(Label(name, _scaled(start, t0, base_ns), _scaled(end, t0, base_ns), detail))
                    time.sleep(real(TAIL_MIN * 60))
            finally:
                plant.close()
        if plant.errors:
            LOG.warning("%s: %d peer errors, first: %s", out.name, len(plant.errors), plant.errors[0])
    rewrite(raw, out, t0, base_ns)
    raw.unlink()
    meta = {"scale": SCALE, "seed": seed, "attack": attack, "labels": [lab.__dict__ for lab in labels]}
    out.with_suffix(".labels.json").write_text(json.dumps(meta, indent=1))
    return labels


def _scaled(t: float, t0: float, base_ns: int) -> int:
    return base_ns + int((t - t0) * 1e9) * SCALE


DAY_NS = 86_400 * 10**9


def generate_all(out_dir: Path, train_hours: float, test_hours: float, instances: int) -> None:
    """The evaluation data set: train (seed 1), held-out normal (seed 2), one capture per attack class."""
    out_dir.mkdir(parents=True, exist_ok=True)
    LOG.info("normal train, %.1f h", train_hours)
    run_capture(out_dir / "train.pcap", train_hours, 1, BASE_NS)
    LOG.info("normal held-out, %.1f h", test_hours)
    run_capture(out_dir / "normal_test.pcap", test_hours, 2, BASE_NS + 7 * DAY_NS)
    for k, name in enumerate(ATTACKS):
        LOG.info("attack %s, %d instances", name, instances)
        run_capture(out_dir / f"attack_{name}.pcap", 0, 100 + k, BASE_NS + (10 + k) * DAY_NS, name, instances)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("what", choices=["normal", "attack", "all"])
    p.add_argument("attack", nargs="?", choices=[*ATTACKS, "mixed"])
    p.add_argument("--out", type=Path, help="capture to write (normal, attack)")
    p.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "out" / "scenarios")
    p.add_argument("--hours", type=float, default=1.0)
    p.add_argument("--train-hours", type=float, default=24.0)
    p.add_argument("--test-hours", type=float, default=24.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--instances", type=int, default=10)
    p.add_argument("--warmup-min", type=float, default=20.0)
    p.add_argument("--gap-min", type=float, nargs=2, default=(12.0, 18.0))
    p.add_argument("--day", type=int, default=0, help="capture day offset from 2024-05-06")
    p.add_argument("--period-change-min", type=float, default=10.0, help="duration of a changed polling period")
    p.add_argument("--tail-min", type=float, default=10.0, help="normal traffic after the last attack instance")
    p.add_argument("--flood-s", type=float, default=60.0, help="duration of a polling flood")
    p.add_argument("--ews-period-s", type=float, default=1200.0, help="how often the engineering workstation may write")
    p.add_argument("--small", action="store_true", help="test captures: no pure TCP ACKs, every EWS visit does all writes")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("pymodbus", "snap7", "s7"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    base = BASE_NS + a.day * DAY_NS
    global PERIOD_CHANGE_S, TAIL_MIN, FLOOD_S, SMALL, EWS_PERIOD_S
    PERIOD_CHANGE_S, TAIL_MIN, FLOOD_S, SMALL = a.period_change_min * 60, a.tail_min, a.flood_s, a.small
    EWS_PERIOD_S = a.ews_period_s
    if a.what == "all":
        generate_all(a.out_dir, a.train_hours, a.test_hours, a.instances)
    elif a.what == "normal":
        run_capture(a.out or a.out_dir / f"normal_{a.seed}.pcap", a.hours, a.seed, base)
    else:
        if not a.attack:
            p.error("attack: name the attack class")
        run_capture(a.out or a.out_dir / f"attack_{a.attack}.pcap", 0, a.seed, base, a.attack, a.instances,
                    a.warmup_min, tuple(a.gap_min))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
