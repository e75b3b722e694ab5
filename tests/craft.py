"""Test input construction: Modbus ADUs, TCP conversations, link-layer wrappers, pcap and pcapng writers.

Everything here builds bytes from first principles (struct, scapy); nothing imports the code under test, so the
construction itself can serve as an oracle.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path

from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw
from scapy.utils import RawPcapWriter

NS = 1_000_000_000
T0 = 1_700_000_000 * NS  # 2023-11-14, a fixed capture epoch
SYN, ACK, PSH, FIN, RST = 0x02, 0x10, 0x08, 0x01, 0x04


# -- Modbus ADUs (Modbus Messaging on TCP/IP Implementation Guide, section 3.1.3; Application Protocol 6.3) -----
def mbap(tid: int, unit: int, pdu: bytes) -> bytes:
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


def read_holding(tid: int, addr: int, qty: int, unit: int = 1) -> bytes:
    return mbap(tid, unit, struct.pack(">BHH", 3, addr, qty))


def read_holding_resp(tid: int, values: list[int], unit: int = 1) -> bytes:
    return mbap(tid, unit, struct.pack(f">BB{len(values)}H", 3, 2 * len(values), *values))


def write_single(tid: int, addr: int, value: int, unit: int = 1) -> bytes:
    return mbap(tid, unit, struct.pack(">BHH", 6, addr, value))


# -- TCP conversations ---------------------------------------------------------------------------------------
class Conv:
    """Both directions of one TCP connection; ``pkt`` returns IP-layer scapy packets with tracked sequence numbers."""

    def __init__(self, cip: str = "10.0.0.1", sip: str = "10.0.0.2", cport: int = 40000, sport: int = 502,
                 v6: bool = False, cisn: int = 1000, sisn: int = 5000) -> None:  # fmt: skip
        self.ip = (cip, sip)
        self.port = (cport, sport)
        self.v6 = v6
        self.nxt = [cisn, sisn]  # next sequence number per direction (0 client, 1 server)

    def pkt(self, from_client: bool, payload: bytes = b"", flags: int = ACK | PSH, seq: int | None = None,
            advance: bool = True, ack: int | None = None) -> Packet:  # fmt: skip
        i = 0 if from_client else 1
        s = self.nxt[i] if seq is None else seq
        a = self.nxt[1 - i] if ack is None else ack
        l3 = IPv6(src=self.ip[i], dst=self.ip[1 - i]) if self.v6 else IP(src=self.ip[i], dst=self.ip[1 - i])
        p = l3 / TCP(sport=self.port[i], dport=self.port[1 - i], flags=flags, seq=s & 0xFFFFFFFF,
                     ack=a & 0xFFFFFFFF if flags & ACK else 0, window=65535)  # fmt: skip
        if payload:
            p = p / Raw(payload)
        if advance and seq is None:
            self.nxt[i] = s + len(payload) + (1 if flags & (SYN | FIN) else 0)
        return p

    def handshake(self) -> list[Packet]:
        return [self.pkt(True, flags=SYN), self.pkt(False, flags=SYN | ACK), self.pkt(True, flags=ACK)]

    def close(self) -> list[Packet]:
        return [self.pkt(True, flags=FIN | ACK), self.pkt(False, flags=FIN | ACK), self.pkt(True, flags=ACK)]


def eth(p: Packet) -> bytes:
    etype = 0x86DD if p.haslayer(IPv6) and not p.haslayer(IP) else 0x0800
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=etype) / p)


# -- capture writers ------------------------------------------------------------------------------------------
def write_pcap(path: Path, linktype: int, recs: Iterable[tuple[int, bytes]], *, endianness: str = "<",
               nano: bool = False, gz: bool = False, snaplen: int = 65535) -> Path:  # fmt: skip
    """pcap via scapy's RawPcapWriter; ``recs`` are (timestamp ns, frame bytes)."""
    w = RawPcapWriter(str(path), linktype=linktype, gz=gz, endianness=endianness, nano=nano, snaplen=snaplen, sync=True)
    w.write_header(None)
    for ts, data in recs:
        sec, frac = divmod(ts, NS)
        w.write_packet(data, sec=sec, usec=frac if nano else frac // 1000)
    w.close()
    if linktype == 0:  # scapy takes linktype 0 (DLT_NULL) for "unset" and writes 1: set the header field
        assert not gz
        raw = bytearray(path.read_bytes())
        raw[20:24] = struct.pack((endianness or "<") + "I", 0)
        path.write_bytes(bytes(raw))
    return path


def frames_pcap(path: Path, frames: list[bytes], linktype: int = 1, step_ns: int = 1_000_000) -> Path:
    return write_pcap(path, linktype, [(T0 + i * step_ns, f) for i, f in enumerate(frames)])


def _pad(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def ng_block(o: str, btype: int, body: bytes) -> bytes:
    body = _pad(body)
    n = 12 + len(body)
    return struct.pack(o + "II", btype, n) + body + struct.pack(o + "I", n)


def ng_shb(o: str) -> bytes:
    return ng_block(o, 0x0A0D0D0A, struct.pack(o + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def ng_idb(o: str, linktype: int, tsresol: int | None = None, tsoffset: int | None = None, snaplen: int = 0) -> bytes:
    opts = b""
    if tsresol is not None:
        opts += struct.pack(o + "HH", 9, 1) + _pad(bytes([tsresol]))
    if tsoffset is not None:
        opts += struct.pack(o + "HHq", 14, 8, tsoffset)
    if opts:
        opts += struct.pack(o + "HH", 0, 0)
    return ng_block(o, 1, struct.pack(o + "HHI", linktype, 0, snaplen) + opts)


def ng_epb(o: str, iface: int, units: int, data: bytes) -> bytes:
    return ng_block(o, 6, struct.pack(o + "IIIII", iface, units >> 32, units & 0xFFFFFFFF, len(data), len(data)) + data)


def ng_pb(o: str, iface: int, units: int, data: bytes) -> bytes:
    return ng_block(o, 2, struct.pack(o + "HHIIII", iface, 0, units >> 32, units & 0xFFFFFFFF, len(data), len(data)) + data)


def ng_spb(o: str, data: bytes) -> bytes:
    return ng_block(o, 3, struct.pack(o + "I", len(data)) + data)


# -- oracles ----------------------------------------------------------------------------------------------------
def tshark_exe() -> str:
    exe = shutil.which("tshark")
    assert exe, "tshark is required (apt-get install tshark)"
    return exe


def tshark_rows(path: Path, fields: list[str], display_filter: str | None = None, options: list[str] | None = None,
                check: bool = True) -> list[list[str]]:  # fmt: skip
    cmd = [tshark_exe(), "-n", "-r", str(path), "-T", "fields", "-E", "separator=\t", "-E", "occurrence=a"]
    if display_filter:
        cmd += ["-Y", display_filter]
    for o in options or []:
        cmd += ["-o", o]
    for f in fields:
        cmd += ["-e", f]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if check:
        assert res.returncode == 0, res.stderr
    return [line.split("\t") for line in res.stdout.splitlines()]


def epoch_ns(text: str) -> int:
    return int(Decimal(text) * NS)


def capinfos_count(path: Path) -> int:
    exe = shutil.which("capinfos")
    assert exe, "capinfos is required (apt-get install tshark)"
    out = subprocess.run([exe, "-M", "-c", str(path)], capture_output=True, text=True, check=False).stdout
    for line in out.splitlines():
        if line.startswith("Number of packets"):
            return int(line.split(":", 1)[1].strip())
    raise AssertionError(f"capinfos gave no packet count for {path}: {out!r}")
