"""Learned baseline and anomaly model (issue 6): training, scoring, explanations, the model file, slow learning.

The captures in tests/data/anomaly/ come from bench/scenarios.py (real pymodbus, python-snap7, mosquitto +
paho-mqtt peers on loopback, time compressed 500x): ``normal_train`` (seed 11) and ``normal_other`` (seed 12, a
later day) are normal operation; ``attacks_mixed`` (seed 13) holds one labelled instance of every attack class.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from detectors.anomaly import AnomalyDetector, LearnOptions, Model, ModelError
from detectors.anomaly import baseline as baseline_mod
from detectors.anomaly import detector as detector_mod
from detectors.anomaly import features as features_mod
from detectors.anomaly.baseline import Baseline, mqtt_match, span_words, topic_patterns, value_margin
from detectors.anomaly.forest import Forest, Knn
from detectors.anomaly.model import FORMAT_VERSION
from sensor.cli import main
from sensor.cli_model import run_pipeline, train_model
from sensor.config import load_config
from sensor.messages import Alert, FlowInfo, Message, PacketRef
from sensor.pipeline import Pipeline
from sensor.source import SourceReport, read_captures

DATA = Path(__file__).parent / "data" / "anomaly"
TRAIN, OTHER, ATTACKS = DATA / "normal_train.pcap.gz", DATA / "normal_other.pcap.gz", DATA / "attacks_mixed.pcap.gz"
WINDOW = 30.0
ATTACK_CLASSES = (
    "recon_scan", "write_new_host", "setpoint_out_of_range", "replay_writes", "polling_flood",
    "polling_period_change", "s7_cpu_stop", "mqtt_new_topic",
)  # fmt: skip


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, _ = train_model(load_config(None), [str(TRAIN)], WINDOW)
    path = tmp_path_factory.mktemp("model") / "model.npz"
    model.save(path)
    return path


def _score(model_path: Path, capture: Path) -> list[Alert]:
    alerts: list[Alert] = []
    run_pipeline(load_config(None), [str(capture)], [AnomalyDetector(Model.load(model_path))], alerts.append)
    return alerts


@pytest.fixture(scope="module")
def attack_alerts(model_path: Path) -> list[Alert]:
    return _score(model_path, ATTACKS)


def test_quiet_on_other_normal_traffic(model_path: Path) -> None:
    alerts = _score(model_path, OTHER)
    assert [a.explanation for a in alerts] == []


@pytest.mark.parametrize("attack", ATTACK_CLASSES)
def test_alerts_on_each_attack(attack: str, attack_alerts: list[Alert]) -> None:
    labels = [lab for lab in json.loads((DATA / "attacks_mixed.labels.json").read_text())["labels"] if lab["attack"] == attack]
    assert len(labels) == 1
    lab = labels[0]
    late = lab["end_ns"] + int(2 * WINDOW * 1e9)
    hits = [a for a in attack_alerts if (a.first_ts or a.ts) <= late and a.ts >= lab["start_ns"]]
    assert hits, f"{attack}: no alert between its start and {2 * WINDOW:g} s after its end"


def test_every_attack_alert_falls_in_an_attack(attack_alerts: list[Alert]) -> None:
    labels = json.loads((DATA / "attacks_mixed.labels.json").read_text())["labels"]
    grace = int(2 * WINDOW * 1e9)
    stray = [a.explanation for a in attack_alerts
             if not any((a.first_ts or a.ts) <= lab["end_ns"] + grace and a.ts >= lab["start_ns"] for lab in labels)]  # fmt: skip
    assert stray == []


def test_alerts_explain_themselves(attack_alerts: list[Alert]) -> None:
    by_rule = {a.rule_id: a for a in attack_alerts}
    talker = by_rule["ICS-BASELINE-NEW-TALKER"]
    assert talker.detector == "baseline" and "never talked to" in (talker.explanation or "")
    assert "of training; first seen" in (talker.explanation or "")
    value = by_rule["ICS-BASELINE-VALUE-RANGE"]
    assert value.extra["baseline"]["register"] == 10
    lo, hi, v = value.extra["baseline"]["learned_min"], value.extra["baseline"]["learned_max"], value.extra["baseline"]["value"]
    assert not lo <= v <= hi and f"set to {v}" in (value.explanation or "")
    stop = [a for a in attack_alerts if a.rule_id == "ICS-BASELINE-S7-NEW-FUNCTION" and a.extra["baseline"]["function"] == 0x29]
    assert len(stop) == 1 and stop[0].severity == "critical" and "PLC Stop" in (stop[0].explanation or "")


@pytest.fixture(scope="module")
def loose_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten minutes of training leave only the pooled per-protocol scorers, whose thresholds extrapolate far at 0.5
    false alarms a day; a budget of 20 a day lets the model layer fire, so its alerts can be checked."""
    model, _ = train_model(load_config(None), [str(TRAIN)], WINDOW, false_alarms_per_day=20)
    path = tmp_path_factory.mktemp("loose") / "model.npz"
    model.save(path)
    return path


