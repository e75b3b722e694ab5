"""Replay throughput with the full shipped rule pack (alerts written) against decode-only, on the same capture.

Why: rules must not slow the decode path by more than about a quarter. Both modes run in-process through the
same Pipeline and are timed in CPU seconds of this process (process_time: steadier than wall time on a shared
machine); "rules" loads every shipped rule with site lists that make them all active (so list-guarded rules
are evaluated too) and writes alerts as NDJSON to a temporary file. Best of --repeat runs.

    python bench/bench_rules.py bench/out/modbus_200000.pcap [--repeat 3] [--tshark modbus]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(1, str(Path(__file__).resolve().parent))

from detectors.rules import RuleEngine, builtin_rules_dir, load_rules
from sensor.config import load_config
from sensor.outputs.ndjson import NdjsonSink
from sensor.pipeline import Outputs, Pipeline
from sensor.source import SourceReport, read_captures

SITE_LISTS = {  # every list the pack requires, so no rule is skipped
    "modbus_writers": ["10.0.0.0/30"],
    "engineering_hosts": ["10.0.0.1"],
    "s7_writers": ["10.0.0.1"],
    "s7plus_clients": ["10.0.0.1"],
    "mqtt_auth_brokers": ["127.0.0.1"],
    "mqtt_command_publishers": ["line1-controller"],
    "mqtt_known_clients": ["historian-01", "line1-controller", "pump1-sensor"],
}


def run(paths: list[str], rules: bool, out_dir: str) -> tuple[float, dict]:
    config = load_config(None)
    outputs = Outputs()
    detectors = []
    if rules:
        engine = RuleEngine(load_rules([builtin_rules_dir()]), SITE_LISTS, 60.0)
        detectors.append(engine)
        outputs.alerts.append(NdjsonSink(os.path.join(out_dir, "alerts.ndjson")))
    pipe = Pipeline(config, outputs, detectors=detectors)
    t0 = time.process_time()
    pipe.open()
    pipe.run(read_captures(paths, SourceReport()))
    stats = pipe.close()
    return time.process_time() - t0, stats


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("captures", nargs="+")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tshark", choices=["modbus", "s7comm", "mqtt"],
                    help="also time tshark -T fields with bench_replay.py's fields of this protocol (CPU seconds)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        best: dict[str, float] = {}
        last: dict[str, dict] = {}
        for _ in range(args.repeat):  # modes interleaved, so a busy machine slows both alike
            for mode in ("decode-only", "rules+alerts"):
                secs, last[mode] = run(args.captures, mode != "decode-only", tmp)
                best[mode] = min(secs, best.get(mode, secs))
        for mode in ("decode-only", "rules+alerts"):
            stats = last[mode]
            pkts = stats["packets"]
            results[mode] = (best[mode], pkts, stats["alerts"], sum(stats["messages"].values()))
            best_s = best[mode]
            print(f"{mode:13} {pkts:>9,} packets {results[mode][3]:>9,} messages in {best_s:6.2f} s = "
                  f"{pkts / best_s:>9,.0f} packets/s, alerts {stats['alerts']:,}")  # fmt: skip
        d, r = results["decode-only"][0], results["rules+alerts"][0]
        print(f"rules overhead: {100 * (r - d) / d:+.1f}% time")
        if args.tshark and shutil.which("tshark"):
            from bench_replay import TSHARK_FIELDS

            t0 = os.times()
            for c in args.captures:
                cmd = ["tshark", "-n", "-r", c, "-T", "fields", "-d", "tcp.port==5020,mbtcp"]
                for f in TSHARK_FIELDS[args.tshark]:
                    cmd += ["-e", f]
                subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            t1 = os.times()
            ts = (t1.children_user - t0.children_user) + (t1.children_system - t0.children_system)  # tshark's CPU time
            pkts = results["decode-only"][1]
            print(f"tshark        {pkts / ts:>9,.0f} packets/s; rules+alerts is {ts / r:.1f}x tshark")
    return 0


if __name__ == "__main__":
    sys.exit(main())
