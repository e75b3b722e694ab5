"""Health endpoint: Prometheus text format on localhost, from a snapshot the sensor loop refreshes.

The HTTP thread only reads an immutable snapshot, so it never touches the pipeline's state.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# metric name -> (stats path, type, help)
METRICS: list[tuple[str, tuple[str, ...], str, str]] = [
    ("ics_sensor_packets_total", ("packets",), "counter", "Packets received and processed"),
    ("ics_sensor_bytes_total", ("bytes",), "counter", "Captured bytes processed"),
    ("ics_sensor_kernel_drops_total", ("live", "kernel_drops"), "counter", "Packets the kernel dropped before the sensor read them"),
    ("ics_sensor_flows_total", ("flows",), "counter", "Flows created"),
    ("ics_sensor_decode_errors_total", ("decode_errors",), "counter", "Protocol decode errors (anomalies)"),
    ("ics_sensor_alerts_total", ("alerts",), "counter", "Alerts raised"),
    ("ics_sensor_decoder_exceptions_total", ("tcp", "decoder_exceptions"), "counter", "Decoder bugs caught"),
    ("ics_sensor_flows_evicted_total", ("tcp", "evicted_cap"), "counter", "Flows evicted by the flow cap"),
    ("ics_sensor_spool_bytes", ("outputs", "spool_bytes"), "gauge", "Bytes waiting in the output spool"),
    ("ics_sensor_output_errors_total", ("outputs", "errors"), "counter", "Output delivery errors"),
]


def _get(stats: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = stats
    for p in path:
        if not isinstance(node, dict) or p not in node:
            return None
        node = node[p]
    return node


def render(stats: dict[str, Any]) -> str:
    lines = []
    for name, path, typ, help_ in METRICS:
        value = _get(stats, path)
        if value is None:
            continue
        lines += [f"# HELP {name} {help_}", f"# TYPE {name} {typ}", f"{name} {value}"]
    msgs = stats.get("messages", {})
    if msgs:
        lines += ["# HELP ics_sensor_messages_total Decoded protocol messages", "# TYPE ics_sensor_messages_total counter"]
        lines += [f'ics_sensor_messages_total{{protocol="{p}"}} {n}' for p, n in sorted(msgs.items())]
    return "\n".join(lines) + "\n"


class HealthServer:
    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.snapshot: dict[str, Any] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path not in ("/metrics", "/"):
                    self.send_error(404)
                    return
                body = render(outer.snapshot).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="health", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def update(self, stats: dict[str, Any]) -> None:
        self.snapshot = stats

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
