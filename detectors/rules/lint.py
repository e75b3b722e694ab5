"""``rules lint``: beyond load-time validation, the review checks that keep a rule pack testable and honest.

Why separate from loading: these are findings for the rule author (no test capture, a capture file missing, a
rule never shown quiet), not reasons to refuse a pack at sensor start.
"""

from __future__ import annotations

from dataclasses import dataclass

from detectors.rules.loader import Rule


@dataclass(frozen=True, slots=True)
class Finding:
    where: str
    rule_id: str
    level: str  # "error" | "warning"
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.level}: {self.rule_id}: {self.reason}"


def lint(rules: list[Rule]) -> list[Finding]:
    """Errors: a test capture that does not exist. Warnings: no alerting test, no quiet test, no references."""
    out: list[Finding] = []
    for r in rules:
        if r.status == "deprecated" or not r.enabled:
            continue
        for t in r.tests:
            for p in t.pcaps:
                if not p.is_file():
                    out.append(Finding(t.where, r.id, "error", f"test capture {p} does not exist"))
        if not any(t.count != 0 for t in r.tests):
            out.append(Finding(r.where, r.id, "warning", "no test capture that must raise this rule"))
        if not any(t.count == 0 for t in r.tests):
            out.append(Finding(r.where, r.id, "warning", "no quiet test capture (normal traffic that must not alert)"))
        if not r.references:
            out.append(Finding(r.where, r.id, "warning", "no references"))
        if r.requires_lists and not any(t.lists for t in r.tests):
            out.append(Finding(r.where, r.id, "warning", "requires lists but no test sets them"))
    return out
