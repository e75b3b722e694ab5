"""Replay throughput and peak memory of the sensor beside tshark on the same large capture.

    python bench/bench_replay.py [--protocol modbus|s7comm|mqtt|all] [--packets N] [--rules] [--workers N]

Generates bench/out/<protocol>_<N>.pcap from the project's real-peer capture (bench/gen_capture.py) when it
is missing, then times, on the same file:
  - ics-sensor replay FILE --events /dev/null             (decode and write every event document)
  - ics-sensor replay FILE                                (decode only)
  - tshark -r FILE -T fields -e <protocol fields>          (tshark's dissection of the same fields)
and prints packets per second, the ratio to tshark and the peak resident memory of each process (wait4 rusage).
Timings are figures to read, never assertions.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Site lists for the rule runs: the generated cells' HMIs and engineering workstations (10.a.b.10/.20).
BENCH_CONFIG = ROOT / "bench" / "bench_sensor.yml"
OUT = ROOT / "bench" / "out"
TEMPLATES = {
    "modbus": (ROOT / "pcaps" / "modbus_demo.pcap", "502,5020"),
    "s7comm": (ROOT / "pcaps" / "s7comm_demo.pcap", "102"),
    "mqtt": (ROOT / "pcaps" / "mqtt_demo.pcap", "1883"),
}
TSHARK_FIELDS = {
    "modbus": ["mbtcp.trans_id", "mbtcp.unit_id", "modbus.func_code", "modbus.exception_code",
               "modbus.reference_num", "modbus.word_cnt", "modbus.bit_cnt"],
    "s7comm": ["s7comm.header.rosctr", "s7comm.header.pduref", "s7comm.param.func", "s7comm.param.itemcount",
               "s7comm.param.userdata.funcgroup", "s7comm.param.userdata.subfunc", "s7comm.data.userdata.szl_id"],
    "mqtt": ["mqtt.msgtype", "mqtt.qos", "mqtt.retain", "mqtt.dupflag", "mqtt.msgid", "mqtt.topic", "mqtt.clientid",
             "mqtt.conack.val"],
}  # fmt: skip


def run(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (MB) of one command, output discarded."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    secs = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed ({status}): {' '.join(cmd)}")
    return secs, usage.ru_maxrss // 1024


def ensure_capture(protocol: str, packets: int) -> Path:
    path = OUT / f"{protocol}_{packets}.pcap"
    if not path.exists():
        template, ports = TEMPLATES[protocol]
        subprocess.run([sys.executable, str(ROOT / "bench" / "gen_capture.py"), str(template), "--packets",
                        str(packets), "--ports", ports, "--out", str(path)], check=True)  # fmt: skip
    return path


def bench(protocol: str, packets: int, extra: list[str], rules: bool) -> list[tuple[str, float, int]]:
    cap = ensure_capture(protocol, packets)
    sensor = shutil.which("ics-sensor") or "ics-sensor"
    rows = []
    base = [sensor, "replay", str(cap), "-q", *extra]
    runs = [
        ("sensor, events to /dev/null", [*base, "--no-builtin-rules", "--events", "/dev/null"]),
        ("sensor, decode only", [*base, "--no-builtin-rules"]),
    ]
    if rules:
        runs.append(("sensor, all rules + alerts", [*base, "--alerts", "/dev/null", "--config", str(BENCH_CONFIG)]))
    for label, cmd in runs:
        secs, mb = run(cmd)
        rows.append((label, secs, mb))
    tshark = shutil.which("tshark")
    if tshark:
        cmd = [tshark, "-n", "-r", str(cap), "-T", "fields"]
        for f in TSHARK_FIELDS[protocol]:
            cmd += ["-e", f]
        if protocol == "modbus":
            cmd += ["-d", "tcp.port==5020,mbtcp"]
        secs, mb = run(cmd)
        rows.append(("tshark -T fields", secs, mb))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protocol", default="modbus", choices=[*TEMPLATES, "all"])
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--rules", action="store_true", help="also run with the shipped rule pack and alerts written")
    ap.add_argument("--workers", type=int, default=1, help="replay worker processes (ics-sensor replay --workers)")
    a = ap.parse_args()
    protocols = list(TEMPLATES) if a.protocol == "all" else [a.protocol]
    extra = ["--workers", str(a.workers)] if a.workers > 1 else []
    print(f"{'capture':<22} {'run':<30} {'seconds':>8} {'packets/s':>11} {'vs tshark':>9} {'peak MB':>8}")
    for p in protocols:
        n = a.packets
        rows = bench(p, n, extra, a.rules)
        ts = next((s for label, s, _ in rows if label.startswith("tshark")), None)
        for label, secs, mb in rows:
            ratio = f"{ts / secs:.2f}x" if ts else "-"
            print(f"{p + '_' + str(n):<22} {label:<30} {secs:>8.2f} {n / secs:>11,.0f} {ratio:>9} {mb:>8}")


if __name__ == "__main__":
    main()
