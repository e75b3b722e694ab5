"""Run the atheris harnesses, at most ``--jobs`` at a time, one log per target in fuzz/logs/.

    python fuzz/make_corpus.py && python fuzz/run.py --runs 1000000 --jobs 2 [target ...]

A crash leaves its input in fuzz/artifacts/<target>/; replay it with ``python fuzz/fuzz_<target>.py <file>``.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from fuzz.harness import CAPTURES, TARGETS  # noqa: E402

MAX_LEN = {t: (8192 if t in CAPTURES else 4096) for t in TARGETS}


def command(target: str, runs: int) -> list[str]:
    corpus = HERE / "corpus" / target
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts = HERE / "artifacts" / target
    artifacts.mkdir(parents=True, exist_ok=True)
    return [
        sys.executable, str(HERE / f"fuzz_{target}.py"), str(corpus), f"-runs={runs}", f"-max_len={MAX_LEN[target]}",
        "-timeout=30", "-rss_limit_mb=3072", "-print_final_stats=1", f"-artifact_prefix={artifacts}/",
    ]  # fmt: skip


def summary(log: Path) -> str:
    """The last status line (inputs run, cov, ft, corpus) and any crash libFuzzer reported."""
    text = log.read_text(errors="replace")
    status = [line for line in text.splitlines() if re.match(r"#\d+\s", line)]
    crash = re.findall(r"Test unit written to (\S+)", text)
    runs = re.search(r"stat::number_of_executed_units:\s*(\d+)", text)
    return f"{status[-1] if status else 'no status'}; executed={runs.group(1) if runs else '?'}; crashes={crash}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("targets", nargs="*", default=list(TARGETS))
    ap.add_argument("--runs", type=int, default=1_000_000)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    logs = HERE / "logs"
    logs.mkdir(exist_ok=True)
    queue = list(args.targets)
    running: dict[str, tuple[subprocess.Popen[bytes], float]] = {}
    while queue or running:
        while queue and len(running) < args.jobs:
            t = queue.pop(0)
            with open(logs / f"{t}.log", "wb") as out:
                running[t] = (
                    subprocess.Popen(command(t, args.runs), stdout=out, stderr=subprocess.STDOUT),
                    time.time(),
                )
        time.sleep(2)
        for t, (proc, started) in list(running.items()):
            if proc.poll() is not None:
                del running[t]
                print(f"{t}: exit {proc.returncode} after {time.time() - started:.0f}s: {summary(logs / f'{t}.log')}",
                      flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
