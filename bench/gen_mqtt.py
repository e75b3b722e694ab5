"""Build a >= 500k-packet MQTT benchmark capture from real captured MQTT flows (bench/gen_capture.py's replication).

Templates: the project's mosquitto + paho-mqtt capture (pcaps/mqtt_demo.pcap: 3.1, 3.1.1 and 5.0 clients, QoS 0-2,
retained messages, topic aliases, a refused login) plus the shared IPv4 MQTT captures (Zeek's mqtt.pcap and the
Ethernet/IPv4 suricata-verify cases). Each replica gets its own addresses, client ports and time offset.

    python bench/gen_mqtt.py --packets 500000 --out bench/out/mqtt_500k.pcap
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gen_capture import load_template, replicate

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "pcaps"


def templates() -> list[str]:
    paths = [ROOT / "pcaps" / "mqtt_demo.pcap", SHARED / "zeek" / "mqtt.pcap"]
    paths += sorted(SHARED.glob("suricata-verify/mqtt3*/*.pcap"))
    return [str(p) for p in paths if p.exists()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--packets", type=int, default=500_000)
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "mqtt_500k.pcap"))
    a = ap.parse_args()
    parts = []
    for t in templates():
        try:
            parts += load_template([t], {1883})  # each template's own time starts at 0
        except IndexError:  # no Ethernet/IPv4 MQTT packets in it (IPv6 or loopback captures)
            continue
    template = sorted(parts, key=lambda x: x[0])
    if not template:
        sys.exit("no Ethernet/IPv4 MQTT template packets found")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    n = replicate(template, a.packets, a.out)
    print(f"{a.out}: {n} packets from {len(template)} template packets")


if __name__ == "__main__":
    main()
