"""Sensor configuration (YAML, safe loading only). Every key is checked; an error names the key and the file.

Secrets are never written in the file itself by preference: any string value ``${ENV_NAME}`` is replaced by that
environment variable, and ``*_file`` keys name files that must be readable by their owner only.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from dataclasses import dataclass, field
from typing import Any

import yaml


class ConfigError(Exception):
    pass


# key -> (type or nested schema, default). A nested dict schema validates a mapping; "*" accepts any key.
_PORTS = {"modbus": (list, [502]), "s7comm": (list, [102]), "mqtt": (list, [1883]), "mqtt_tls": (list, [8883])}
SCHEMA: dict[str, Any] = {
    "sensor": ({"name": (str, None), "site": (str, None), "organization": (str, None), "labels": (dict, {})}, {}),
    "interfaces": (list, []),
    "bpf": (str, None),
    "ports": (_PORTS, {}),
    "lists": (dict, {}),
    "rules": ({"paths": (list, []), "builtin": (bool, True), "aggregate_seconds": ((int, float), 60)}, {}),
    "model": ({"path": (str, None)}, {}),
    "decoders": (
        {
            "modbus": ({"max_values": (int, 128), "max_outstanding": (int, 1024)}, {}),
            "s7comm": (dict, {}),
            "mqtt": (dict, {}),
        },
        {},
    ),
    "flows": (
        {
            "max_flows": (int, 100_000),
            "max_stream_buffer": (int, 1 << 20),
            "max_ooo_segments": (int, 256),
            "idle_timeout": ((int, float), 300),
        },
        {},
    ),
    "outputs": (dict, {}),
    "health": (dict, {}),
    "assets": ({"max_assets": (int, 10_000), "update_seconds": ((int, float), 60), "max_peers": (int, 1024),
                "max_values": (int, 64)}, {}),  # sensor/assets.py: inventory caps and document rate per host
}

# outputs.elasticsearch (the rest of ``outputs`` stays free for other sinks). Secrets only through *_file (owner-only
# permissions) or *_env (the name of an environment variable): never as literal values in the file.
ES_SCHEMA: dict[str, Any] = {
    "hosts": (list, []),
    "api_key_file": (str, None),
    "api_key_env": (str, None),
    "username": (str, None),
    "password_file": (str, None),
    "password_env": (str, None),
    "ca_file": (str, None),
    "verify_certs": (bool, True),
    "namespace": (str, "default"),
    "kinds": (list, ["events", "alerts", "stats", "assets"]),
    "batch_docs": (int, 1000),
    "batch_bytes": (int, 5 << 20),
    "request_timeout": ((int, float), 30),
    "retry_initial": ((int, float), 1.0),
    "retry_max": ((int, float), 60.0),
    "close_timeout": ((int, float), 30),
    "spool_dir": (str, None),
    "spool_max_bytes": (int, 1 << 30),
    "segment_bytes": (int, 16 << 20),
    "dead_letter": (str, None),
}
ES_KINDS = ("events", "alerts", "stats", "assets")
_NAMESPACE_BAD = re.compile(r'[A-Z\\/*?"<>| ,#:-]')


def check_secret_file(path: str, key: str) -> None:
    """A secret file must exist and be readable by its owner only; the error names the key, never the content."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise ConfigError(f"{key}: cannot read {path}: {e.strerror}") from None
    if st.st_mode & 0o077:
        raise ConfigError(
            f"{key}: {path} is accessible by group or others (mode {st.st_mode & 0o777:04o}); run chmod 600 {path}"
        )


def read_secret_file(path: str, key: str) -> str:
    """The secret in ``path`` (stripped), after the permission check; only callers that need it read it."""
    check_secret_file(path, key)
    try:
        with open(path, encoding="utf-8") as f:
            value = f.read().strip()
    except OSError as e:
        raise ConfigError(f"{key}: cannot read {path}: {e.strerror}") from None
    if not value:
        raise ConfigError(f"{key}: {path} is empty")
    return value


def _validate_es(data: Any) -> dict[str, Any]:
    p = "outputs.elasticsearch."
    es = _validate(data, ES_SCHEMA, p)
    for i, h in enumerate(es["hosts"]):
        if not isinstance(h, str) or not re.match(r"^https?://[^/@\s]+(/.*)?$", h):
            shown = "<url with credentials>" if isinstance(h, str) and "@" in h else repr(h)
            raise ConfigError(
                f"{p}hosts[{i}]: {shown} is not an http(s)://host:port URL without credentials "
                "(credentials go in api_key_file/password_file or *_env)"
            )
    for k in ("batch_docs", "batch_bytes", "spool_max_bytes", "segment_bytes"):
        if es[k] <= 0:
            raise ConfigError(f"{p}{k}: must be positive")
    for k in ("request_timeout", "retry_initial", "retry_max", "close_timeout"):
        if es[k] < 0:
            raise ConfigError(f"{p}{k}: must not be negative")
    ns = es["namespace"]
    if not ns or len(ns) > 100 or _NAMESPACE_BAD.search(ns):
        raise ConfigError(f"{p}namespace: {ns!r} must be lowercase, at most 100 characters, without - or \\/*?\"<>| ,#:")
    for k in es["kinds"]:
        if k not in ES_KINDS:
            raise ConfigError(f"{p}kinds: {k!r} is not one of {', '.join(ES_KINDS)}")
    if es["api_key_file"] and es["api_key_env"]:
        raise ConfigError(f"{p}api_key_file and api_key_env: give one")
    if es["password_file"] and es["password_env"]:
        raise ConfigError(f"{p}password_file and password_env: give one")
    has_password = bool(es["password_file"] or es["password_env"])
    if has_password != bool(es["username"]):
        raise ConfigError(f"{p}username and password_file/password_env go together")
    if has_password and (es["api_key_file"] or es["api_key_env"]):
        raise ConfigError(f"{p}api key and username/password: give one way to authenticate")
    for k in ("api_key_file", "password_file"):
        if es[k]:
            check_secret_file(es[k], p + k)
    for k in ("api_key_env", "password_env"):
        if es[k] and not os.environ.get(es[k]):
            raise ConfigError(f"{p}{k}: environment variable {es[k]} is not set")
    if es["ca_file"] and not os.path.isfile(es["ca_file"]):
        raise ConfigError(f"{p}ca_file: {es['ca_file']} is not a file")
    return es


