"""Build a large S7comm capture by replicating the real snap7 capture's flow with new addresses, ports and times.

    python bench/gen_s7.py OUT.pcap [--copies 8000] [--source ../shared/pcaps/icsnpp-s7comm/snap7.pcap]

Plain struct, no scapy: each copy rewrites the IPv4 client address (10.a.b.c), the client port and the
timestamps of the 64 original packets, fixing the IPv4 header checksum (TCP checksums are left as captured,
neither the sensor nor tshark verifies them by default). 8000 copies give 512,000 packets.
"""

from __future__ import annotations

import argparse
import struct
from pathlib import Path

DEFAULT_SOURCE = Path(__file__).resolve().parents[1].parent / "shared" / "pcaps" / "icsnpp-s7comm" / "snap7.pcap"


def read_pcap(path: Path) -> tuple[bytes, list[tuple[int, int, bytes]]]:
    raw = path.read_bytes()
    magic = raw[:4]
    if magic not in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        raise SystemExit(f"{path}: only little-endian pcap is supported")
    recs, pos = [], 24
    while pos + 16 <= len(raw):
        sec, frac, incl, _orig = struct.unpack_from("<IIII", raw, pos)
        recs.append((sec, frac, raw[pos + 16 : pos + 16 + incl]))
        pos += 16 + incl
    return raw[:24], recs


def ip_checksum(hdr: bytes) -> int:
    s = sum(struct.unpack(f"!{len(hdr) // 2}H", hdr))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--copies", type=int, default=8000)
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    a = ap.parse_args()
    header, recs = read_pcap(a.source)
    first = recs[0][2]
    client_ip, server_ip = first[26:30], first[30:34]
    sport = struct.unpack_from("!H", first, 34)[0]
    rec_hdr = struct.Struct("<IIII")
    t0 = recs[0][0]
    with a.out.open("wb") as fh:
        fh.write(header)
        for k in range(a.copies):
            new_ip = bytes((10, (k >> 16) & 0xFF, (k >> 8) & 0xFF, k & 0xFF or 1))
            new_port = 1024 + k % 60000
            base = t0 + k // 4  # four conversations start each second
            chunks = []
            for sec, frac, pkt in recs:
                p = bytearray(pkt)
                if p[26:30] == client_ip:
                    p[26:30] = new_ip
                    struct.pack_into("!H", p, 34, new_port)
                elif p[30:34] == client_ip:
                    p[30:34] = new_ip
                    struct.pack_into("!H", p, 36, new_port)
                ihl = (p[14] & 0x0F) * 4
                p[24:26] = b"\0\0"
                struct.pack_into("!H", p, 24, ip_checksum(bytes(p[14 : 14 + ihl])))
                chunks.append(rec_hdr.pack(base + (sec - t0), frac, len(p), len(p)) + bytes(p))
            fh.write(b"".join(chunks))
    print(f"{a.out}: {a.copies * len(recs)} packets from {a.source.name} (client {client_ip.hex()} port {sport}, "
          f"server {server_ip.hex()})")  # fmt: skip


if __name__ == "__main__":
    main()
