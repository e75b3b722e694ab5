"""Live capture end to end on a small plant built from network namespaces (created and removed here).

PLC (pymodbus + snap7), broker (mosquitto), HMI and attacker each live in a namespace joined by a bridge in the
root namespace; the sensor captures on the bridge, receive-only. Skips where namespaces cannot be made.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PEERS = str(ROOT / "tests" / "live_peers.py")
NET = "10.77.0"
HOSTS = {"plc": 10, "broker": 20, "hmi": 30, "attacker": 66}


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=check)


def _can_netns() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not shutil.which("ip"):
        return "iproute2 (ip) is not installed"
    probe = f"icsprobe{os.getpid()}"
    if sh("ip", "netns", "add", probe, check=False).returncode != 0:
        return "cannot create network namespaces here"
    sh("ip", "netns", "del", probe, check=False)
    return None


class Plant:
    def __init__(self) -> None:
        tag = str(os.getpid() % 100000)
        self.bridge = f"icsbr{tag}"
        self.ns = {name: f"ics-{name}-{tag}" for name in HOSTS}
        self.addr = {name: f"{NET}.{octet}" for name, octet in HOSTS.items()}
        self.procs: list[subprocess.Popen] = []

    def up(self) -> None:
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("sysctl", "-qw", f"net.ipv6.conf.{self.bridge}.disable_ipv6=1", check=False)
        sh("ip", "link", "set", self.bridge, "up")
        for i, (name, ns) in enumerate(self.ns.items()):
            host_if, peer_if = f"{self.bridge[:9]}h{i}", f"{self.bridge[:9]}p{i}"
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", peer_if)
            sh("ip", "link", "set", peer_if, "netns", ns)
            sh("sysctl", "-qw", f"net.ipv6.conf.{host_if}.disable_ipv6=1", check=False)
            sh("ip", "link", "set", host_if, "master", self.bridge)
            sh("ip", "link", "set", host_if, "up")
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{self.addr[name]}/24", "dev", peer_if)
            sh("ip", "netns", "exec", ns, "ip", "link", "set", peer_if, "up")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")

    def start(self, name: str, *args: str) -> subprocess.Popen:
        p = subprocess.Popen(["ip", "netns", "exec", self.ns[name], sys.executable, PEERS, name, *args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        self.procs.append(p)
        return p

    def down(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
        for ns in self.ns.values():
            # Kill anything left in the namespace (mosquitto execs itself), then remove it.
            pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            sh("ip", "netns", "del", ns, check=False)
        sh("ip", "link", "del", self.bridge, check=False)


@pytest.fixture
def plant() -> Iterator[Plant]:
    why = _can_netns()
    if why:
        pytest.skip(why)
    p = Plant()
    try:
        p.up()
        yield p
    finally:
        p.down()


def _tx_packets(iface: str) -> int:
    return int(Path(f"/sys/class/net/{iface}/statistics/tx_packets").read_text())


def test_live_plant_end_to_end(plant: Plant, tmp_path: Path) -> None:
    from tests.es_server import EsServer

    es = EsServer("9.1.0").start()
    cfg = tmp_path / "sensor.yml"
    cfg.write_text(
        "sensor: {name: live-test, site: test-plant}\n"
        f"outputs: {{elasticsearch: {{spool_dir: {tmp_path / 'spool'}}}}}\n"
        "lists:\n"
        f"  modbus_writers: [{NET}.40/32]\n"
        f"  engineering_hosts: [{NET}.40/32]\n"
        f"  s7_engineering_hosts: [{NET}.40/32]\n"
        f"  s7_writers: [{NET}.40/32]\n"
        f"  hmis: [{plant.addr['hmi']}/32]\n"
        f"  plcs: [{plant.addr['plc']}/32]\n"
        f"  mqtt_brokers: [{plant.addr['broker']}/32]\n"
    )
    events, alerts = tmp_path / "events.ndjson", tmp_path / "alerts.ndjson"
    # The bridge has no address, but the kernel still sends its own IGMP reports for a second or two after
    # ports join: wait until the TX counter settles, so that any later change can only be the sensor's.
    tx_before, still = _tx_packets(plant.bridge), 0
    for _ in range(40):
        time.sleep(0.25)
        now = _tx_packets(plant.bridge)
        still = still + 1 if now == tx_before else 0
        tx_before = now
        if still >= 12:
            break
    sensor = subprocess.Popen(
        [shutil.which("ics-sensor") or "ics-sensor", "live", "-i", plant.bridge, "--config", str(cfg),
         "--events", str(events), "--alerts", str(alerts), "--health-port", "0", "--stats-interval", "1",
         "--es", es.url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # Start the peers only once the sensor says its sockets are open (imports can be slow on a busy box).
        assert sensor.stderr is not None
        first = sensor.stderr.readline()
        assert "capturing on" in first, first + (sensor.stderr.read() if sensor.poll() is not None else "")
        plant.start("plc", plant.addr["plc"])
        plant.start("broker", plant.addr["broker"])
        hmi = plant.start("hmi", plant.addr["plc"], plant.addr["broker"])
        assert hmi.wait(60) == 0, hmi.stderr.read() if hmi.stderr else ""
        sensor.send_signal(signal.SIGHUP)  # reload rules mid-capture: nothing may be lost
        time.sleep(0.5)
        attacker = plant.start("attacker", plant.addr["plc"])
        assert attacker.wait(30) == 0, attacker.stderr.read() if attacker.stderr else ""
        time.sleep(1.5)
    finally:
        sensor.send_signal(signal.SIGTERM)
        _out, err = sensor.communicate(timeout=60)
        es.stop()
    assert sensor.returncode == 0, err
    assert "rules reloaded" in err, err
    # Receive-only: the sensor sent nothing on the monitored interface.
    assert _tx_packets(plant.bridge) == tx_before

    docs = [json.loads(line) for line in events.read_text().splitlines()]
    protocols = {d["network"]["protocol"] for d in docs}
    assert {"modbus", "s7comm", "mqtt"} <= protocols, protocols
    hmi_reads = [d for d in docs if d["network"]["protocol"] == "modbus" and d["source"]["ip"] == plant.addr["hmi"]]
    assert len(hmi_reads) >= 5
    assert all(d["ics"]["modbus"]["function_code"] == 3 for d in hmi_reads)

    got = [json.loads(line) for line in alerts.read_text().splitlines()]
    from_attacker = [a for a in got if a["source"]["ip"] == plant.addr["attacker"]]
    stop = [a for a in from_attacker if a["network"]["protocol"] == "s7comm" and a["ics"]["s7comm"].get("function") == 0x29]
    write = [a for a in from_attacker if a["network"]["protocol"] == "modbus" and a["ics"]["modbus"].get("access") == "write"]
    assert stop, [a["rule"]["id"] for a in got]
    assert write, [a["rule"]["id"] for a in got]
    for a in stop + write:
        assert a["destination"]["ip"] == plant.addr["plc"]
        assert a["threat"]["technique"]["id"]
    # The same alerts reached Elasticsearch's alert data stream, each exactly once.
    es_alerts = [d for stream, _id, d in es.state.docs() if stream.startswith("logs-ics_sensor.alert-")]
    key = lambda a: (a["rule"]["id"], a["@timestamp"], a["source"]["ip"])  # noqa: E731
    assert sorted(map(key, es_alerts)) == sorted(map(key, got))
    noisy = [a for a in got if a["source"]["ip"] != plant.addr["attacker"] and a["destination"]["ip"] != plant.addr["attacker"]]
    assert not noisy, [(a["rule"]["id"], a["source"]["ip"]) for a in noisy]


def test_health_endpoint_and_config_check(tmp_path: Path) -> None:
    """The Prometheus endpoint serves the counters; `config check` names a bad key."""
    from sensor.health import HealthServer

    server = HealthServer(0)
    server.start()
    try:
        server.update({"packets": 12, "messages": {"modbus": 3}, "live": {"kernel_drops": 0}})
        body = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5).read().decode()
    finally:
        server.stop()
    assert "ics_sensor_packets_total 12" in body
    assert 'ics_sensor_messages_total{protocol="modbus"} 3' in body
    bad = tmp_path / "bad.yml"
    bad.write_text("flows: {max_flowz: 10}\n")
    r = subprocess.run([shutil.which("ics-sensor") or "ics-sensor", "config", "check", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2
    assert "flows.max_flowz: unknown key" in r.stderr
