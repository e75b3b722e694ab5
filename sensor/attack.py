"""ATT&CK for ICS lookups from the shipped table (sensor/attack_table.py), no ../shared needed at run time."""

from __future__ import annotations

from sensor.attack_table import RELEASE, TACTICS, TECHNIQUES, V19_FROM_V18

TACTIC_NAMES: dict[str, str] = {tid: name for tid, _short, name in TACTICS}
TACTIC_ORDER: dict[str, int] = {tid: i for i, (tid, _s, _n) in enumerate(TACTICS)}

__all__ = ["RELEASE", "TACTICS", "TACTIC_NAMES", "TACTIC_ORDER", "TECHNIQUES", "V19_FROM_V18", "is_known", "technique"]


def technique(tid: str) -> tuple[str, tuple[str, ...]] | None:
    """(name, tactic ids) of a release 18.1 id or of a release 19 id from the crosswalk; None when unknown."""
    hit = TECHNIQUES.get(tid)
    if hit is None and tid in V19_FROM_V18:
        hit = TECHNIQUES.get(V19_FROM_V18[tid])
    return hit


def is_known(tid: str, version: str = RELEASE) -> bool:
    """Whether ``tid`` exists in the stated release: 18.x ids from the bundle; 19 adds the crosswalk ids and drops
    the v18 ids they revoked."""
    if version.split(".")[0] == "19":
        return tid in V19_FROM_V18 or (tid in TECHNIQUES and tid not in V19_FROM_V18.values())
    return tid in TECHNIQUES
