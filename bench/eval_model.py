"""Evaluation of the learned baseline and anomaly model, in one command.

    python bench/eval_model.py                  # generate bench/out/scenarios/ if missing (root), then evaluate
    python bench/eval_model.py --regenerate     # generate afresh (about 10 minutes of wall time)

Generates the labelled scenarios with bench/scenarios.py (24 h of normal traffic for training, 24 h held out with
another seed, one capture per attack class with 20 instances each; time compressed 500x and timestamps rewritten),
then runs ``ics-sensor evaluate`` on them: per-attack recall (all detectors, baseline alone, model alone),
precision, time to detect, false alerts per 24 h of held-out normal traffic and replay throughput with the model.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--data", type=Path, default=ROOT / "bench" / "out" / "scenarios")
    p.add_argument("--regenerate", action="store_true", help="generate the scenarios even if present")
    p.add_argument("--train-hours", type=float, default=24.0)
    p.add_argument("--test-hours", type=float, default=24.0)
    p.add_argument("--instances", type=int, default=20)
    p.add_argument("--window", type=float, default=60.0)
    p.add_argument("--false-alarms-per-day", type=float, default=0.5)
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "out" / "eval_model.json")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if a.regenerate or not (a.data / "normal_test.pcap").exists():
        import scenarios

        for noisy in ("pymodbus", "snap7", "s7"):
            logging.getLogger(noisy).setLevel(logging.CRITICAL)
        scenarios.generate_all(a.data, a.train_hours, a.test_hours, a.instances)
    from sensor.cli_model import evaluate_dir
    from sensor.config import load_config

    result = evaluate_dir(a.data, load_config(None), a.window, a.false_alarms_per_day)
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(result, indent=1))
    print(f"\nfigures written to {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
