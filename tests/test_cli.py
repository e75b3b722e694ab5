"""The command line's structure: every subcommand is reachable, and a replay loads only what it uses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from sensor.cli import SUBCOMMANDS, main

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_every_command() -> None:
    r = CliRunner().invoke(main, ["--help"])
    assert r.exit_code == 0, r.output
    listed = {line.split()[0] for line in r.output.split("Commands:")[1].splitlines() if line.strip()}
    assert listed == {"replay", *SUBCOMMANDS}


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_each_lazy_command_resolves_to_itself(name: str) -> None:
    """A subcommand's module is imported when it runs: a wrong module or attribute would only show then."""
    r = CliRunner().invoke(main, [name, "--help"])
    assert r.exit_code == 0, r.output
    assert r.output.startswith(f"Usage: main {name} ") or r.output.startswith(f"Usage: main {name}\n"), r.output


def test_replay_without_a_model_does_not_load_the_model_code(tmp_path: Path) -> None:
    """The model code, the report and the other commands are 0.1 s of a replay's start; a replay without them
    must not import them (a module-level import added anywhere on the replay's path would)."""
    code = (
        "import sys\n"
        "from sensor.cli import main\n"
        f"sys.argv = ['ics-sensor', 'replay', {str(ROOT / 'pcaps' / 'modbus_demo.pcap')!r}, '-q',"
        f" '--events', {str(tmp_path / 'e.ndjson')!r}, '--workers', '1']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print(sorted(m for m in sys.modules if m.startswith(('detectors.anomaly', 'sensor.cli_model',"
        " 'sensor.outputs.report', 'sensor.cli_live', 'sensor.cluster', 'sklearn'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout
    assert (tmp_path / "e.ndjson").stat().st_size > 0
    with_model = code.replace("'--workers', '1'", "'--workers', '1', '--model', 'none.npz'")
    failed = subprocess.run([sys.executable, "-c", with_model], capture_output=True, text=True, cwd=ROOT)
    assert "no such model file" in failed.stderr  # the option still reaches the model code
