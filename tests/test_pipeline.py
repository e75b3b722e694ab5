"""The pipeline hands messages and ticks to the detectors in batches (pipeline.run_detectors): the alerts must come
out exactly as if every detector were called per message, and none may be held back past the end of a run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sensor.config import load_config
from sensor.messages import Alert
from sensor.pipeline import DETECT_BATCH, Pipeline, run_detectors
from sensor.source import SourceReport, read_captures

DEMO = Path(__file__).resolve().parents[1] / "pcaps" / "modbus_demo.pcap"


class Emitter:
    """Alerts named after the detector and the item: on every ``every``-th message, and on ticks if asked;
    as a generator when ``lazy`` (its body runs only when iterated)."""

    def __init__(self, name: str, every: int, ticks: bool, lazy: bool) -> None:
        self.name, self.every, self.ticks, self.lazy = name, every, ticks, lazy
        self.seen = 0
        self.closed = False

    def _alerts(self, what: str, n: int) -> list[str]:
        return [f"{self.name}:{what}:{k}" for k in range(n)]

    def _out(self, what: str, n: int) -> Any:
        if not self.lazy:
            return self._alerts(what, n)

        def gen() -> Iterator[str]:
            yield from self._alerts(what, n)

        return gen()

    def on_message(self, m: Any) -> Any:
        self.seen += 1
        return self._out(f"m{m}", 2) if self.seen % self.every == 0 else ()

    def on_time(self, ts: int) -> Any:
        return self._out(f"t{ts}", 1) if self.ticks else ()

    def close(self) -> Any:
        return ()


def _reference(detectors: list[Emitter], items: list[Any]) -> list[str]:
    """The order before batching: per item, every detector in turn."""
    out: list[str] = []
    for x in items:
        for d in detectors:
            out += d.on_time(x) if type(x) is int else d.on_message(x)
    return out


class Msg(str):
    """A stand-in message (anything that is not an int is a message to run_detectors)."""


def test_run_detectors_keeps_the_per_message_order_of_alerts() -> None:
    items: list[Any] = []
    for i in range(1, 1300):
        items.append(Msg(str(i)))
        if i % 7 == 0:
            items.append(i * 1000)  # a tick
    want = _reference([Emitter("a", 3, True, False), Emitter("b", 2, False, True), Emitter("c", 5, True, True)], items)
    got: list[str] = []
    dets = [Emitter("a", 3, True, False), Emitter("b", 2, False, True), Emitter("c", 5, True, True)]
    for i in range(0, len(items), 500):
        run_detectors(dets, items[i : i + 500], got.append)  # type: ignore[arg-type]
    assert len(want) > 1000
    assert got == want


class Counter:
    name = "counter"

    def __init__(self) -> None:
        self.messages = 0

    def on_message(self, m: Any) -> list[Alert]:
        self.messages += 1
        return []

    def on_time(self, ts: int) -> list[Alert]:
        return []

    def close(self) -> list[Alert]:
        return []


def test_every_message_reaches_the_detectors_by_the_end_of_each_run() -> None:
    """Live mode calls ``run`` once per burst of packets: what a burst decoded must be detected before ``run``
    returns, not when a later burst fills the batch."""
    records = list(read_captures([str(DEMO)], SourceReport()))
    d = Counter()
    pipe = Pipeline(load_config(None), detectors=[d])
    pipe.open()
    reference = Pipeline(load_config(None), detectors=[])
    reference.open()
    half = len(records) // 2
    pipe.run(records[:half])
    reference.run(records[:half])
    decoded = sum(reference.counters.messages.values())
    assert 0 < decoded < DETECT_BATCH  # a burst smaller than a batch
    assert d.messages == decoded
    pipe.run(records[half:])
    reference.run(records[half:])
    assert d.messages == sum(reference.counters.messages.values())


class Ticks(Counter):
    def __init__(self) -> None:
        super().__init__()
        self.ticks: list[int] = []

    def on_time(self, ts: int) -> list[Alert]:
        self.ticks.append(ts)
        return []


def test_ticks_come_at_the_first_record_of_each_new_second() -> None:
    """Ticks are aligned on whole seconds of capture time (pipeline.next_tick): a window of whole seconds then
    closes at a tick record, whichever records a process saw, which the parallel replay's workers rely on. Not
    aligned (one second after the previous tick), the record at 2.2 s would not tick."""
    s = 1_000_000_000
    base = 1_700_000_000 * s
    times = [0.5, 0.9, 1.6, 1.7, 2.2, 2.3, 3.0, 5.9, 6.1]
    records = [r for r in read_captures([str(DEMO)], SourceReport())][: len(times)]
    for r, t in zip(records, times, strict=True):
        r.ts = base + int(t * s)
    d = Ticks()
    pipe = Pipeline(load_config(None), detectors=[d])
    pipe.open()
    pipe.run(records)
    assert [(ts - base) / s for ts in d.ticks] == [0.5, 1.6, 2.2, 3.0, 5.9, 6.1]
