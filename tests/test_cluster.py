"""The cluster recipe (issue 10): a replay on a real (local) Dask cluster gives what ``ics-sensor replay FILE`` gives
for each file, and every document reaches the shared Elasticsearch once."""

from __future__ import annotations

import shutil
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from sensor.cli import main
from sensor.cluster import output_paths, replay_on_dask
from tests.es_server import EsServer

pytest.importorskip("dask.distributed")
ROOT = Path(__file__).resolve().parents[1]
CAPTURES = ["modbus_demo.pcap", "s7comm_demo.pcap", "mqtt_demo.pcap"]


def _stats(path: str) -> dict:
    doc = orjson.loads(Path(path).read_bytes())
    for k in ("seconds", "packets_per_second"):
        doc["ics"]["stats"].pop(k)
    doc["ics"]["stats"].pop("assets", None)  # with --es the asset inventory is on (a kind it delivers)
    doc.pop("event")  # event.ingested and similar times of the run
    return doc


def test_dask_cluster_replay_matches_one_machine_and_fills_one_elasticsearch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "shared"
    (shared / "captures").mkdir(parents=True)
    for name in CAPTURES:
        shutil.copy(ROOT / "pcaps" / name, shared / "captures" / name)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))  # the tasks' Elasticsearch spools
    with EsServer("9.1.0") as es:
        results = replay_on_dask([str(shared / "captures")], str(shared / "out"), es_urls=[es.url])
        assert [Path(r["capture"]).name for r in sorted(results, key=lambda r: r["capture"])] == sorted(CAPTURES)
        total = 0
        for r in results:
            cap = r["capture"]
            one = tmp_path / "one" / Path(cap).name
            one.mkdir(parents=True)
            res = CliRunner().invoke(
                main,
                ["replay", cap, "-q", "--events", str(one / "ev"), "--alerts", str(one / "al"), "--stats", str(one / "st")],
            )  # fmt: skip
            assert res.exit_code == 0, res.output
            out = output_paths(cap, str(shared / "out"))
            assert out == r["outputs"]
            assert Path(out["events"]).read_bytes() == (one / "ev").read_bytes()
            assert Path(out["alerts"]).read_bytes() == (one / "al").read_bytes()
            assert _stats(out["stats"]) == _stats(str(one / "st"))
            assert r["elasticsearch"]["delivered"] > 0 and r["elasticsearch"]["dead_lettered"] == 0
            total += sum(len(Path(out[k]).read_bytes().splitlines()) for k in ("events", "alerts", "stats"))
        assert any(r["alerts"] for r in results)
        # One Elasticsearch for all tasks: every document of every task once (events, alerts, stats, assets).
        ids = es.ids()
        assert len(ids) == len(set(ids)) == sum(r["elasticsearch"]["delivered"] for r in results)
        assert len(ids) > total


def test_replay_cluster_command_names_a_missing_capture(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["replay-cluster", str(tmp_path / "nope"), "--out-dir", str(tmp_path / "out")])
    assert res.exit_code == 2 and "nope: no such file or directory" in res.output