def test_model_alerts_carry_score_and_standout_features(loose_model: Path) -> None:
    assert [a.explanation for a in _score(loose_model, OTHER) if a.detector == "model"] == []
    labels = json.loads((DATA / "attacks_mixed.labels.json").read_text())["labels"]
    model = [a for a in _score(loose_model, ATTACKS) if a.detector == "model"]
    assert model, "the model scored no attack window above its threshold"
    for a in model:
        assert any(a.first_ts <= lab["end_ns"] + 2 * WINDOW * 1e9 and a.ts >= lab["start_ns"] for lab in labels)
        m = a.extra["model"]
        assert m["score"] > m["threshold"] and a.score is not None and 0.5 < a.score <= 1.0
        assert len(m["features"]) == 3 and "most unusual" in (a.explanation or "")
    doc = _mapper().alert(model[0])
    assert doc["rule"]["ruleset"] == "model" and doc["event"]["reason"] == model[0].explanation
    assert doc["ics"]["alert"]["details"]["model"]["features"] == model[0].extra["model"]["features"]
    assert doc["event"]["risk_score"] == round(float(model[0].score or 0) * 100, 2)


def _mapper() -> Any:
    from sensor.outputs.ecs import EcsMapper, Observer
    from sensor.protocols import registry

    return EcsMapper(Observer(name="t"), {n: registry.create(n).registry for n in registry.names()})


# -- the model file ------------------------------------------------------------------------------------------


def _rewrite_meta(src: Path, dst: Path, **changes: object) -> None:
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays["meta"].tobytes())
    meta.update(changes)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with open(dst, "wb") as f:
        np.savez(f, **arrays)


def test_model_round_trip(model_path: Path, tmp_path: Path) -> None:
    m = Model.load(model_path)
    m.save(tmp_path / "again.npz")
    m2 = Model.load(tmp_path / "again.npz")
    assert m2.baseline.to_json() == m.baseline.to_json()
    x = np.asarray([m.groups[k].median for k in m.groups])
    for k in m.groups:
        assert m2.groups[k].threshold == m.groups[k].threshold
        assert np.allclose(m2.groups[k].forest.score(x), m.groups[k].forest.score(x))
    with np.load(model_path, allow_pickle=False) as z:
        meta = json.loads(z["meta"].tobytes())
    assert meta["versions"]["scikit_learn"] and meta["features"][0] == "requests"
    assert meta["training"]["span"] and meta["summary"]["messages"]


def test_wrong_schema_is_refused(model_path: Path, tmp_path: Path) -> None:
    bad = tmp_path / "schema.npz"
    _rewrite_meta(model_path, bad, schema_version=99, features=["requests"])
    with pytest.raises(ModelError, match=r"feature schema 99 .*retrain"):
        Model.load(bad)


def test_wrong_format_version_is_refused(model_path: Path, tmp_path: Path) -> None:
    bad = tmp_path / "version.npz"
    _rewrite_meta(model_path, bad, format_version=FORMAT_VERSION + 1)
    with pytest.raises(ModelError, match=f"format version {FORMAT_VERSION + 1}, this sensor reads version {FORMAT_VERSION}"):
        Model.load(bad)


