"""ATT&CK for ICS for rules: which releases a rule may state, whether an id exists there, and display names.

Why a thin adapter: the sensor ships one technique table (sensor/attack_table.py, generated from MITRE's bundle
and checked against it by its own test); rules only need validation by release and names for alerts.
"""

from __future__ import annotations

from sensor.attack import TACTIC_NAMES, is_known, technique

RELEASES = ("18", "19")  # release 19 = 18.1 minus the nine revoked ids plus their reissued sub-technique ids


def known(version: str, tid: str) -> bool:
    return version in RELEASES and is_known(tid, version)


def technique_names(version: str, ids: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Technique names and the (deduplicated, ordered) tactic names for ECS threat.technique/tactic.name."""
    names: list[str] = []
    tactics: list[str] = []
    for t in ids:
        hit = technique(t)
        if hit is None:
            continue
        names.append(hit[0])
        for tac in hit[1]:
            name = TACTIC_NAMES.get(tac, tac)
            if name not in tactics:
                tactics.append(name)
    return names, tactics
