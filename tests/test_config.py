"""Configuration: every key validated, errors name the key and the file, secrets from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from sensor.config import ConfigError, load_config


def _write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "sensor.yml"
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("flows: {max_flowz: 10}\n", "flows.max_flowz: unknown key"),
        ("flows: {max_flows: many}\n", "flows.max_flows: expected int, got str"),
        ("flows: {max_flows: 0}\n", "flows.max_flows: must be positive"),
        ("ports: {modbus: [70000]}\n", "ports.modbus: 70000 is not a TCP port number"),
        ("lists: {plcs: [10.0.0.300]}\n", "lists.plcs: '10.0.0.300' is not a valid address or network"),
        ("lists: {plcs: 10.0.0.1}\n", "lists.plcs: expected a list"),
        ("sensor: [a, b]\n", "sensor: expected a mapping"),
        ("sensor: {name: '${ICS_TEST_UNSET_VARIABLE}'}\n", "environment variable ICS_TEST_UNSET_VARIABLE is not set"),
        ("flows: {max_flows: 10\n", "invalid YAML"),
        ("x: !!python/object/apply:os.system [echo]\n", "invalid YAML"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert message in str(e.value)
    assert str(e.value).startswith(path)


def test_names_numbers_networks_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ICS_TEST_SITE", "plant-7")
    cfg = load_config(_write(tmp_path, (
        "sensor: {name: s1, site: '${ICS_TEST_SITE}'}\n"
        "lists:\n  tsaps: ['0101', '0301']\n  hosts: [10.0.0.1/32, 'fe80::1', 10.0.0.7]\n  clients: [hmi-1]\n"
        "ports: {modbus: [502, 5020]}\n"
    )))  # fmt: skip
    assert cfg.raw["sensor"]["site"] == "plant-7"
    assert cfg.lists["tsaps"] == ["0101", "0301"]
    assert cfg.ports["modbus"] == (502, 5020)
    assert cfg.raw["flows"]["max_flows"] == 100_000  # defaults filled in