def test_not_a_model_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"\x80\x04not a model")
    with pytest.raises(ModelError, match="not an ics-sensor model file"):
        Model.load(junk)
    with pytest.raises(ModelError, match="no such model file"):
        Model.load(tmp_path / "missing.npz")


def test_damaged_tree_is_refused(model_path: Path, tmp_path: Path) -> None:
    with np.load(model_path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    key = next(k for k in arrays if k.endswith("_points"))
    arrays[key] = arrays[key][:, :3]
    bad = tmp_path / "damaged.npz"
    with open(bad, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(ModelError, match="damaged model file"):
        Model.load(bad)


def test_cli_train_then_replay_and_wrong_model(tmp_path: Path) -> None:
    runner = CliRunner()
    model = tmp_path / "m.npz"
    r = runner.invoke(main, ["train", str(TRAIN), "--model", str(model), "--window", "30"])
    assert r.exit_code == 0, r.output
    assert "training span:" in r.output
    alerts = tmp_path / "alerts.ndjson"
    r = runner.invoke(main, ["replay", str(ATTACKS), "--model", str(model), "--alerts", str(alerts), "--no-builtin-rules", "-q"])
    assert r.exit_code == 0, r.output
    docs = [json.loads(line) for line in alerts.read_text().splitlines()]
    assert {d["rule"]["ruleset"] for d in docs} >= {"baseline"}
    junk = tmp_path / "junk.npz"
    junk.write_text("hello")
    r = runner.invoke(main, ["replay", str(OTHER), "--model", str(junk), "-q"])
    assert r.exit_code == 2 and "not an ics-sensor model file" in r.output


# -- pieces ----------------------------------------------------------------------------------------------------


def test_forest_scores_like_scikit_learn() -> None:
    from sklearn.ensemble import IsolationForest

    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 5))
    x[:, 3] = 1.0  # a constant feature: never split on
    sk = IsolationForest(n_estimators=50, random_state=1).fit(x)
    probe = np.vstack([x[:50], rng.normal(scale=4, size=(50, 5))])
    assert np.allclose(Forest.from_sklearn(sk).score(probe), -sk.score_samples(probe), atol=1e-9)


def test_knn_grows_with_distance() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3))
    knn = Knn.fit(x, np.zeros(3), np.ones(3))
    s = knn.score(np.array([[0.0, 0, 0], [5, 0, 0], [50, 0, 0]]))
    assert s[0] < s[1] < s[2] and s[2] > 40


def test_scoring_in_blocks_bounds_memory_and_keeps_every_score(monkeypatch: pytest.MonkeyPatch) -> None:
    """A window that closes with many pairs is scored in blocks of rows: the same numbers as one block, without a rows x training-points matrix (20,000 x 4,000 float32 would be 320 MB)."""
    import tracemalloc

    from detectors.anomaly import forest as forest_mod

    rng = np.random.default_rng(5)
    knn = Knn.fit(rng.normal(size=(4000, 12)), np.zeros(12), np.ones(12))
    probe = rng.normal(scale=1.5, size=(20000, 12))
    tracemalloc.start()
    try:
        scores = knn.score(probe)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"scoring allocated {peak >> 20} MB at its peak"
    assert np.array_equal(scores[:2000], knn._score(probe[:2000]))  # blocks of 524 rows against one of 2,000
    exact = np.sort(np.sqrt(((probe[:200, None, :] - knn.points[None, :, :].astype(np.float64)) ** 2).sum(2)), 1)
    assert np.allclose(scores[:200], exact[:, : knn.k].mean(1), rtol=1e-4)
    sk_rows = rng.normal(size=(300, 4))
    from sklearn.ensemble import IsolationForest

    forest = Forest.from_sklearn(IsolationForest(n_estimators=20, random_state=2).fit(sk_rows))
    whole = forest.score(sk_rows)
    monkeypatch.setattr(forest_mod, "FOREST_ROWS", 7)
    assert np.array_equal(forest.score(sk_rows), whole)


