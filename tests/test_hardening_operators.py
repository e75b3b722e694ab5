"""Hostile or mistaken operators (issue 11): configuration, rules and models are data, never code; secrets stay
out of logs, stats, errors and documents; the live sensor drops root once its sockets are open.

Covered elsewhere and not repeated: unsafe YAML tags in rule files (tests/test_rules_loader.py), secret file
permissions, credentials in URLs and secrets in a replay's output with Elasticsearch (tests/test_elasticsearch.py),
models of another format, schema or version and damaged trees (tests/test_anomaly.py).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from detectors.anomaly.model import Model, ModelError
from sensor.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
CODE_DIRS = ("sensor", "detectors", "fuzz", "bench", "pcaps")
SECRET_ENV = "ICS_HARDEN_SECRET"
SECRET = "s3cr3t-hunter2-7f1c9e"  # in the environment
FILE_SECRET = "filesecret-0b8d2a-ES-API-KEY"  # in an owner-only file


# -- data, never code -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "payload",
    [
        "!!python/object/apply:os.system ['touch {marker}']",
        "!!python/object/new:subprocess.Popen [['touch', '{marker}']]",
        "!!python/name:os.system",
    ],
)
def test_config_yaml_python_tags_are_refused_clearly(tmp_path: Path, payload: str) -> None:
    marker = tmp_path / "pwned"
    cfg = tmp_path / "sensor.yml"
    cfg.write_text("sensor:\n  name: " + payload.format(marker=marker) + "\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(cfg))
    assert str(e.value).startswith(f"{cfg}:2:") and "invalid YAML" in str(e.value), str(e.value)
    r = subprocess.run([sys.executable, "-m", "sensor.cli", "config", "check", str(cfg)], capture_output=True,
                       text=True, cwd=ROOT)  # fmt: skip
    assert r.returncode == 2 and "invalid YAML" in r.stderr and "Traceback" not in r.stderr
    assert not marker.exists()


_DANGEROUS = re.compile(
    r"(?<![\w.])(eval|exec|compile|__import__)\("  # builtins that run text as code (method calls like re's .exec excluded)
    r"|\bpickle\.loads?\(|\bcPickle\b|\bmarshal\.loads?\(|\bshelve\.open\(|\bdill\b|\bjoblib\.load\("
    r"|\byaml\.(load|load_all|full_load|full_load_all|unsafe_load|unsafe_load_all)\("
    r"|\byaml\.(Loader|FullLoader|UnsafeLoader)\b|allow_pickle\s*=\s*True"
)


# Reviewed exceptions: (file, pattern text) -> why it is not code from data.
ALLOWED = {
    ("sensor/parallel.py", "pickle.loads("): "parent reads its own forked replay workers' results over an os.pipe"
    " it created; no file, socket or captured byte is ever unpickled",
}


def test_no_code_from_data_anywhere_in_the_tree() -> None:
    """No eval/exec, no pickle or marshal loading, no YAML loading beyond SafeLoader, no pickled numpy arrays,
    in any Python file of the product (tests are excluded: they hold these words as strings)."""
    offenders = []
    files = [p for d in CODE_DIRS if (ROOT / d).is_dir() for p in (ROOT / d).rglob("*.py")]
    assert len(files) > 40  # the tree really was walked
    for path in files:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            hit = _DANGEROUS.search(code)
            if hit and (str(path.relative_to(ROOT)), hit.group(0)) not in ALLOWED:
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_the_code_scan_would_catch_each_pattern() -> None:
    """The scan above is only worth something if it matches what it forbids (and not ordinary code)."""
    bad = ["x = eval(s)", "exec(code)", "pickle.load(f)", "yaml.load(text)", "yaml.load(t, Loader=yaml.Loader)",
           "yaml.unsafe_load(t)", "np.load(p, allow_pickle=True)", "marshal.loads(b)", "__import__(name)"]  # fmt: skip
    good = ["yaml.safe_load(f)", "rx.exec(s)", "self.evaluate(x)", "np.load(p, allow_pickle=False)"]
    assert all(_DANGEROUS.search(b) for b in bad)
    assert not any(_DANGEROUS.search(g) for g in good)


class _Boom:
    """Unpickling this object would create the marker file: the proof that a loader ran code from the file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (self.marker, "w"))


