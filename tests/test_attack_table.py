"""The shipped ATT&CK for ICS table matches MITRE's bundle and the release 19 crosswalk."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

from sensor import attack, attack_table

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT.parent / "shared" / "attack" / "ics-attack-18.1.json"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_attack_table", ROOT / "scripts" / "gen_attack_table.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def bundle() -> dict:
    if not BUNDLE.exists():
        pytest.skip(f"{BUNDLE} is missing: tests need ../shared beside the repository")
    return json.loads(BUNDLE.read_text())


def test_shipped_table_is_what_the_generator_makes_from_the_bundle(bundle: dict) -> None:
    gen = _generator()
    expected = gen.render(*gen.build(BUNDLE, BUNDLE.parent / "README.md"))
    assert (ROOT / "sensor" / "attack_table.py").read_text() == expected, "run: python scripts/gen_attack_table.py"


def test_table_against_bundle_objects(bundle: dict) -> None:
    objs = bundle["objects"]
    current = {
        ref["external_id"]: o
        for o in objs
        if o["type"] == "attack-pattern" and not o.get("revoked") and not o.get("x_mitre_deprecated")
        for ref in o["external_references"]
        if ref.get("source_name") == "mitre-attack"
    }
    assert len(current) == 83 == len(attack_table.TECHNIQUES)
    tactic_by_short = {t["x_mitre_shortname"]: t["name"] for t in objs if t["type"] == "x-mitre-tactic"}
    for tid, o in current.items():
        name, tactics = attack_table.TECHNIQUES[tid]
        assert name == o["name"]
        assert sorted(attack.TACTIC_NAMES[t] for t in tactics) == sorted(tactic_by_short[p["phase_name"]] for p in o["kill_chain_phases"])
    assert attack_table.TECHNIQUES["T0836"] == ("Modify Parameter", ("TA0106",))
    assert [name for _, _, name in attack_table.TACTICS][:2] == ["Initial Access", "Execution"]


def test_v19_crosswalk() -> None:
    assert len(attack_table.V19_FROM_V18) == 9
    for v19, v18 in attack_table.V19_FROM_V18.items():
        assert attack.technique(v19) == attack_table.TECHNIQUES[v18]
        assert attack.is_known(v19, "19") and not attack.is_known(v19, "18.1")
        assert attack.is_known(v18, "18") and not attack.is_known(v18, "19")
    assert attack.technique("T1692.001") == ("Unauthorized Command Message", ("TA0106",))
    assert attack.technique("T9999") is None