def _validate_outputs(c: dict[str, Any]) -> None:
    outputs = c.get("outputs") or {}
    outputs["elasticsearch"] = _validate_es(outputs.get("elasticsearch"))
    c["outputs"] = outputs


@dataclass(frozen=True)
class Config:
    raw: dict[str, Any] = field(default_factory=dict)
    source: str = "<defaults>"

    def get(self, *path: str) -> Any:
        node: Any = self.raw
        for p in path:
            node = node[p]
        return node

    @property
    def sensor_name(self) -> str:
        return self.raw["sensor"]["name"] or socket.gethostname()

    @property
    def ports(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v) for k, v in self.raw["ports"].items()}

    @property
    def lists(self) -> dict[str, list[str]]:
        return self.raw["lists"]


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand(value: Any, key: str, used: list[str] | None = None) -> Any:
    """``${NAME}`` -> the environment variable; the values substituted are appended to ``used`` (for redaction)."""
    if isinstance(value, str):
        def sub(m: re.Match[str]) -> str:
            if m.group(1) not in os.environ:
                raise ConfigError(f"{key}: environment variable {m.group(1)} is not set")
            if used is not None:
                used.append(os.environ[m.group(1)])
            return os.environ[m.group(1)]

        return _ENV.sub(sub, value)
    if isinstance(value, list):
        return [_expand(v, f"{key}[{i}]", used) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _expand(v, f"{key}.{k}", used) for k, v in value.items()}
    return value


def _redact(message: str, values: list[str]) -> str:
    """An error message never repeats a value that came from the environment (it may be a secret)."""
    for v in sorted(values, key=len, reverse=True):
        if len(v) >= 4:
            message = message.replace(v, "<value from environment>")
    return message


def _validate(data: Any, schema: dict[str, Any], prefix: str) -> dict[str, Any]:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'top level'}: expected a mapping, got {type(data).__name__}")
    out: dict[str, Any] = {}
    for key in data:
        if key not in schema:
            known = ", ".join(sorted(schema))
            raise ConfigError(f"{prefix}{key}: unknown key (known here: {known})")
    for key, (typ, default) in schema.items():
        path = f"{prefix}{key}"
        if isinstance(typ, dict):
            out[key] = _validate(data.get(key, default), typ, path + ".")
            continue
        value = data.get(key, default)
        if value is None:
            out[key] = None
            continue
        if (typ is int and isinstance(value, bool)) or not isinstance(value, typ):
            want = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
            raise ConfigError(f"{path}: expected {want}, got {type(value).__name__} ({value!r})")
        out[key] = value
    return out


def _check_semantics(c: dict[str, Any]) -> None:
    for proto, ports in c["ports"].items():
        for p in ports:
            if not isinstance(p, int) or isinstance(p, bool) or not 0 < p < 65536:
                raise ConfigError(f"ports.{proto}: {p!r} is not a TCP port number")
    for name, entries in c["lists"].items():
        if not isinstance(entries, list):
            raise ConfigError(f"lists.{name}: expected a list of addresses, networks or names")
        for e in entries:
            if not isinstance(e, str | int):
                raise ConfigError(f"lists.{name}: {e!r} is not an address, network or name")
            s = str(e)
            # Looks like an address or network (dotted digits, a prefix, IPv6): must parse as one. Plain names and
            # numbers (client ids, TSAPs like "0101", unit ids) are kept as they are.
            if "/" in s or ("." in s and s.replace(".", "").isdigit()) or (":" in s and all(c in "0123456789abcdefABCDEF:." for c in s)):
                try:
                    ipaddress.ip_network(s, strict=False)
                except ValueError:
                    raise ConfigError(f"lists.{name}: {s!r} is not a valid address or network") from None
    for k in ("max_flows", "max_stream_buffer", "max_ooo_segments"):
        if c["flows"][k] <= 0:
            raise ConfigError(f"flows.{k}: must be positive")


def load_config(path: str | None) -> Config:
    if path is None:
        raw = _validate({}, SCHEMA, "")
        _validate_outputs(raw)
        return Config(raw)
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
    used: list[str] = []
    try:
        raw = _validate(_expand(data, "config", used), SCHEMA, "")
        _check_semantics(raw)
        _validate_outputs(raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {_redact(str(e), used)}") from None
    return Config(raw, path)
