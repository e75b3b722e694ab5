"""Delivery throughput of the Elasticsearch sink to the test stand-in server, for a few batch sizes.

    python bench/bench_es.py [--docs 20000] [--batches 200,1000,5000]

Measures the sink end to end (write -> disk spool -> streaming_bulk -> HTTP -> stand-in, in its own process, parses
and stores), so the figure bounds the sink's own cost; a real cluster is usually the slower side. Also times write() alone (the cost
the pipeline thread pays per document: id hash, serialisation, spool append).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sensor.outputs.elasticsearch import ElasticsearchSink, EsSettings, connect
from tests.es_helpers import MODBUS_CAPTURES, replay_into
from tests.es_server import EsServer


def documents(n: int) -> list[dict]:
    mem, _ = replay_into([*MODBUS_CAPTURES, MODBUS_CAPTURES[0].parents[1].parent / "shared" / "pcaps" / "zeek" / "modbusBig.pcap"], [])
    base = [d for d in mem.docs if d["event"]["dataset"] != "ics_sensor.stats"]
    out = []
    for i in range(n):  # distinct documents (distinct ids): vary the frame number
        d = base[i % len(base)]
        out.append({**d, "ics": {**d["ics"], "frame": i}})
    return out


def _serve(conn: Any) -> None:
    es = EsServer("9.1.0").start()
    conn.send(es.url)
    conn.recv()  # until the parent is done


def run(docs: list[dict], batch: int) -> tuple[float, float]:
    """The stand-in runs in its own process, so it does not compete with the sink for the GIL."""
    parent, child = mp.Pipe()
    proc = mp.Process(target=_serve, args=(child,), daemon=True)
    proc.start()
    url = parent.recv()
    with tempfile.TemporaryDirectory() as tmp:
        sink = ElasticsearchSink(EsSettings(hosts=(url,), spool_dir=tmp, batch_docs=batch, close_timeout=600))
        sink.open()
        t0 = time.perf_counter()
        for i in range(0, len(docs), 2048):  # the pipeline's batch size
            sink.write(docs[i : i + 2048])
        t_write = time.perf_counter() - t0
        sink.close()
        t_total = time.perf_counter() - t0
        count = connect(sink.s)[0].count(index="logs-*")["count"]
        assert sink.stats()["delivered"] == len(docs) == count, (sink.stats(), count)
    parent.send(None)
    proc.join(5)
    return len(docs) / t_write, len(docs) / t_total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=20_000)
    ap.add_argument("--batches", default="200,1000,5000")
    a = ap.parse_args()
    docs = documents(a.docs)
    print(f"{len(docs):,} event documents, mean {sum(len(str(d)) for d in docs[:1000]) // 1000} chars")
    print(f"{'batch':>6} {'write() docs/s':>15} {'delivered docs/s':>17}")
    for b in (int(x) for x in a.batches.split(",")):
        w, d = run(docs, b)
        print(f"{b:>6} {w:>15,.0f} {d:>17,.0f}")


if __name__ == "__main__":
    main()
