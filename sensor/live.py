"""Live capture: receive-only AF_PACKET sockets feeding the same pipeline as replay.

Why AF_PACKET directly: it needs no libpcap binding, gives kernel timestamps (SO_TIMESTAMPNS) and kernel drop
counters (PACKET_STATISTICS), and the socket is never written to: the sensor has no code path that sends on it.
A BPF filter is compiled by tcpdump (libpcap's compiler, `tcpdump -ddd`) and attached with SO_ATTACH_FILTER.
"""

from __future__ import annotations

import ctypes
import os
import select
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

from sensor.source import Record

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_IGNORE_OUTGOING = 23
SO_ATTACH_FILTER = 26
SO_TIMESTAMPNS = 35
SO_RCVBUFFORCE = 33
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_OUTGOING = 4
SNAPLEN = 65535
DLT_EN10MB = 1


class LiveError(Exception):
    pass


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def compile_bpf(expr: str, iface: str) -> bytes:
    """Classic BPF program for ``expr`` as packed sock_filter structs (via tcpdump -ddd)."""
    tcpdump = shutil.which("tcpdump")
    if tcpdump is None:
        raise LiveError("a BPF filter needs tcpdump (libpcap's compiler): apt-get install tcpdump")
    proc = subprocess.run([tcpdump, "-i", iface, "-ddd", expr], capture_output=True, text=True)
    if proc.returncode != 0:
        raise LiveError(f"bad BPF filter {expr!r}: {proc.stderr.strip().splitlines()[-1] if proc.stderr else ''}")
    lines = proc.stdout.split("\n")
    count = int(lines[0])
    prog = b"".join(struct.pack("HBBI", *(int(x) for x in line.split())) for line in lines[1 : 1 + count])
    return prog


@dataclass
class LiveStats:
    received: int = 0
    kernel_packets: int = 0
    kernel_drops: int = 0
    outgoing_skipped: int = 0


class LiveCapture:
    """Receive-only capture on one or more interfaces, yielding Records with kernel timestamps."""

    def __init__(self, interfaces: list[str], bpf: str | None = None, rcvbuf: int = 64 << 20) -> None:
        if not interfaces:
            raise LiveError("no interface given (-i IFACE)")
        self.interfaces = interfaces
        self.stats = LiveStats()
        self.socks: list[socket.socket] = []
        self._running = True
        self._keep: list[ctypes.Array] = []
        self.frame = 0
        try:
            for iface in interfaces:
                self.socks.append(self._open(iface, bpf, rcvbuf))
        except PermissionError:
            self.close()
            raise LiveError("opening a packet socket needs CAP_NET_RAW (run as root or grant the capability)") from None
        except OSError as e:
            self.close()
            raise LiveError(f"cannot capture on {iface}: {e.strerror or e}") from None

    def _open(self, iface: str, bpf: str | None, rcvbuf: int) -> socket.socket:
        if not os.path.exists(f"/sys/class/net/{iface}"):
            raise LiveError(f"no such interface: {iface}")
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        try:
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        if bpf:
            prog = compile_bpf(bpf, iface)
            buf = ctypes.create_string_buffer(prog)
            self._keep.append(buf)
            fprog = _SockFprog(len(prog) // 8, ctypes.addressof(buf))
            s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))
        s.bind((iface, 0))
        # Promiscuous membership: on a SPAN port or tap, frames are not addressed to this NIC. The kernel drops
        # the membership when the socket closes, so the interface is left as it was found.
        ifindex = socket.if_nametoindex(iface)
        s.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, struct.pack("iHH8s", ifindex, PACKET_MR_PROMISC, 0, b""))
        s.setblocking(False)
        return s

    def stop(self) -> None:
        self._running = False

    def read_kernel_stats(self) -> None:
        """Fold PACKET_STATISTICS (reset on read by the kernel) into the totals."""
        for s in self.socks:
            try:
                packets, drops = struct.unpack("II", s.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
            except OSError:
                continue
            self.stats.kernel_packets += packets
            self.stats.kernel_drops += drops

    def records(self, poll_s: float = 0.2, burst: int = 4096) -> Iterator[Record]:
        """Packets until idle for ``poll_s``, ``burst`` packets were read, or stop() was called: the caller
        loops over it, doing its timers (flush, stats) between calls."""
        anc = socket.CMSG_SPACE(16)
        socks = self.socks
        got = 0
        while self._running and got < burst:
            try:
                ready, _, _ = select.select(socks, [], [], poll_s)
            except InterruptedError:
                continue
            for s in ready:
                for _ in range(256):  # drain a burst, then poll the others
                    try:
                        data, ancdata, _flags, addr = s.recvmsg(SNAPLEN, anc)
                    except BlockingIOError:
                        break
                    except InterruptedError:
                        break
                    if addr[2] == PACKET_OUTGOING and len(socks) > 1:
                        # Seen twice when capturing on both ends of a link: keep the copy received on the wire.
                        self.stats.outgoing_skipped += 1
                        continue
                    ts = 0
                    for level, typ, payload in ancdata:
                        if level == socket.SOL_SOCKET and typ == SO_TIMESTAMPNS:
                            sec, nsec = struct.unpack("qq", payload[:16])
                            ts = sec * 1_000_000_000 + nsec
                    if not ts:
                        ts = time.time_ns()
                    self.frame += 1
                    got += 1
                    self.stats.received += 1
                    yield Record(None, self.frame, -1, ts, DLT_EN10MB, data, len(data))
            if not ready:
                return

    def close(self) -> None:
        for s in self.socks:
            s.close()
        self.socks = []


def drop_privileges(user: str | None) -> None:
    """After the sockets are open, run as an unprivileged user (no-op when not root or no user given)."""
    if not user or os.geteuid() != 0:
        return
    import grp
    import pwd

    pw = pwd.getpwnam(user)
    os.setgroups([g.gr_gid for g in grp.getgrall() if user in g.gr_mem] + [pw.pw_gid])
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)
    if os.geteuid() == 0:
        raise LiveError(f"could not drop privileges to {user}")
