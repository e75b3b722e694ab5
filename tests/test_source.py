"""Capture readers checked against tshark/capinfos on captures built here (scapy and hand-written pcapng blocks)."""

from __future__ import annotations

import gzip
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from sensor.source import CaptureError, Record, SourceReport, read_captures
from tests.craft import (
    NS,
    T0,
    Conv,
    capinfos_count,
    epoch_ns,
    eth,
    ng_epb,
    ng_idb,
    ng_pb,
    ng_shb,
    ng_spb,
    read_holding,
    read_holding_resp,
    tshark_rows,
    write_pcap,
)

Row = tuple[int, int | None, int, int]


def _ours(paths: list[Path]) -> tuple[list[Record], SourceReport]:
    report = SourceReport()
    recs = list(read_captures([str(p) for p in paths], report))
    return recs, report


def _rows(recs: list[Record]) -> list[Row]:
    return [(r.frame, r.ts, r.wirelen, len(r.data)) for r in recs]


def _theirs(path: Path, check: bool = True) -> list[Row]:
    rows = tshark_rows(path, ["frame.number", "frame.time_epoch", "frame.len", "frame.cap_len"], check=check)
    return [(int(n), epoch_ns(t) if t else None, int(wl), int(cl)) for n, t, wl, cl in rows]


def _frames(n: int) -> list[bytes]:
    """n distinct Ethernet/IPv4/TCP frames of one Modbus conversation."""
    c = Conv()
    pkts = c.handshake()
    tid = 0
    while len(pkts) < n:
        tid += 1
        pkts += [c.pkt(True, read_holding(tid, tid, 2)), c.pkt(False, read_holding_resp(tid, [tid, tid + 1]))]
    return [eth(p) for p in pkts[:n]]


def _sll(ip: bytes) -> bytes:
    """Linux cooked header (LINKTYPE_LINUX_SLL): packet type, ARPHRD, address length, address, protocol."""
    return struct.pack(">HHH8sH", 0, 1, 6, b"\x02\0\0\0\0\x01\0\0", 0x0800) + ip


# -- pcap -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("nano", [False, True], ids=["usec", "nsec"])
@pytest.mark.parametrize("endianness", ["<", ">"], ids=["le", "be"])
def test_pcap_variants_match_tshark(tmp_path: Path, endianness: str, nano: bool, gz: bool) -> None:
    frames = _frames(7)
    sub = 789 if nano else 0  # sub-microsecond digits only survive in a nanosecond file
    stamps = [T0 + i * 1_234_567_000 + sub * (i % 2) for i in range(len(frames))]
    path = write_pcap(tmp_path / ("c.pcap.gz" if gz else "c.pcap"), 1, zip(stamps, frames, strict=True),
                      endianness=endianness, nano=nano, gz=gz)  # fmt: skip
    raw = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
    magic = struct.pack(endianness + "I", 0xA1B23C4D if nano else 0xA1B2C3D4)
    assert raw[:4] == magic  # the writer made the variant this case is about
    recs, report = _ours([path])
    assert report.problems == []
    assert _rows(recs) == _theirs(path)
    assert [r.ts for r in recs] == stamps
    assert len(recs) == capinfos_count(path) == report.records
    assert {r.linktype for r in recs} == {1}
    assert [r.data for r in recs] == frames


def test_pcap_snaplen_zero_reads_every_record(tmp_path: Path) -> None:
    frames = _frames(5)
    path = write_pcap(tmp_path / "snap0.pcap", 1, [(T0 + i * NS, f) for i, f in enumerate(frames)], snaplen=0)
    assert struct.unpack_from("<I", path.read_bytes(), 16)[0] == 0
    recs, _ = _ours([path])
    assert _rows(recs) == _theirs(path)
    assert [r.data for r in recs] == frames