@pytest.mark.parametrize(("points", "k", "rows"), [(4358, 5, 1), (1439, 5, 3), (600, 7, 40), (5, 5, 2), (3, 3, 1)])
def test_knn_score_is_the_numpy_formula_bit_for_bit(points: int, k: int, rows: int) -> None:
    """The scorer calls the ufuncs and methods behind sum, partition and mean itself (their Python wrappers cost
    a third of a one-row score): the float32 scores must be exactly numpy's formula, not merely close, so a
    model's alerts do not move. With as many points as k there is nothing to partition."""
    rng = np.random.default_rng(points)
    knn = Knn.fit(rng.normal(size=(points, 12)), np.zeros(12), np.full(12, 1.3), k)
    x = rng.normal(scale=2.0, size=(rows, 12))
    q = ((x - knn.center) / knn.scale).astype(np.float32)
    d = np.sqrt(np.maximum((q * q).sum(1)[:, None] + (knn.points * knn.points).sum(1)[None, :] - 2.0 * q @ knn.points.T, 0.0))
    near = np.partition(d, knn.k - 1, axis=1)[:, : knn.k] if d.shape[1] > knn.k else d
    want = near.mean(axis=1)
    got = knn.score(x)
    assert got.dtype == want.dtype == np.float32
    assert np.array_equal(got, want)


def test_knn_below_never_says_below_when_the_score_is_above() -> None:
    """``Knn.below`` lets a window skip scoring when its distances to k earlier neighbours, computed exactly, bound
    the float32 score from above. At a threshold one float step under the score it must say False, for the row's
    own nearest windows (where the exact mean and the float32 score differ only by rounding: without the slack
    for it this fails) and for another row's; a little above the score it says True."""
    rng = np.random.default_rng(11)
    knn = Knn.fit(rng.normal(size=(3000, 12)) * rng.uniform(0.5, 20, 12), np.zeros(12), np.full(12, 2.0), 5)
    x = rng.normal(scale=8.0, size=(300, 12))
    scores, near = knn.score_near(x)
    assert np.array_equal(scores, knn.score(x))
    for i, row in enumerate(x.tolist()):
        s = float(scores[i])
        assert not knn.below(row, float(np.nextafter(s, -np.inf)), near[i]), i
        assert not knn.below(row, float(np.nextafter(s, -np.inf)), near[i - 1]), i
        assert knn.below(row, s * 1.001, near[i]), i


def test_windows_skipped_by_the_bound_alert_exactly_as_scored(monkeypatch: pytest.MonkeyPatch) -> None:
    """The model's alerts (scores and explanations included) with windows skipped by ``Knn.below`` are those of
    scoring every window; the threshold is set low so that windows alert."""
    model_bytes = {}
    model, _ = train_model(load_config(None), [str(TRAIN)], WINDOW, false_alarms_per_day=5000)
    calls = {"below": 0, "skipped": 0}
    real_below = Knn.below

    def counting(self: Knn, x: list[float], threshold: float, near: Any) -> bool:
        r = real_below(self, x, threshold, near)
        calls["below"] += 1
        calls["skipped"] += r
        return r

    for label in ("bound", "bound, cache of 2 pairs", "every window"):
        if label == "every window":
            monkeypatch.setattr(Knn, "below", lambda *a: False)
        else:
            monkeypatch.setattr(Knn, "below", counting)
        if label == "bound, cache of 2 pairs":  # the neighbours cache is cleared when full: only speed changes
            monkeypatch.setattr(detector_mod, "MAX_NEAR", 2)
        alerts: list[Alert] = []
        d = AnomalyDetector(model)
        run_pipeline(load_config(None), [str(ATTACKS)], [d], alerts.append)
        model_bytes[label] = [(a.rule_id, a.ts, a.score, a.explanation) for a in alerts]
        if label == "bound, cache of 2 pairs":
            assert len(d.near) <= 2
            monkeypatch.setattr(detector_mod, "MAX_NEAR", 50_000)
    assert any(r == "ICS-MODEL-WINDOW" for r, *_ in model_bytes["bound"])
    assert calls["skipped"] > calls["below"] // 2 > 0, calls
    assert model_bytes["bound"] == model_bytes["every window"] == model_bytes["bound, cache of 2 pairs"]


