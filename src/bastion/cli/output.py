"""How the commands talk to a terminal: JSON or aligned text on stdout, warnings and one-line errors on
stderr, never a traceback."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Sequence
from datetime import UTC
from typing import Any, TypeVar

import click

from bastion.cli.backend import CliError, parse_time

T = TypeVar("T")


class _CliLogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def setup_cli_logging() -> None:
    # Warnings from the store (a generated pepper, a failed broadcast) go to stderr; stdout stays clean.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_CliLogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)


def guarded(call: Callable[[], T]) -> T:
    """Run ``call``; any failure becomes a one-line message on stderr and an exit code, never a traceback."""
    try:
        return call()
    except CliError as exc:
        for line in str(exc).splitlines() or ["failed"]:
            click.echo(f"error: {line}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # the message may hold internals (a URL, a statement): only its type
        click.echo(f"error: unexpected failure ({type(exc).__name__})", err=True)
        sys.exit(1)


def warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def display_text(value: Any) -> str:
    """A value for a terminal: lists joined, JSON for objects, no control characters (names and metadata
    come from whoever created them)."""
    if value is None or value in ("", []):
        text = "-"
    elif isinstance(value, list):
        text = ", ".join(str(item) for item in value)
    elif isinstance(value, dict):
        text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    else:
        text = str(value)
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[display_text(value) for value in row] for row in rows]
    widths = [max([len(header), *(len(row[i]) for row in cells)]) for i, header in enumerate(headers)]
    for row in [list(headers), *cells]:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def print_details(pairs: Sequence[tuple[str, Any]]) -> None:
    width = max(len(label) for label, _ in pairs) + 1
    for label, value in pairs:
        click.echo(f"{(label + ':').ljust(width)} {display_text(value)}")


def short_time(value: Any) -> str:
    parsed = parse_time(value)
    return "-" if parsed is None else parsed.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