# -- pcapng -----------------------------------------------------------------------------------------------------
def _pcapng_two_sections() -> tuple[bytes, list[tuple[int, int, int | None]]]:
    """A little-endian section with four interfaces (default usec, ns, 2^-20 s, usec + if_tsoffset) holding EPBs,
    an SPB and an obsolete PB, then a big-endian section (millisecond interface). Returns the file bytes and, per
    packet, (linktype, interface id, expected timestamp in ns or None for the SPB) by construction."""
    c = Conv()
    ip = [bytes(p) for p in (c.pkt(True, read_holding(1, 0, 1)), c.pkt(False, read_holding_resp(1, [7])))]
    e = [eth(c.pkt(True, read_holding(n, 0, 1))) for n in range(2, 6)]
    le, be = "<", ">"
    b = ng_shb(le) + ng_idb(le, 1) + ng_idb(le, 113, tsresol=9) + ng_idb(le, 101, tsresol=0x80 | 20)
    b += ng_idb(le, 1, tsoffset=1_000_000_000)
    expect: list[tuple[int, int, int | None]] = []
    b += ng_epb(le, 0, T0 // 1000 + 5, e[0])
    expect.append((1, 0, T0 + 5000))
    b += ng_epb(le, 1, T0 + 7, _sll(ip[0]))
    expect.append((113, 1, T0 + 7))
    b += ng_epb(le, 2, (1_700_000_000 << 20) + 2048 * 3, ip[1])  # 6144 / 2^20 s = 5 859 375 ns exactly
    expect.append((101, 2, T0 + 5_859_375))
    b += ng_epb(le, 3, 700_000_000 * 1_000_000 + 42, e[1])  # 700 000 000 s + 42 us, plus the 1e9 s offset
    expect.append((1, 3, T0 + 42_000))
    b += ng_spb(le, e[2])
    expect.append((1, 0, None))
    b += ng_pb(le, 0, T0 // 1000 + 9, e[3])
    expect.append((1, 0, T0 + 9000))
    b += ng_shb(be) + ng_idb(be, 1, tsresol=3) + ng_epb(be, 0, T0 // 1_000_000 + 5, e[0])
    expect.append((1, 0, T0 + 5_000_000))
    return b, expect


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_pcapng_interfaces_resolutions_sections(tmp_path: Path, gz: bool) -> None:
    data, expect = _pcapng_two_sections()
    path = tmp_path / ("c.pcapng.gz" if gz else "c.pcapng")
    path.write_bytes(gzip.compress(data) if gz else data)
    recs, report = _ours([path])
    assert report.problems == []
    theirs = _theirs(path)
    assert len(recs) == len(theirs) == capinfos_count(path) == len(expect)
    for r, (n, t, wl, cl), (lt, _iface, ts) in zip(recs, theirs, expect, strict=True):
        assert (r.frame, r.wirelen, len(r.data)) == (n, wl, cl)
        assert r.linktype == lt
        if t is None:  # SPB: no timestamp in the block; tshark shows none, we use 0 (documented)
            assert ts is None and r.ts == 0
        else:
            assert r.ts == t == ts
    # tshark's view of each frame's encapsulation and interface agrees with the link types we report
    encaps = tshark_rows(path, ["frame.interface_id", "frame.protocols"])
    first = {"eth": 1, "sll": 113, "raw": 101}
    assert [first[p.split(":")[0]] for _, p in encaps] == [r.linktype for r in recs]
    assert [int(i) for i, _ in encaps] == [i for _lt, i, _ts in expect]


# -- several files ------------------------------------------------------------------------------------------------
def test_directory_merged_in_time_order_ties_keep_file_order(tmp_path: Path) -> None:
    d = tmp_path / "caps"
    d.mkdir()
    frames = _frames(9)
    # (file, timestamps); ties across files at T0+2s and T0+5s
    plan = {
        "a.pcap": [T0 + 1 * NS, T0 + 2 * NS, T0 + 5 * NS],
        "b.pcapng.gz": [T0 + 2 * NS, T0 + 3 * NS, T0 + 5 * NS],
        "c.pcap.gz": [T0 + 0 * NS, T0 + 2 * NS, T0 + 6 * NS],
    }
    tag: dict[tuple[str, int], bytes] = {}
    k = 0
    for name, stamps in plan.items():
        frs = frames[k : k + len(stamps)]
        k += len(stamps)
        for i, f in enumerate(frs):
            tag[(name, i + 1)] = f
        if name.endswith(".pcapng.gz"):
            body = ng_shb("<") + ng_idb("<", 1, tsresol=9) + b"".join(ng_epb("<", 0, t, f) for t, f in zip(stamps, frs, strict=True))
            (d / name).write_bytes(gzip.compress(body))
        else:
            write_pcap(d / name, 1, zip(stamps, frs, strict=True), gz=name.endswith(".gz"))
    (d / "notes.txt").write_text("not a capture")
    recs, report = _ours([d])
    assert report.problems == []
    assert [Path(f).name for f in report.files] == sorted(plan)
    # expected by construction: stable sort of (file order, frame order) by timestamp
    order = [(name, i + 1, ts) for name in sorted(plan) for i, ts in enumerate(plan[name])]
    order.sort(key=lambda x: x[2])
    assert [(Path(r.file or "").name, r.frame, r.ts) for r in recs] == order
    assert all(r.data == tag[(Path(r.file or "").name, r.frame)] for r in recs)


# -- damage ---------------------------------------------------------------------------------------------------
def test_directory_of_many_rotated_files_keeps_few_open(tmp_path: Path) -> None:
    """A week of rotated captures: thousands of files, time-disjoint, replayed in order with one or two open."""
    import os

    d = tmp_path / "week"
    d.mkdir()
    frames = _frames(3)
    n = 1500  # more than the usual 1024 open-file limit
    for i in range(n):
        write_pcap(d / f"cap{i:05d}.pcap", 1, [(T0 + (3 * i + j) * NS, frames[j]) for j in range(3)])
    before = len(os.listdir("/proc/self/fd"))
    most = 0
    report = SourceReport()
    got = []
    for r in read_captures([str(d)], report):
        most = max(most, len(os.listdir("/proc/self/fd")) - before) if r.frame == 2 else most
        got.append((Path(r.file or "").name, r.frame, r.ts))
    assert most <= 2
    assert got == [(f"cap{i:05d}.pcap", j + 1, T0 + (3 * i + j) * NS) for i in range(n) for j in range(3)]
    assert report.records == 3 * n and report.problems == [] and len(report.files) == n


def _record_offsets(frames: list[bytes]) -> list[int]:
    offs, pos = [], 24
    for f in frames:
        offs.append(pos)
        pos += 16 + len(f)
    return offs


@pytest.mark.parametrize("where", ["file_header", "record_header", "record_data"])
def test_truncated_pcap_keeps_records_before_damage(tmp_path: Path, where: str) -> None:
    frames = _frames(6)
    full = write_pcap(tmp_path / "full.pcap", 1, [(T0 + i * NS, f) for i, f in enumerate(frames)]).read_bytes()
    offs = _record_offsets(frames)
    cut, whole, bad_off = {"file_header": (10, 0, 0), "record_header": (offs[4] + 7, 4, offs[4]),
                           "record_data": (offs[3] + 16 + 5, 3, offs[3])}[where]  # fmt: skip
    path = tmp_path / "cut.pcap"
    path.write_bytes(full[:cut])
    recs, report = _ours([path])
    assert len(recs) == whole
    assert [r.data for r in recs] == frames[:whole]
    if whole:
        assert len(_theirs(path, check=False)) == whole  # tshark also stops at the damage
    assert len(report.problems) == 1
    assert str(path) in report.problems[0] and f"offset {bad_off}" in report.problems[0]


def test_record_length_past_end_and_impossible_length(tmp_path: Path) -> None:
    frames = _frames(5)
    raw = bytearray(write_pcap(tmp_path / "full.pcap", 1, [(T0 + i * NS, f) for i, f in enumerate(frames)]).read_bytes())
    offs = _record_offsets(frames)
    past = bytearray(raw)
    struct.pack_into("<I", past, offs[4] + 8, len(frames[4]) + 100)  # last record claims 100 bytes more than exist
    huge = bytearray(raw)
    struct.pack_into("<I", huge, offs[2] + 8, 0x7FFF0000)  # impossible captured length
    for name, data, whole, bad in (("past.pcap", past, 4, offs[4]), ("huge.pcap", huge, 2, offs[2])):
        path = tmp_path / name
        path.write_bytes(bytes(data))
        recs, report = _ours([path])
        assert [r.data for r in recs] == frames[:whole]
        if name == "past.pcap":  # on the impossible length tshark retries the file as another pcap variant
            assert len(_theirs(path, check=False)) == whole
        assert len(report.problems) == 1 and str(path) in report.problems[0] and f"offset {bad}" in report.problems[0]


def test_truncated_pcapng_mid_block(tmp_path: Path) -> None:
    data, _ = _pcapng_two_sections()
    # cut inside the 4th packet block: find block starts by walking the little-endian section
    starts, pos = [], 0
    while pos < len(data):
        btype, blen = struct.unpack_from("<II", data, pos)
        if btype == 0x0A0D0D0A and data[pos + 8 : pos + 12] == b"\x1a\x2b\x3c\x4d":
            break  # big-endian section follows
        starts.append((btype, pos))
        pos += blen
    packet_blocks = [p for t, p in starts if t in (2, 3, 6)]
    cut_at = packet_blocks[3] + 10
    path = tmp_path / "cut.pcapng"
    path.write_bytes(data[:cut_at])
    recs, report = _ours([path])
    assert len(recs) == 3 == len(_theirs(path, check=False))
    assert len(report.problems) == 1 and str(path) in report.problems[0]
    assert f"offset {packet_blocks[3]}" in report.problems[0]


@pytest.mark.parametrize(
    "blen", [0, 8, 13, 0xFFFFFFF0, "trailer", "short_epb_last", "short_epb_mid"],
)
def test_pcapng_impossible_block_length(tmp_path: Path, blen: int | str) -> None:
    o = "<"
    frames = _frames(3)
    head = ng_shb(o) + ng_idb(o, 1) + ng_epb(o, 0, T0 // 1000, frames[0]) + ng_epb(o, 0, T0 // 1000 + 1, frames[1])
    bad_off = len(head)
    if isinstance(blen, int):  # a block whose length field is zero (a reader that trusts it loops), short, odd or huge
        bad = struct.pack(o + "II", 6, blen) + b"\0" * 32
    elif blen == "trailer":
        good = ng_epb(o, 0, T0 // 1000 + 2, frames[2])
        bad = good[:-4] + struct.pack(o + "I", len(good) + 4)
    else:  # an EPB of 12 bytes: header and trailer only, no room for its fixed fields
        bad = struct.pack(o + "III", 6, 12, 12)
        if blen == "short_epb_mid":
            bad += ng_epb(o, 0, T0 // 1000 + 2, frames[2])
    path = tmp_path / "bad.pcapng"
    path.write_bytes(head + bad)
    recs, report = _ours([path])
    assert [r.data for r in recs] == frames[:2]
    assert len(_theirs(path, check=False)) == 2
    assert len(report.problems) == 1 and str(path) in report.problems[0] and f"offset {bad_off}" in report.problems[0]


# -- the readers' filters ---------------------------------------------------------------------------------------
def _long_pcapng(damage: str) -> bytes:
    """300 enhanced packet blocks on two interfaces (microseconds, then nanoseconds from block 200), with one
    damaged block at 150 unless ``damage`` is "none": the run readers must stop there and report it."""
    o = "<"
    frames = _frames(300)
    b = ng_shb(o) + ng_idb(o, 1) + ng_idb(o, 1, tsresol=9)
    for i, fr in enumerate(frames):
        iface = 0 if i < 200 else 1
        block = ng_epb(o, iface, (T0 // 1000 if iface == 0 else T0) + i, fr)
        if i == 150 and damage == "trailer":
            block = block[:-4] + struct.pack(o + "I", len(block) + 4)
        elif i == 150 and damage == "interface":
            block = block[:8] + struct.pack(o + "I", 7) + block[12:]
        elif i == 150 and damage == "caplen":
            block = block[:20] + struct.pack(o + "I", len(block)) + block[24:]
        b += block
    return b


def _capture(tmp_path: Path, kind: str) -> Path:
    if kind == "pcap":
        path = tmp_path / "c.pcap"
        write_pcap(path, 1, [(T0 + i * 1000, fr) for i, fr in enumerate(_frames(300))])
        path.write_bytes(path.read_bytes()[:-30])  # the last record cut short
        return path
    path = tmp_path / "c.pcapng"
    path.write_bytes(_pcapng_two_sections()[0] if kind == "sections" else _long_pcapng(kind.split("-")[1]))
    return path


@pytest.mark.parametrize("kind", ["pcap", "sections", "ng-none", "ng-trailer", "ng-interface", "ng-caplen"])
@pytest.mark.parametrize("form", ["batch", "per-record"])
def test_filters_drop_exactly_their_records(tmp_path: Path, kind: str, form: str) -> None:
    """A reader's filter (parallel replay's sharding) drops only the records it names, in both its forms: the
    per-record test and the vectorised test over a buffer (pcap records, pcapng packet blocks). The records it
    keeps, the damage reported and the counts are those of reading without a filter."""
    path = _capture(tmp_path, kind)
    plain, plain_report = _ours([path])
    assert len(plain) == (7 if kind == "sections" else 150 if kind.startswith("ng-") and kind != "ng-none" else 299 if kind == "pcap" else 300)
    assert len(plain_report.problems) == (0 if kind in ("sections", "ng-none") else 1)
    drop = {r.offset for r in plain[::3]}
    asked: list[int] = []

    def skip(buf: bytes, at: int, caplen: int, ts: int, linktype: int, offset: int) -> bool:
        asked.append(offset)
        return offset in drop

    if form == "batch":
        skip.batch = lambda buf, base, first, at, data_at, ts, caplen, linktype: (  # type: ignore[attr-defined]
            asked.extend((at + base).tolist()) or np.flatnonzero(~np.isin(at + base, list(drop)))
        )
    report = SourceReport()
    kept = list(read_captures([str(path)], report, skip))
    assert _rows(kept) == _rows([r for r in plain if r.offset not in drop])
    assert [r.data for r in kept] == [r.data for r in plain if r.offset not in drop]
    assert (report.records, report.bytes, report.problems) == (plain_report.records, plain_report.bytes,
                                                               plain_report.problems)  # fmt: skip
    assert sorted(set(asked)) == sorted(asked) and set(asked) <= {r.offset for r in plain}
    assert drop <= set(asked)  # every dropped record was the filter's decision


# -- not a capture at all -------------------------------------------------------------------------------------
@pytest.mark.parametrize("content", [b"", b"hello world, not a capture", b"\x1f\x8b\x08\x00garbage-garbage", b"\x0a\x0d"])
def test_wrong_magic_is_a_clear_capture_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.pcap"
    path.write_bytes(content)
    with pytest.raises(CaptureError) as exc:
        _ours([path])
    assert str(path) in str(exc.value)


def test_missing_file_and_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="no such file"):
        _ours([tmp_path / "absent.pcap"])
    with pytest.raises(CaptureError, match="no capture files"):
        _ours([tmp_path])


# -- memory -----------------------------------------------------------------------------------------------------
def test_gzip_bomb_like_stream_read_in_bounded_memory(tmp_path: Path) -> None:
    """64 MiB of zeros framed as 1 MiB records compresses to ~64 KiB; reading must not hold the stream."""
    rec = 1 << 20
    n = 64
    path = tmp_path / "bomb.pcap.gz"
    with gzip.open(path, "wb", compresslevel=9) as g:
        g.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, rec, 1))
        zeros = b"\0" * rec
        for i in range(n):
            g.write(struct.pack("<IIII", 1_700_000_000 + i, 0, rec, rec) + zeros)
        del zeros
    assert path.stat().st_size < 1 << 20
    junk = tmp_path / "zeros.gz"
    with gzip.open(junk, "wb") as g:
        for _ in range(64):
            g.write(b"\0" * rec)
    tracemalloc.start()
    try:
        report = SourceReport()
        count = 0
        for r in read_captures([str(path)], report):
            count += 1
            assert len(r.data) == rec
        with pytest.raises(CaptureError):
            list(read_captures([str(junk)], SourceReport()))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == n and report.problems == []
    assert peak < 16 * rec, f"peak {peak} bytes while streaming {n} MiB"
