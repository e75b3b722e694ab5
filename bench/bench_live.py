"""Live capture drop rate: tcpreplay sends a capture at fixed rates onto a veth pair, the sensor captures the
other end, and we compare what was sent with what the sensor received and what the kernel dropped.

    python bench/bench_live.py [--rates 20000,50000,100000] [--packets 300000]

Needs root, iproute2 and tcpreplay (apt-get install tcpreplay). The veth pair lives in the root namespace and
is removed afterwards; traffic never leaves this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="20000,50000,100000")
    ap.add_argument("--packets", type=int, default=300_000)
    a = ap.parse_args()
    if os.geteuid() != 0 or not shutil.which("tcpreplay"):
        sys.exit("needs root and tcpreplay")
    cap = ROOT / "bench" / "out" / f"modbus_{a.packets}.pcap"
    if not cap.exists():
        subprocess.run([sys.executable, str(ROOT / "bench" / "gen_capture.py"), str(ROOT / "pcaps" / "modbus_demo.pcap"),
                        "--packets", str(a.packets), "--ports", "502", "--out", str(cap)], check=True)  # fmt: skip
    tx, rx = "icsbenchtx", "icsbenchrx"
    sh("ip", "link", "add", tx, "type", "veth", "peer", "name", rx)
    try:
        for i in (tx, rx):
            subprocess.run(["sysctl", "-qw", f"net.ipv6.conf.{i}.disable_ipv6=1"], capture_output=True)
            sh("ip", "link", "set", i, "up")
        print(f"{'rate pps':>9} {'sent':>9} {'received':>9} {'kernel drops':>12} {'drop %':>7} {'messages':>9}")
        for rate in (int(r) for r in a.rates.split(",")):
            with tempfile.TemporaryDirectory() as tmp:
                stats = Path(tmp) / "stats.ndjson"
                sensor = subprocess.Popen(
                    ["ics-sensor", "live", "-i", rx, "--stats", str(stats), "--stats-interval", "3600"],
                    stderr=subprocess.PIPE, text=True,
                )
                time.sleep(1.5)
                out = subprocess.run(["tcpreplay", "-i", tx, f"--pps={rate}", str(cap)], capture_output=True, text=True)
                time.sleep(2.0)
                sensor.send_signal(signal.SIGTERM)
                sensor.communicate(timeout=120)
                doc = json.loads(stats.read_text().splitlines()[-1])["ics"]["stats"]
                sent = a.packets
                for line in out.stdout.splitlines():
                    if "Successful packets:" in line:
                        sent = int(line.split(":")[1])
                live = doc.get("live", {})
                drops = live.get("kernel_drops", 0)
                received = doc["packets"]
                lost = max(0, sent - received)
                print(f"{rate:>9,} {sent:>9,} {received:>9,} {drops:>12,} {100 * lost / sent:>6.2f}% "
                      f"{sum(doc['messages'].values()):>9,}")  # fmt: skip
    finally:
        subprocess.run(["ip", "link", "del", tx], capture_output=True)


if __name__ == "__main__":
    main()
