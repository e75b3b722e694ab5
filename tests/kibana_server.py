"""A tiny Kibana stand-in for tests: ``POST /api/saved_objects/_import`` only, with Kibana's checks that matter here.

It refuses a request without the ``kbn-xsrf`` header (400, as Kibana does), reads the multipart ``file`` part,
parses it as NDJSON saved objects and answers like Kibana: ``success``/``successCount``/``successResults``, and an
``errors`` entry of type ``missing_references`` for an object whose reference is neither in the file nor already
stored. Imported objects are kept in ``objects`` by (type, id). Binds to 127.0.0.1 only.
"""

from __future__ import annotations

import json
import threading
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


class KibanaServer:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                u = urlsplit(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                owner.requests.append(("POST", self.path, dict(self.headers.items())))
                if u.path != "/api/saved_objects/_import":
                    return self._send(404, {"statusCode": 404, "error": "Not Found"})
                if "kbn-xsrf" not in {k.lower() for k in self.headers}:
                    return self._send(
                        400,
                        {
                            "statusCode": 400,
                            "error": "Bad Request",
                            "message": "Request must contain a kbn-xsrf header.",
                        },
                    )
                ctype = self.headers.get("Content-Type", "")
                msg = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {ctype}\r\n\r\n".encode() + body)
                files = (
                    [p for p in msg.iter_parts() if p.get_param("name", header="content-disposition") == "file"]
                    if msg.is_multipart()
                    else []
                )
                if not files:
                    return self._send(
                        415, {"statusCode": 415, "error": "Unsupported Media Type", "message": "file part missing"}
                    )
                try:
                    objs = [json.loads(line) for line in files[0].get_payload(decode=True).splitlines() if line.strip()]
                except ValueError as e:
                    return self._send(
                        400, {"statusCode": 400, "error": "Bad Request", "message": f"Unexpected token: {e}"}
                    )
                overwrite = parse_qs(u.query).get("overwrite") == ["true"]
                present = set(owner.objects) | {(o.get("type"), o.get("id")) for o in objs}
                ok, errors = [], []
                for o in objs:
                    missing = [r for r in o.get("references", []) if (r.get("type"), r.get("id")) not in present]
                    if missing:
                        errors.append(
                            {
                                "id": o["id"],
                                "type": o["type"],
                                "title": o.get("attributes", {}).get("title"),
                                "error": {"type": "missing_references", "references": missing},
                            }
                        )
                        continue
                    key = (o["type"], o["id"])
                    if key in owner.objects and not overwrite:
                        errors.append({"id": o["id"], "type": o["type"], "error": {"type": "conflict"}})
                        continue
                    owner.objects[key] = o
                    ok.append({"id": o["id"], "type": o["type"], **({"overwrite": True} if overwrite else {})})
                return self._send(
                    200,
                    {
                        "success": not errors,
                        "successCount": len(ok),
                        "successResults": ok,
                        **({"errors": errors} if errors else {}),
                    },
                )

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> KibanaServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
