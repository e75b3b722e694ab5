"""YAML rule engine: load (validate) -> compile (closures) -> evaluate (indexed), see DESIGN.md "Rules"."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from detectors.rules.engine import RuleEngine, RuleStatus, builtin_rules_dir, rule_status
from detectors.rules.loader import Problem, Rule, RuleLoadError, RuleTest, load_rules
from sensor.messages import FieldRegistry

__all__ = [
    "Problem", "Rule", "RuleEngine", "RuleLoadError", "RuleStatus", "RuleTest", "build_engine", "builtin_rules_dir",
    "load_rules", "rule_paths", "rule_status",
]  # fmt: skip


def rule_paths(extra: Iterable[str | Path] = (), builtin: bool = True, config_paths: Iterable[str] = ()) -> list[Path]:
    """The shipped pack (unless disabled), then the config's rules.paths, then paths given on the command line."""
    paths = [builtin_rules_dir()] if builtin else []
    return paths + [Path(p) for p in config_paths] + [Path(p) for p in extra]


def build_engine(
    paths: Iterable[str | Path], lists: Mapping[str, Any] | None = None, aggregate_seconds: float = 60.0,
    registries: Mapping[str, FieldRegistry] | None = None,
) -> RuleEngine:  # fmt: skip
    """Load, validate and compile; raises RuleLoadError listing every problem, and then nothing is loaded."""
    return RuleEngine(load_rules(paths, registries), lists or {}, aggregate_seconds)
