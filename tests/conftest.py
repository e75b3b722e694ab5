"""Shared fixtures: paths to the project's and third-party captures, and a replay helper."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SHARED_PCAPS = SHARED / "pcaps"
PROJECT_PCAPS = ROOT / "pcaps"


def pytest_report_header(config: pytest.Config) -> str:
    return f"shared: {SHARED} ({'present' if SHARED.exists() else 'MISSING'}); tshark: {shutil.which('tshark')}"


@pytest.fixture(scope="session")
def shared_pcaps() -> Path:
    if not SHARED_PCAPS.exists():
        pytest.skip(f"{SHARED_PCAPS} is missing: tests need ../shared beside the repository")
    return SHARED_PCAPS
