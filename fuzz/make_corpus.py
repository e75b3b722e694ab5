"""Build the seed corpora in fuzz/corpus/<target>/ from ../shared/pcaps and pcaps/, at run time.

Decoder seeds are the TCP payload streams of each flow on the protocol's port, extracted with the sensor's own
reader and frame decoder and written in the chunk encoding of ``fuzz.common``. Capture seeds are the capture
files (cut to ``--max-bytes``), pcapng rewrites of the pcap seeds, and gzip'd copies. Nothing here is committed.

    python fuzz/make_corpus.py [--out fuzz/corpus] [--max-bytes 16384]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fuzz.common import PORTS, encode  # noqa: E402
from sensor.frames import FrameDecoder  # noqa: E402
from sensor.source import CaptureError, SourceReport, read_capture  # noqa: E402

SOURCES = (ROOT.parent / "shared" / "pcaps", ROOT / "pcaps")
SUFFIXES = (".pcap", ".pcapng", ".cap", ".pcap.gz", ".pcapng.gz")


def captures() -> list[Path]:
    found: list[Path] = []
    for base in SOURCES:
        if base.is_dir():
            found += sorted(p for p in base.rglob("*") if p.is_file() and p.name.lower().endswith(SUFFIXES))
    return found


def streams(path: Path) -> dict[str, list[bytes]]:
    """Per protocol, the encoded payload streams of the flows on its port (capture order, no reassembly)."""
    by_port = {port: name for name, port in PORTS.items()}
    flows: dict[tuple, tuple[str, list[tuple[bool, bool, bytes]]]] = {}
    frames = FrameDecoder()
    try:
        for rec in read_capture(str(path), SourceReport()):
            seg = frames.decode(rec.ts, rec.linktype, rec.data)
            if seg is None or seg.proto != 6 or not seg.payload:
                continue
            if seg.dport in by_port:
                key, from_client, name = (seg.src, seg.sport, seg.dst, seg.dport), True, by_port[seg.dport]
            elif seg.sport in by_port:
                key, from_client, name = (seg.dst, seg.dport, seg.src, seg.sport), False, by_port[seg.sport]
            else:
                continue
            flows.setdefault(key, (name, []))[1].append((from_client, False, bytes(seg.payload)))
    except CaptureError:
        return {}
    out: dict[str, list[bytes]] = {}
    for name, chunks in flows.values():
        out.setdefault(name, []).append(encode(chunks))
    return out


def to_pcapng(path: Path, limit: int) -> bytes | None:
    """The records of a capture rewritten as pcapng (SHB, one IDB per link type, EPBs) by the sensor's reader."""
    out = bytearray(struct.pack("<IIIHHq", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1) + struct.pack("<I", 28))
    links: dict[int, int] = {}
    try:
        for rec in read_capture(str(path), SourceReport()):
            if rec.linktype not in links:
                links[rec.linktype] = len(links)
                opt = struct.pack("<HHB3xHH", 9, 1, 9, 0, 0)  # if_tsresol = 9 (nanoseconds), end of options
                blen = 20 + len(opt)
                out += struct.pack("<IIHHI", 1, blen, rec.linktype, 0, 0) + opt + struct.pack("<I", blen)
            pad = (-len(rec.data)) % 4
            blen = 32 + len(rec.data) + pad
            out += struct.pack("<IIIIIII", 6, blen, links[rec.linktype], rec.ts >> 32, rec.ts & 0xFFFFFFFF,
                               len(rec.data), rec.wirelen)  # fmt: skip
            out += rec.data + b"\0" * pad + struct.pack("<I", blen)
            if len(out) > limit:
                break
    except CaptureError:
        return None
    return bytes(out)


def write(dirpath: Path, data: bytes) -> bool:
    dirpath.mkdir(parents=True, exist_ok=True)
    target = dirpath / hashlib.sha1(data).hexdigest()
    if target.exists():
        return False
    target.write_bytes(data)
    return True


def build(out: Path, max_bytes: int) -> dict[str, int]:
    counts: dict[str, int] = {}

    def add(target: str, data: bytes) -> None:
        if data and write(out / target, data[:max_bytes]):
            counts[target] = counts.get(target, 0) + 1

    for path in captures():
        for name, encoded in streams(path).items():
            for s in encoded:
                add(name, s)
                if name == "mqtt":
                    add("mqtt_tls", s)  # plain MQTT on the TLS port is handed to the MQTT decoder
        raw = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
        head = raw[:max_bytes]
        if head[:4] == b"\x0a\x0d\x0d\x0a":
            add("pcapng", head)
        else:
            add("pcap", head)
            ng = to_pcapng(path, max_bytes)
            if ng:
                add("pcapng", ng)
        add("gzip", b"\x01" + head)  # mode 1 of fuzz.common.gzip_input: the capture compressed whole
        add("gzip", b"\x00" + gzip.compress(head, mtime=0)[2:])  # mode 0: raw gzip bytes after the magic
    for tls_seed in TLS_SEEDS:
        add("mqtt_tls", tls_seed)
    return counts


def _client_hello() -> bytes:
    """A TLS 1.3 ClientHello with SNI, ALPN 'mqtt' and supported_versions, built here (RFC 8446 4.1.2)."""
    sni = b"broker.example"
    exts = struct.pack("!HHHBH", 0, len(sni) + 5, len(sni) + 3, 0, len(sni)) + sni
    exts += struct.pack("!HHHB", 16, 7, 5, 4) + b"mqtt"
    exts += struct.pack("!HHBHH", 43, 5, 4, 0x0304, 0x0303)
    body = b"\x03\x03" + b"\x11" * 32 + b"\x00" + struct.pack("!H", 4) + b"\x13\x01\x13\x02" + b"\x01\x00"
    body += struct.pack("!H", len(exts)) + exts
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs


def _server_hello() -> bytes:
    exts = struct.pack("!HHH", 43, 2, 0x0304)
    body = b"\x03\x03" + b"\x22" * 32 + b"\x00" + b"\x13\x01" + b"\x00" + struct.pack("!H", len(exts)) + exts
    hs = b"\x02" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x03" + struct.pack("!H", len(hs)) + hs


_CH, _SH = _client_hello(), _server_hello()
TLS_SEEDS = (
    encode([(True, False, _CH), (False, False, _SH), (True, False, b"\x17\x03\x03\x00\x05hello")]),
    encode([(True, False, _CH[:40]), (True, False, _CH[40:]), (False, False, _SH)]),
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path(os.path.dirname(os.path.abspath(__file__))) / "corpus")
    ap.add_argument("--max-bytes", type=int, default=16384)
    args = ap.parse_args()
    counts = build(args.out, args.max_bytes)
    for target, n in sorted(counts.items()):
        print(f"{target}: {n} new seeds in {args.out / target}")


if __name__ == "__main__":
    main()
