"""``ics-sensor train`` and ``ics-sensor evaluate``, and the model option of ``replay`` (issue 6).

Training and evaluation drive the pipeline, so they live on the CLI side; the detector itself (detectors/anomaly)
only sees messages.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from detectors.anomaly import AnomalyDetector, Model, Trainer
from detectors.anomaly.model import ALGORITHMS
from sensor.cli_fail import fail
from sensor.config import Config, ConfigError, load_config
from sensor.messages import Alert
from sensor.pipeline import Pipeline
from sensor.source import CaptureError, SourceReport, expand_paths, read_captures


def run_pipeline(config: Config, files: list[str], detectors: list[Any], on_alert: Callable[[Alert], None] | None = None) -> dict[str, Any]:
    """Replay ``files`` through the pipeline with ``detectors``; return the pipeline statistics."""
    report = SourceReport()
    pipe = Pipeline(config, detectors=detectors, on_alert=on_alert)
    pipe.open()
    pipe.run(read_captures(files, report))
    stats = pipe.close()
    stats["source_problems"] = list(report.problems)
    return stats


def train_model(
    config: Config, files: list[str], window: float = 60.0, false_alarms_per_day: float = 0.5, seed: int = 0,
    algorithm: str = "knn",
) -> tuple[Model, dict[str, Any]]:
    trainer = Trainer(window)
    stats = run_pipeline(config, files, [trainer])
    summary = {"captures": [Path(f).name for f in files], "packets": stats["packets"], "bytes": stats["bytes"]}
    return trainer.model(false_alarms_per_day, seed, summary, algorithm), stats


@click.command()
@click.argument("captures", nargs=-1, required=True)
@click.option("--model", "model_path", metavar="PATH", required=True, help="Model file to write (.npz).")
@click.option("--config", "config_path", metavar="PATH", help="Sensor configuration (YAML).")
@click.option("--window", type=click.FloatRange(1, 3600), default=60.0, show_default=True, help="Feature window, seconds.")
@click.option("--false-alarms-per-day", type=click.FloatRange(0.001, 1000), default=0.5, show_default=True,
              help="Model threshold: expected model alerts per day of traffic like the training data.")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed of the forests.")
@click.option("--algorithm", type=click.Choice(ALGORITHMS), default="knn", show_default=True,
              help="Window scorer: k-nearest-neighbour distance or isolation forest (see bench/eval_model.py).")  # fmt: skip
def train(captures: tuple[str, ...], model_path: str, config_path: str | None, window: float,
          false_alarms_per_day: float, seed: int, algorithm: str = "knn") -> None:  # fmt: skip
    """Learn normal behaviour from captures of normal traffic and write the model file."""
    try:
        config = load_config(config_path)
        files = expand_paths(list(captures))
        model, stats = train_model(config, files, window, false_alarms_per_day, seed, algorithm)
    except (ConfigError, CaptureError) as e:
        fail(str(e))
    if not model.baseline.messages:
        fail("no Modbus, S7comm or MQTT message in the training captures; nothing learned")
    model.save(model_path)
    click.echo(f"trained on {len(files)} capture(s), {stats['packets']:,} packets -> {model_path}", err=True)
    click.echo(model.describe(), err=True)
    for p in stats["source_problems"]:
        click.echo(f"warning: {p}", err=True)


# ---------------------------------------------------------------------------------------------------------
# evaluate: labelled scenarios (bench/scenarios.py) -> recall, precision, false alerts per hour, time to detect
# ---------------------------------------------------------------------------------------------------------


def _labels(pcap: Path) -> list[dict[str, Any]]:
    meta = json.loads(pcap.with_suffix(".labels.json").read_text())
    return list(meta.get("labels", []))


def score_attack(alerts: list[Alert], labels: list[dict[str, Any]], grace_ns: int) -> dict[str, Any]:
    """Match alerts to labelled instances: an alert whose span overlaps [start, end + grace] detects it."""
    hit: dict[int, int] = {}  # instance -> first detecting alert ts
    by_det: dict[str, set[int]] = {}
    matched = 0
    for a in alerts:
        first = a.first_ts or a.ts
        ok = False
        for i, lab in enumerate(labels):
            if first <= lab["end_ns"] + grace_ns and a.ts >= lab["start_ns"]:
                ok = True
                hit[i] = min(hit.get(i, a.ts), a.ts)
                by_det.setdefault(a.detector, set()).add(i)
        matched += ok
    n = len(labels)
    ttd = [max(hit[i] - labels[i]["start_ns"], 0) / 1e9 for i in hit]
    return {
        "instances": n, "detected": len(hit), "recall": len(hit) / n if n else 0.0,
        "alerts": len(alerts), "true_alerts": matched, "precision": matched / len(alerts) if alerts else 1.0,
        "ttd_median_s": statistics.median(ttd) if ttd else None, "ttd_max_s": max(ttd) if ttd else None,
        "recall_by_detector": {d: len(s) / n for d, s in sorted(by_det.items())},
    }  # fmt: skip


def evaluate_dir(data: Path, config: Config, window: float = 60.0, fa_per_day: float = 0.5, seed: int = 0,
                 echo: Callable[[str], None] = print, algorithm: str = "knn") -> dict[str, Any]:  # fmt: skip
    """Train on data/train.pcap, score data/normal_test.pcap and every data/attack_*.pcap; print and return figures."""
    train_pcap, normal_pcap = data / "train.pcap", data / "normal_test.pcap"
    attacks = sorted(p for p in data.glob("attack_*.pcap") if not p.name.endswith(".raw.pcap"))
    for p in (train_pcap, normal_pcap):
        if not p.exists():
            raise CaptureError(f"{p}: missing; generate the scenarios first (python bench/eval_model.py)")
    t0 = time.perf_counter()
    model, tstats = train_model(config, [str(train_pcap)], window, fa_per_day, seed, algorithm)
    train_s = time.perf_counter() - t0
    b = model.baseline
    echo(f"trained on {train_pcap.name}: {b.training_span()} of capture time, {tstats['packets']:,} packets, "
         f"{len(model.groups)} {algorithm} groups, {train_s:.1f} s")  # fmt: skip
    result: dict[str, Any] = {"training": {"span_hours": (b.last_ns - b.first_ns) / 3.6e12, "packets": tstats["packets"],
                                           "seconds": round(train_s, 2), "forests": len(model.groups)}}  # fmt: skip

    # held-out normal: false alerts per hour, and replay throughput with the detector on and off
    alerts: list[Alert] = []
    with_model = run_pipeline(config, [str(normal_pcap)], [AnomalyDetector(model)], alerts.append)
    without = run_pipeline(config, [str(normal_pcap)], [])
    hours = _capture_hours(normal_pcap)
    per_det: dict[str, int] = {}
    for a in alerts:
        per_det[a.detector] = per_det.get(a.detector, 0) + 1
    result["normal"] = {
        "hours": round(hours, 2), "false_alerts": len(alerts), "false_alerts_per_hour": len(alerts) / hours if hours else 0.0,
        "false_alerts_per_24h": 24 * len(alerts) / hours if hours else 0.0, "by_detector": per_det,
        "alerts": [f"{a.rule_id}: {a.explanation}" for a in alerts[:20]],
        "packets": with_model["packets"], "pps_with_model": with_model["packets_per_second"],
        "pps_without_detectors": without["packets_per_second"],
    }  # fmt: skip
    n = result["normal"]
    echo(f"held-out normal {normal_pcap.name}: {n['hours']:.1f} h, {n['false_alerts']} false alerts "
         f"({n['false_alerts_per_24h']:.2f} per 24 h; {', '.join(f'{k} {v}' for k, v in per_det.items()) or 'none'})")  # fmt: skip
    for line in n["alerts"]:
        echo(f"  {line}")
    echo(f"replay throughput on {n['packets']:,} packets: {n['pps_with_model']:,} packets/s with the model, "
         f"{n['pps_without_detectors']:,} packets/s without detectors")  # fmt: skip

    grace = int(2 * window * 1e9)
    result["attacks"] = {}
    echo(f"\n{'attack':24} {'inst':>4} {'recall':>6} {'base':>5} {'model':>5} {'alerts':>6} {'prec':>5} {'ttd med':>8} {'ttd max':>8}")
    for pcap in attacks:
        name = pcap.stem.removeprefix("attack_")
        labels = _labels(pcap)
        al: list[Alert] = []
        run_pipeline(config, [str(pcap)], [AnomalyDetector(model)], al.append)
        r = score_attack(al, labels, grace)
        result["attacks"][name] = r
        rb = r["recall_by_detector"]
        ttd = f"{r['ttd_median_s']:.1f}s" if r["ttd_median_s"] is not None else "-"
        ttx = f"{r['ttd_max_s']:.1f}s" if r["ttd_max_s"] is not None else "-"
        echo(f"{name:24} {r['instances']:4} {r['recall']:6.2f} {rb.get('baseline', 0):5.2f} {rb.get('model', 0):5.2f} "
             f"{r['alerts']:6} {r['precision']:5.2f} {ttd:>8} {ttx:>8}")  # fmt: skip
    return result


def _capture_hours(pcap: Path) -> float:
    from sensor.source import read_capture

    first = last = None
    for rec in read_capture(str(pcap), SourceReport()):
        if first is None:
            first = rec.ts
        last = rec.ts
    return ((last or 0) - (first or 0)) / 3.6e12


@click.command()
@click.option("--data", "data_dir", metavar="DIR", default="bench/out/scenarios", show_default=True,
              help="Scenario captures from bench/scenarios.py (train.pcap, normal_test.pcap, attack_*.pcap).")  # fmt: skip
@click.option("--config", "config_path", metavar="PATH", help="Sensor configuration (YAML).")
@click.option("--window", type=click.FloatRange(1, 3600), default=60.0, show_default=True)
@click.option("--false-alarms-per-day", type=click.FloatRange(0.001, 1000), default=0.5, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--algorithm", type=click.Choice(ALGORITHMS), default="knn", show_default=True)
@click.option("--json", "json_path", metavar="PATH", help="Write the figures as JSON too.")
def evaluate(data_dir: str, config_path: str | None, window: float, false_alarms_per_day: float, seed: int,
             json_path: str | None, algorithm: str = "knn") -> None:  # fmt: skip
    """Train on the normal scenario capture, score held-out normal and attack captures, print the figures."""
    try:
        config = load_config(config_path)
        result = evaluate_dir(Path(data_dir), config, window, false_alarms_per_day, seed, click.echo, algorithm)
    except (ConfigError, CaptureError) as e:
        fail(str(e))
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=1))
