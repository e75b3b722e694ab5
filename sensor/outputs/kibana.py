"""Import the sensor's Kibana saved objects (dashboards/*.ndjson) through Kibana's saved objects API.

``POST /api/saved_objects/_import?overwrite=true`` with the NDJSON as a multipart file and the ``kbn-xsrf`` header
Kibana requires; credentials are those of ``outputs.elasticsearch`` (Kibana accepts the same API key or user).
"""

from __future__ import annotations

import base64
import ssl
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import orjson

DASHBOARDS = Path(__file__).resolve().parents[2] / "dashboards"


class KibanaError(Exception):
    """Kibana unreachable or the import refused; the message is one line for the CLI."""


def dashboard_files(directory: Path = DASHBOARDS) -> list[Path]:
    return sorted(directory.glob("*.ndjson"))


def _headers(auth: dict[str, Any]) -> dict[str, str]:
    if "api_key" in auth:
        key = auth["api_key"]
        key = base64.b64encode(f"{key[0]}:{key[1]}".encode()).decode() if isinstance(key, tuple) else key
        return {"Authorization": f"ApiKey {key}"}
    if "basic_auth" in auth:
        user, pw = auth["basic_auth"]
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()}
    return {}


def import_saved_objects(
    url: str, path: Path, auth: dict[str, Any] | None = None, ca_file: str | None = None, verify: bool = True,
    timeout: float = 60.0,
) -> dict[str, Any]:  # fmt: skip
    """Import one NDJSON file (overwriting objects with the same ids); returns Kibana's answer."""
    boundary = uuid.uuid4().hex
    body = b"".join((
        f"--{boundary}\r\n".encode(),
        f'Content-Disposition: form-data; name="file"; filename="{path.name}"\r\n'.encode(),
        b"Content-Type: application/ndjson\r\n\r\n", path.read_bytes(), f"\r\n--{boundary}--\r\n".encode(),
    ))  # fmt: skip
    headers = {
        "kbn-xsrf": "ics-sensor",
        "Content-Type": f"multipart/form-data; boundary={boundary}",
        **_headers(auth or {}),
    }
    req = urllib.request.Request(
        url.rstrip("/") + "/api/saved_objects/_import?overwrite=true", body, headers, method="POST"
    )
    ctx = None
    if url.startswith("https"):
        ctx = ssl.create_default_context(cafile=ca_file)
        if not verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:
            answer: dict[str, Any] = orjson.loads(resp.read())
    except urllib.error.HTTPError as e:
        detail = e.read()[:300].decode(errors="replace")
        raise KibanaError(f"kibana {url}: import of {path.name} refused: HTTP {e.code} {detail}") from None
    except (urllib.error.URLError, OSError) as e:
        raise KibanaError(f"kibana {url}: unreachable ({getattr(e, 'reason', e)})") from None
    except orjson.JSONDecodeError:
        raise KibanaError(f"kibana {url}: the answer to the import is not JSON (is this Kibana?)") from None
    return answer


def import_dashboards(url: str, auth: dict[str, Any] | None = None, ca_file: str | None = None, verify: bool = True,
                      directory: Path = DASHBOARDS) -> list[str]:  # fmt: skip
    """Import every dashboards/*.ndjson; one line per file. Raises KibanaError when an object failed."""
    files = dashboard_files(directory)
    if not files:
        raise KibanaError(f"no saved objects (*.ndjson) in {directory}")
    lines = []
    for path in files:
        ans = import_saved_objects(url, path, auth, ca_file, verify)
        errors = ans.get("errors") or []
        if not ans.get("success") or errors:
            what = "; ".join(f"{e.get('type')} {e.get('id')}: {e.get('error', {}).get('type')}" for e in errors[:5])
            raise KibanaError(f"kibana {url}: {path.name}: {len(errors)} objects not imported ({what})")
        lines.append(f"kibana saved objects {path.name}: {ans.get('successCount', 0)} imported")
    return lines
