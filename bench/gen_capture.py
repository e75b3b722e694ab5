"""Build a large benchmark capture by replicating real captured traffic with new addresses and timestamps.

Why: a million packets of real peers would take hours to record; the template flows come from real peers
(pcaps/*_demo.pcap, made by pcaps/generate.py) and each replica gets its own hosts (10.a.b.x: one cell per
replica, its server and clients), client ports and a time offset, so the sensor sees many concurrent flows.
Checksums are not recomputed (neither tshark by default nor the sensor validates them).

    python bench/gen_capture.py pcaps/modbus_demo.pcap --packets 1000000 --out bench/out/modbus_1m.pcap
"""

from __future__ import annotations

import argparse
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sensor.source import SourceReport, read_capture

GROUP = 64  # replicas interleaved at once (concurrent flows ~ GROUP x template flows)


def load_template(paths: list[str], ports: set[int] | None) -> list[tuple[int, bytes]]:
    """(relative ts, Ethernet/IPv4 frame) of the template's TCP packets, optionally only on ``ports``."""
    out: list[tuple[int, bytes]] = []
    for p in paths:
        rep = SourceReport()
        for r in read_capture(p, rep):
            d = r.data
            if r.linktype != 1 or len(d) < 54 or d[12:14] != b"\x08\x00" or d[23] != 6:
                continue
            ihl = (d[14] & 15) * 4
            sport, dport = struct.unpack_from("!HH", d, 14 + ihl)
            if ports and sport not in ports and dport not in ports:
                continue
            out.append((r.ts, d))
    out.sort(key=lambda x: x[0])
    t0 = out[0][0]
    return [(ts - t0, d) for ts, d in out]


def replicate(template: list[tuple[int, bytes]], packets: int, out: str) -> int:
    span = template[-1][0] + 1_000_000_000
    base = 1_700_000_000 * 1_000_000_000
    n = 0
    with open(out, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, 1))  # nanosecond pcap, Ethernet
        group = 0
        while n < packets:
            buf = bytearray()
            for ts, d in template:
                for k in range(GROUP):
                    r = group * GROUP + k
                    frame = bytearray(d)
                    ihl = (frame[14] & 15) * 4
                    a, b = 10 + (r >> 16) % 100, (r >> 8) & 255
                    c = r & 255
                    frame[26:29] = bytes((a, b, c))  # src 10.a.b.<last octet kept>: one cell per replica
                    frame[30:33] = bytes((a, b, c))
                    t = 14 + ihl
                    sport, dport = struct.unpack_from("!HH", frame, t)
                    if sport > 1024 and sport != 5020:
                        struct.pack_into("!H", frame, t, 1025 + (sport + 7 * k) % 64000)
                    if dport > 1024 and dport != 5020:
                        struct.pack_into("!H", frame, t + 2, 1025 + (dport + 7 * k) % 64000)
                    stamp = base + group * span + ts + k * 10
                    sec, ns = divmod(stamp, 1_000_000_000)
                    buf += struct.pack("<IIII", sec, ns, len(frame), len(frame))
                    buf += frame
                    n += 1
                    if n >= packets:
                        break
                if n >= packets:
                    break
            f.write(buf)
            group += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("template", nargs="+")
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--ports", default="", help="comma-separated TCP ports to keep from the template (default all)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    ports = {int(p) for p in a.ports.split(",") if p} or None
    template = load_template(a.template, ports)
    if not template:
        sys.exit("template has no Ethernet/IPv4 TCP packets")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    n = replicate(template, a.packets, a.out)
    print(f"{a.out}: {n} packets from {len(template)} template packets")


if __name__ == "__main__":
    main()
