"""Build a fuzz target by name and run it under atheris.

Sensor modules are imported lazily, inside ``atheris.instrument_imports``, so that coverage feedback covers the
project's code; the same ``build`` serves the short fuzz run of the test suite without instrumentation.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

DECODERS = ("modbus", "s7comm", "mqtt", "mqtt_tls")
CAPTURES = ("pcap", "pcapng", "gzip")
TARGETS = DECODERS + CAPTURES
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build(target: str) -> Callable[[bytes], None]:
    """The ``TestOneInput`` of one target: raises on any finding, returns quietly otherwise."""
    from fuzz import common

    if target in DECODERS:
        dec = common.make_decoder(target)

        def one_decoder(data: bytes) -> None:
            common.run_decoder(target, dec, data)

        return one_decoder
    if target not in CAPTURES:
        raise ValueError(f"unknown fuzz target {target!r}; one of {', '.join(TARGETS)}")
    runner = common.CaptureRunner()
    if target == "gzip":

        def one_gzip(data: bytes) -> None:
            runner.run(common.gzip_input(data))

        return one_gzip
    magic = b"\x0a\x0d\x0d\x0a" if target == "pcapng" else None

    def one_capture(data: bytes) -> None:
        # Keep most inputs on the intended reader: a pcapng target always starts with a section header block.
        runner.run(magic + data[4:] if magic is not None and data[:4] != magic else data)

    return one_capture


def main(target: str) -> None:
    """``python fuzz/fuzz_<target>.py [corpus_dir] [libFuzzer flags]``."""
    import atheris

    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    with atheris.instrument_imports(include=["sensor", "detectors", "fuzz.common"]):
        import fuzz.common  # noqa: F401 - instrumented here, used by build
    test_one_input = build(target)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