def test_topic_patterns_and_matching() -> None:
    topics = [f"site/line{i}/temp" for i in range(6)] + ["site/7/status", "site/8/status", "alarms"]
    pats = topic_patterns(topics)
    assert pats == ["alarms", "site/+/status", "site/+/temp"]
    assert mqtt_match("site/+/temp", "site/line9/temp") and not mqtt_match("site/+/temp", "site/line9/cmd")
    assert mqtt_match("#", "a/b") and not mqtt_match("#", "$SYS/x") and not mqtt_match("a/+", "a/b/c")


def test_value_margin_shrinks_with_samples() -> None:
    assert value_margin(0, 100, 10) > value_margin(0, 100, 1000) >= 10
    assert value_margin(5, 5, 50) == 1.0


def test_span_words() -> None:
    assert span_words(int((3 * 86400 + 4 * 3600 + 5) * 1e9)) == "3 days 4 hours"
    assert span_words(int(61e9)) == "1 minute 1 second"


H = 3_600_000_000_000


def _msg(ts: int, client: str, fc: int = 3, server: str = "10.0.0.20") -> Message:
    flow = FlowInfo(client, 40000, server, 502, "tcp", "1:x", 1)
    fields = {"unit_id": 1, "function_code": fc, "function_name": "x", "is_request": True,
              "access": "read", "table": "holding_registers", "reference_number": 0, "quantity": 2}  # fmt: skip
    return Message(ts, "modbus", flow, True, fields, PacketRef(None, 1, -1))


def _tiny_model() -> Model:
    b = Baseline()
    for i in range(100):
        b.learn_message(_msg(i * 10**9, "10.0.0.7"))
    b.finalize()
    return Model(b)


def test_slow_learning_needs_a_day_spread_over_hours() -> None:
    model = _tiny_model()
    det = AnomalyDetector(model, LearnOptions(min_span_hours=24, min_distinct_hours=6), repeat_seconds=0)
    t0 = 10 * H
    # an intruder polls hard for two hours: alerted on, never learned
    burst = [a for k in range(7200) for a in det.on_message(_msg(t0 + k * 10**9, "10.0.0.66"))]
    assert len(burst) == 7200 and det.learner is not None and det.learner.learned == []
    # the same host keeps appearing once an hour for a day: learned after 24 h, then quiet
    late = []
    for h in range(3, 30):
        late.append(list(det.on_message(_msg(t0 + h * H, "10.0.0.66"))))
    assert det.learner.learned == ["new_talker 10.0.0.66>10.0.0.20:502/modbus"]
    assert late[-1] == [] and late[0] != []


def test_slow_learning_budget_per_day() -> None:
    det = AnomalyDetector(_tiny_model(), LearnOptions(min_span_hours=1, min_distinct_hours=2, max_per_day=3), repeat_seconds=0)
    for h in range(3):
        for host in range(10):
            det.on_message(_msg(h * H, f"10.0.1.{host}"))
    assert det.learner is not None and len(det.learner.learned) == 3


def test_caps_evict_and_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(baseline_mod.CAPS, "talkers", 5)
    b = Baseline()
    for i in range(12):
        b.learn_message(_msg(i, f"10.0.2.{i}"))
    assert len(b.talkers) == 5 and b.evicted["talkers"] == 7


