"""Replay throughput and peak memory of the sensor beside tshark on the same large capture.

    python bench/bench_replay.py [--protocol modbus|s7comm|mqtt|all|mixed] [--packets N] [--rules]
                                 [--model PATH] [--workers N]

Generates bench/out/<protocol>_<N>.pcap from the project's real-peer capture (bench/gen_capture.py) when it
is missing (``mixed``: a third of each protocol merged in time order), then times, on the same file:
  - ics-sensor replay FILE --events /dev/null             (decode and write every event document)
  - ics-sensor replay FILE                                (decode only)
  - with --rules: the shipped pack and alerts; with --model: rules, the model and alerts
  - tshark -r FILE -T fields -e <protocol fields>          (tshark's dissection of the same fields)
Each sensor row runs with ``--workers 1`` and, with --workers N, again with N workers (the replay's default is
one worker per CPU for captures of 64 MiB or more). Every command runs --repeat times (default 3), in rounds over
all of them, and the fastest run is printed: the machine's other load only ever slows a run down.
and prints packets per second, the ratio to tshark, CPU seconds (user + system, workers included: wait4 counts
the children the replay waited for) and peak memory. Peak memory: wait4's ru_maxrss is the largest single process
of the tree, not the sum, so the process tree's proportional set size (PSS, which shares forked pages fairly) is
also sampled from /proc every quarter second (``SAMPLE_S``); the larger of the two is printed. A sample costs the
kernel about 1.5 ms of CPU and takes the replay's memory-map lock: sampled every 20 ms, as until stop 16, it took
several percent of the two cores from the 2-worker runs (and nothing from one process, which leaves a core idle).
Timings are figures to read, never assertions.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
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
TSHARK_FIELDS["mixed"] = [f for fields in list(TSHARK_FIELDS.values()) for f in fields]


SAMPLE_S = 0.25  # seconds between memory samples (memory is flat after the first second; see the docstring)


def tree_pss_kb(pid: int) -> int:
    """Proportional set size (kB) of a process and its descendants, from /proc (0 when it is gone)."""
    total = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += next((int(line.split()[1]) for line in f if line.startswith("Pss:")), 0)
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
    return total


def write_merged(parts: list[Path], path: Path) -> None:
    """One Ethernet pcap of every record of ``parts`` in timestamp order (the sensor's own merge)."""
    from sensor.source import SourceReport, read_captures

    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, 1))  # nanosecond pcap
        rec_hdr = struct.Struct("<IIII")
        for r in read_captures([str(p) for p in parts], SourceReport()):
            f.write(rec_hdr.pack(r.ts // 1_000_000_000, r.ts % 1_000_000_000, len(r.data), r.wirelen))
            f.write(r.data)
    tmp.rename(path)


def run(cmd: list[str]) -> tuple[float, int, float]:
    """Wall seconds, peak memory (MB: see the module docstring) and CPU seconds of one command, output discarded.

    The wall clock stops when ``wait4`` returns; memory is sampled by a thread. Until stop 19 one loop did both,
    sleeping SAMPLE_S between samples, so every time was rounded up to the next sample: up to 0.25 s, 8% of a
    3-second replay."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(SAMPLE_S):
            peak[0] = max(peak[0], tree_pss_kb(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    secs = time.perf_counter() - t
    done.set()
    sampler.join()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed ({status}): {' '.join(cmd)}")
    return secs, max(usage.ru_maxrss, peak[0]) // 1024, usage.ru_utime + usage.ru_stime


def compile_bytecode() -> None:
    """Compile the sensor's modules to bytecode, as pip does when it installs a package. In an editable checkout
    the interpreter compiles them on import and caches the result, unless PYTHONDONTWRITEBYTECODE is set (as on
    the machines the figures come from): then every run compiled every module again, 0.09 s of each run's start
    that no installed sensor pays. Reading compiled bytecode does not depend on that variable."""
    import compileall

    for pkg in ("sensor", "detectors"):
        spec = importlib.util.find_spec(pkg)
        if spec is not None and spec.submodule_search_locations:
            for where in spec.submodule_search_locations:
                compileall.compile_dir(where, quiet=1)


def ensure_capture(protocol: str, packets: int) -> Path:
    path = OUT / f"{protocol}_{packets}.pcap"
    if protocol == "mixed" and not path.exists():  # a third of each protocol, merged in time order
        parts = [ensure_capture(p, packets // 3 + (i < packets % 3)) for i, p in enumerate(TEMPLATES)]
        write_merged(parts, path)
        for part in parts:
            part.unlink()
    if not path.exists():
        template, ports = TEMPLATES[protocol]
        subprocess.run([sys.executable, str(ROOT / "bench" / "gen_capture.py"), str(template), "--packets",
                        str(packets), "--ports", ports, "--out", str(path)], check=True)  # fmt: skip
    return path


def bench(
    protocol: str, packets: int, extra: list[str], rules: bool, workers: int = 1, model: str | None = None,
    capture: Path | None = None, repeat: int = 3,
) -> list[tuple[str, float, int, float]]:
    cap = capture or ensure_capture(protocol, packets)
    compile_bytecode()
    site = [] if capture else ["--config", str(BENCH_CONFIG)]  # the generated cells' site lists
    # The console script pip installed beside this interpreter; a version manager's shim in front of it (pyenv's
    # costs 0.1 s a run) is not the sensor.
    beside = Path(sys.executable).parent / "ics-sensor"
    sensor = str(beside) if beside.exists() else shutil.which("ics-sensor") or "ics-sensor"
    base = [sensor, "replay", str(cap), "-q", *extra]
    runs = [
        ("sensor, events to /dev/null", [*base, "--no-builtin-rules", "--events", "/dev/null"]),
        ("sensor, decode only", [*base, "--no-builtin-rules"]),
    ]
    if rules:
        runs.append(("sensor, all rules + alerts", [*base, "--alerts", "/dev/null", *site]))
    if model:
        runs.append(("sensor, rules + model + alerts", [*base, "--alerts", "/dev/null", *site, "--model", model]))
    one = [(f"{label}, 1 worker", [*cmd, "--workers", "1"]) for label, cmd in runs]
    many = [(f"{label}, {workers} workers", [*cmd, "--workers", str(workers)]) for label, cmd in runs]
    runs = [x for pair in zip(one, many, strict=True) for x in pair] if workers > 1 else one
    tshark = shutil.which("tshark")
    if tshark:
        cmd = [tshark, "-n", "-r", str(cap), "-T", "fields"]
        for f in TSHARK_FIELDS[protocol]:
            cmd += ["-e", f]
        if protocol in ("modbus", "mixed"):
            cmd += ["-d", "tcp.port==5020,mbtcp"]
        runs.append(("tshark -T fields", cmd))
    # Rounds over every command (so a slow spell of the machine hits all of them alike); the fastest run of each:
    # other load only ever slows a run down. Peak memory is the largest of any run.
    results: dict[str, list[tuple[float, int, float]]] = {label: [] for label, _ in runs}
    for _ in range(max(1, repeat)):
        for label, cmd in runs:
            results[label].append(run(cmd))
    rows = []
    for label, res in results.items():
        secs, _, cpu = min(res)
        rows.append((label, secs, max(mb for _, mb, _ in res), cpu))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protocol", default="modbus", choices=[*TEMPLATES, "all", "mixed"])
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--rules", action="store_true", help="also run with the shipped rule pack and alerts written")
    ap.add_argument("--workers", type=int, default=1, help="also run each sensor row with --workers N (N > 1)")
    ap.add_argument("--model", metavar="PATH", help="also run with rules and this model (ics-sensor train)")
    ap.add_argument("--capture", metavar="PATH", help="time this capture instead of a generated one (all fields)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each command; the fastest is printed")
    a = ap.parse_args()
    print(f"{'capture':<22} {'run':<42} {'seconds':>8} {'packets/s':>11} {'vs tshark':>9} {'peak MB':>8} {'cpu s':>7}")
    if a.capture:
        from sensor.source import SourceReport, read_captures

        cap = Path(a.capture)
        n = sum(1 for _ in read_captures([str(cap)], SourceReport()))
        rows = bench("mixed", n, [], a.rules, a.workers, a.model, cap, a.repeat)
        print_rows(cap.name, n, rows)
        return
    protocols = list(TEMPLATES) if a.protocol == "all" else [a.protocol]
    for p in protocols:
        n = a.packets
        rows = bench(p, n, [], a.rules, a.workers, a.model, repeat=a.repeat)
        print_rows(f"{p}_{n}", n, rows)


def print_rows(name: str, n: int, rows: list[tuple[str, float, int, float]]) -> None:
    ts = next((s for label, s, _, _ in rows if label.startswith("tshark")), None)
    for label, secs, mb, cpu in rows:
        ratio = f"{ts / secs:.2f}x" if ts else "-"
        print(f"{name:<22} {label:<42} {secs:>8.2f} {n / secs:>11,.0f} {ratio:>9} {mb:>8} {cpu:>7.2f}", flush=True)


if __name__ == "__main__":
    main()