def _npz(path: Path, arrays: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in arrays.items():
            z.writestr(name + ".npy", data)


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def test_malicious_model_file_fails_safely(tmp_path: Path) -> None:
    """A model file whose arrays are pickled objects that would run code when unpickled: refused with a
    ModelError, nothing executed (the trust boundary of detectors/anomaly/model.py: allow_pickle=False)."""
    marker = tmp_path / "pwned"
    evil = np.empty(1, dtype=object)
    evil[0] = _Boom(str(marker))
    meta = json.dumps({"format": "ics-sensor-anomaly-model"}).encode()
    variants = {
        "pickled-meta": {"meta": _npy(evil)},
        "pickled-tree": {"meta": _npy(np.frombuffer(meta, dtype=np.uint8)), "g0_left": _npy(evil)},
        "not-a-zip": None,
    }
    for name, arrays in variants.items():
        path = tmp_path / f"{name}.npz"
        if arrays is None:
            path.write_bytes(b"\x80\x04" + bytes(64))  # a raw pickle stream, not a zip
        else:
            _npz(path, arrays)
        with pytest.raises(ModelError) as e:
            Model.load(path)
        assert str(e.value).startswith(str(path)), str(e.value)
        assert not marker.exists(), name
    r = subprocess.run([sys.executable, "-m", "sensor.cli", "replay", str(ROOT / "pcaps" / "modbus_demo.pcap"),
                        "--model", str(tmp_path / "pickled-meta.npz")], capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert r.returncode != 0 and "Traceback" not in r.stderr and "pickled-meta.npz" in r.stderr, r.stderr[-2000:]
    assert not marker.exists()


# -- secrets ----------------------------------------------------------------------------------------------------
def _secret_config(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A config whose Elasticsearch credentials come from an owner-only file and an environment variable; the
    environment secret is also expanded into a label (``${NAME}``), which is where an operator might put it."""
    key = tmp_path / "es.key"
    key.write_text(FILE_SECRET + "\n")
    key.chmod(0o600)
    spool = tmp_path / "spool"
    cfg = tmp_path / "sensor.yml"
    cfg.write_text(
        "sensor: {name: hardening}\n"
        "outputs:\n  elasticsearch:\n"
        "    hosts: ['http://127.0.0.1:9']\n"  # nothing listens: every request fails and is logged
        f"    api_key_file: {key}\n"
        f"    spool_dir: {spool}\n"
        "    request_timeout: 1\n    retry_initial: 0.1\n    retry_max: 0.2\n    close_timeout: 1\n"
    )
    env = {**os.environ, SECRET_ENV: SECRET, "PYTHONPATH": str(ROOT)}
    return cfg, env


def _all_text(tmp_path: Path, *outputs: str) -> list[tuple[str, str]]:
    texts = [(f"output{i}", o) for i, o in enumerate(outputs)]
    for p in tmp_path.rglob("*"):
        if p.is_file() and p.name != "es.key":
            texts.append((str(p), p.read_bytes().decode("utf-8", "replace")))
    return texts


def _assert_no_secret(texts: list[tuple[str, str]]) -> None:
    assert len(texts) >= 3
    for where, text in texts:
        for s in (SECRET, FILE_SECRET):
            assert s not in text, f"secret found in {where}"


def test_secrets_absent_from_replay_output_errors_and_spool(tmp_path: Path) -> None:
    cfg, env = _secret_config(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    cmd = [sys.executable, "-m", "sensor.cli", "replay", str(ROOT / "pcaps" / "modbus_demo.pcap"), "--config",
           str(cfg), "--events", str(out / "events.ndjson"), "--alerts", str(out / "alerts.ndjson"),
           "--stats", str(out / "stats.ndjson"), "--assets", str(out / "assets.ndjson")]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "events.ndjson").stat().st_size > 0 and (out / "stats.ndjson").stat().st_size > 0
    # A config error on a value expanded from the environment: the message names the key, not the value.
    bad = tmp_path / "bad.yml"
    bad.write_text(
        f"decoders: {{modbus: {{max_values: '${{{SECRET_ENV}}}'}}}}\nports: {{modbus: ['${{{SECRET_ENV}}}']}}\n"
    )
    r2 = subprocess.run([sys.executable, "-m", "sensor.cli", "config", "check", str(bad)], capture_output=True,
                        text=True, env=env, cwd=ROOT)  # fmt: skip
    assert r2.returncode == 2 and "decoders.modbus.max_values" in r2.stderr
    _assert_no_secret(_all_text(tmp_path, r.stdout, r.stderr, r2.stdout, r2.stderr))


def _is_root() -> bool:
    return os.geteuid() == 0


def _traffic(port: int, stop: threading.Event) -> None:
    """Modbus read requests over a real TCP connection on the loopback, until ``stop``."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(1)
    cli = socket.create_connection(("127.0.0.1", port))
    conn, _ = srv.accept()
    tid = 0
    try:
        while not stop.is_set():
            tid = (tid + 1) & 0xFFFF
            cli.sendall(tid.to_bytes(2, "big") + bytes.fromhex("000000060103000a0002"))
            conn.recv(64)
            conn.sendall(tid.to_bytes(2, "big") + bytes.fromhex("00000007010304000100020"[:-1]))
            cli.recv(64)
            time.sleep(0.02)
    finally:
        for s in (cli, conn, srv):
            s.close()


def _ids(pid: int) -> tuple[int, int] | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    uid = int(re.search(r"^Uid:\s+\d+\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]
    gid = int(re.search(r"^Gid:\s+\d+\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]
    return uid, gid


@pytest.mark.skipif(not _is_root(), reason="live capture and privilege drop need root")
def test_live_drops_privileges_keeps_capturing_and_keeps_secrets(request: pytest.FixtureRequest) -> None:
    """``ics-sensor live -i lo --user nobody --duration 4`` as root: while capturing, /proc/<pid>/status shows
    nobody's uid/gid; Modbus on the loopback is still decoded after the drop; no secret in any output."""
    import pwd

    nobody = pwd.getpwnam("nobody")
    # The service user's files, as a deployment has them: a world-traversable directory (pytest's tmp_path is
    # under a root-only directory), the key file and the spool owned by that user with owner-only permissions.
    base = Path(tempfile.mkdtemp(prefix="ics-live-"))
    request.addfinalizer(lambda: shutil.rmtree(base, ignore_errors=True))
    base.chmod(0o755)
    cfg, env = _secret_config(base)
    cfg.chmod(0o644)
    (base / "spool").mkdir(mode=0o700)
    for p in (base / "es.key", base / "spool"):
        os.chown(p, nobody.pw_uid, nobody.pw_gid)
    tmp_path = base
    port = 15020 + os.getpid() % 1000
    cmd = [sys.executable, "-m", "sensor.cli", "live", "-i", "lo", "--user", "nobody", "--duration", "4",
           "--config", str(cfg), "--events", "-", "--bpf", f"tcp port {port}"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    stop = threading.Event()
    seen: list[tuple[int, int]] = []
    t = threading.Thread(target=_traffic, args=(port, stop), daemon=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            ids = _ids(proc.pid)
            if ids is not None and ids[0] != 0:
                seen.append(ids)
                break
            time.sleep(0.05)
        t.start()
        while proc.poll() is None and time.monotonic() < deadline:
            ids = _ids(proc.pid)
            if ids is not None:
                seen.append(ids)
            time.sleep(0.2)
        out, err = proc.communicate(timeout=60)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert seen and all(ids == (nobody.pw_uid, nobody.pw_gid) for ids in seen), seen  # never root once running
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    modbus = [e for e in events if e.get("network", {}).get("protocol") == "modbus"]
    assert modbus, f"no Modbus event captured after the privilege drop; stderr: {err[-1500:]}"
    _assert_no_secret(_all_text(tmp_path, out, err))


def test_live_capture_has_no_send_path() -> None:
    """Receive-only: the capture module never sends on its packet sockets (nor anywhere else)."""
    src = (ROOT / "sensor" / "live.py").read_text()
    assert "recvmsg(" in src  # the scan looks at the real capture loop
    assert not re.search(r"\.(send|sendall|sendto|sendmsg|sendfile)\(", src)