def test_register_memory_per_block_matches_per_register(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read values remembered a block at a time (features.WindowTracker._read) count exactly as register by
    register: overlapping blocks, unchanged blocks, and evictions at the cap (here 4 registers)."""
    monkeypatch.setattr(features_mod, "MAX_VALUE_MEMORY", 4)
    flow = FlowInfo("10.0.0.7", 40000, "10.0.0.20", 502, "tcp", "1:x", 1)
    tracker = features_mod.WindowTracker(60.0)
    steps = [(0, [1, 2]), (1, [5, 6]), (0, [1, 5]), (3, [7, 8]), (0, [9, 5])]
    for k, (ref, vals) in enumerate(steps):
        fields = {"unit_id": 1, "function_code": 3, "is_request": False, "access": "read", "table": "holding_registers",
                  "request_reference_number": ref, "values": vals, "length": 7}  # fmt: skip
        m = Message(H + k, "modbus", flow, False, fields, PacketRef(None, 1, -1))
        tracker.advance_to(m.ts)
        tracker.add(m, features_mod.pair_of(m))
    (w,) = tracker.windows.values()
    # step 2: register 1 seen (2 -> 5); step 3: both seen, unchanged; steps 4-5: new registers evict the oldest
    assert (w.values_read, w.values_changed, tracker.evicted) == (3, 1, 3)
    assert len(tracker.last_values) == 4


@pytest.mark.parametrize("gap", [False, True])
def test_replay_with_a_model_is_the_same_with_workers(tmp_path: Path, gap: bool) -> None:
    """``replay --model --workers N``: each worker runs the model's per-pair half on its host pairs and the parent
    merges their deviations and window summaries, so the alerts (baseline deviations and scored windows, a
    threshold set low so windows do alert) and the events are byte for byte those of one process, with the
    rule pack's alerts among them.

    ``gap``: the capture's second half is moved so that its first packet comes exactly one window after the last
    packet before it. That window is scored only if no more than a window passed since the latest time seen,
    which is a message in some worker, not the parent's last tick (ticks are whole seconds)."""
    import subprocess
    import sys

    from tests.craft import write_pcap

    model, _ = train_model(load_config(None), [str(TRAIN)], WINDOW, false_alarms_per_day=5000)
    model.save(tmp_path / "m.npz")
    capture = ATTACKS
    if gap:
        recs = [(r.ts, r.data) for r in read_captures([str(ATTACKS)], SourceReport())]
        half = len(recs) // 2
        shift = recs[half - 1][0] + int(WINDOW * 1e9) - recs[half][0]
        assert recs[half - 1][0] % 1_000_000_000  # the last packet before the gap is not at a whole second
        recs[half:] = [(ts + shift, data) for ts, data in recs[half:]]
        capture = write_pcap(tmp_path / "gap.pcap", 1, recs, nano=True)
    outs = {}
    for w in (1, 2, 4):
        al, ev = tmp_path / f"al{w}.ndjson", tmp_path / f"ev{w}.ndjson"
        run = subprocess.run(
            [sys.executable, "-m", "sensor.cli", "replay", str(capture), "--model", str(tmp_path / "m.npz"),
             "--alerts", str(al), "--events", str(ev), "--workers", str(w), "-q"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        outs[w] = (al.read_bytes(), ev.read_bytes())
    rulesets = [json.loads(line)["rule"]["ruleset"] for line in outs[1][0].splitlines()]
    assert {"model", "baseline", "rules"} <= set(rulesets), rulesets
    assert outs[2] == outs[1] and outs[4] == outs[1]


def test_the_detector_splits_for_workers_only_when_its_halves_agree(model_path: Path) -> None:
    """``shard``: with slow learning (the baseline changes under the workers) or a window that is not whole
    seconds (it would not close at a tick) the detector stays whole; split, it no longer reads messages itself."""
    tick = 1_000_000_000
    assert AnomalyDetector(Model.load(model_path), LearnOptions()).shard(tick) is None
    odd = Model.load(model_path)
    odd.window_seconds = 2.5
    assert AnomalyDetector(odd).shard(tick) is None
    d = AnomalyDetector(Model.load(model_path))
    made = d.shard(tick)
    assert made is not None and made[1] == int(WINDOW * 1e9)
    scorer = made[0]()
    assert scorer.sharded and scorer is not made[0]()  # one per worker
    msgs: list[Message] = []
    pipe = Pipeline(load_config(None))
    pipe.flows.emit = msgs.append
    pipe.run(read_captures([str(ATTACKS)], SourceReport()))
    assert msgs and all(d.on_message(m) == () for m in msgs)
    assert d.shard(tick) is None  # split once


def test_slow_learning_with_workers_keeps_the_whole_detector_in_the_parent(tmp_path: Path, model_path: Path) -> None:
    """``--model-learn`` with workers: the detector does not split (what it learns changes the baseline every
    message is checked against), runs whole in the parent on every message, and alerts as one process does."""
    import subprocess
    import sys

    outs = []
    for w in (1, 2):
        al = tmp_path / f"al{w}.ndjson"
        run = subprocess.run(
            [sys.executable, "-m", "sensor.cli", "replay", str(ATTACKS), "--model", str(model_path), "--model-learn",
             str(tmp_path / f"learned{w}.npz"), "--alerts", str(al), "--workers", str(w), "-q"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        outs.append(al.read_bytes())
    assert outs[0] and outs[1] == outs[0]


def test_workers_report_when_the_models_tables_reach_their_caps(monkeypatch: pytest.MonkeyPatch, model_path: Path) -> None:
    """Each worker evicts from its own per-pair tables, so past a cap the features can differ from one process's:
    the replay says so, as it does for the flow table's cap."""
    from sensor.parallel import replay_parallel
    from sensor.pipeline import Outputs

    def problems(memory: int) -> list[str]:
        monkeypatch.setattr(features_mod, "MAX_VALUE_MEMORY", memory)  # the forked workers inherit it
        rep = SourceReport()
        detectors = [AnomalyDetector(Model.load(model_path))]
        replay_parallel(load_config(None), [str(ATTACKS)], Outputs(), detectors, None, 2, rep)
        return [p for p in rep.problems if "model's per-pair tables" in p]

    assert problems(8) and not problems(100_000)


def test_resumed_replay_with_the_model_and_workers_equals_one_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interrupted after a checkpoint and resumed with 2 workers, the model's half in each: the same alerts and
    events as one process resumed from the same checkpoint (both start the detectors afresh at that record)."""
    from tests.craft import write_pcap
    from tests.test_checkpoint import Crash, _copy_interrupted, _die_after_second_checkpoint, _replay

    model, _ = train_model(load_config(None), [str(TRAIN)], WINDOW, false_alarms_per_day=5000)
    model.save(tmp_path / "m.npz")
    recs = [(r.ts, r.data) for r in read_captures([str(ATTACKS)], SourceReport())]
    span = recs[-1][0] - recs[0][0] + 3_600_000_000_000
    cap = write_pcap(tmp_path / "four.pcap", 1, [(ts + k * span, d) for k in range(4) for ts, d in recs], nano=True)
    run, one = tmp_path / "run", tmp_path / "one"
    run.mkdir(), one.mkdir()
    ckpt = str(run / "ck.json")
    with_model = ("--model", str(tmp_path / "m.npz"))
    saved = _die_after_second_checkpoint(monkeypatch)
    res = _replay(cap, run, *with_model, "--checkpoint", ckpt, "--checkpoint-every", "0", "--workers", "2")
    assert isinstance(res.exception, Crash) and 0 < saved[0] < saved[1] < 4 * len(recs)
    monkeypatch.undo()
    res = _replay(cap, one, *with_model, "--checkpoint", _copy_interrupted(run, ckpt, one), "--workers", "1")
    assert res.exit_code == 0, res.output
    res = _replay(cap, run, *with_model, "--checkpoint", ckpt, "--workers", "2")
    assert res.exit_code == 0, res.output
    for name in ("ev.ndjson", "al.ndjson"):
        assert (run / name).read_bytes() == (one / name).read_bytes(), name
    rulesets = {json.loads(line)["rule"]["ruleset"] for line in (one / "al.ndjson").read_bytes().splitlines()}
    assert {"model", "baseline"} <= rulesets
