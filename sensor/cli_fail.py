"""The command line's one error exit, in a module of its own: every ``cli_*`` module and ``sensor.cli``, which
imports them, use it."""

from __future__ import annotations

import sys
from typing import NoReturn

import click


def fail(reason: str, code: int = 2) -> NoReturn:
    """'ics-sensor: error: REASON' on stderr, exit ``code`` (2: bad usage or input, as click's own errors)."""
    click.echo(f"ics-sensor: error: {reason}", err=True)
    sys.exit(code)
