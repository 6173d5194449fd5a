"""Typed errors. Each carries its exit code; only ``cli.py`` turns them into exits."""

from __future__ import annotations

from spool import exitcodes


class TelemetryError(Exception):
    """Base of every error rs-telemetry raises on purpose."""

    exit_code: int = exitcodes.FAILURE


class InvalidEvent(TelemetryError, ValueError):
    """An event name, property key or value outside the catalogue, e.g. ``db_backend='oracle'``."""

    exit_code = exitcodes.USAGE


class SpoolUnusable(TelemetryError):
    """The spool directory cannot be used, e.g. ``mode 0775``; ``.fix`` says how."""

    def __init__(self, message: str, path: str, fix: str = "") -> None:
        super().__init__(message)
        self.path = path
        self.fix = fix

    def __str__(self) -> str:
        base = f"{self.args[0]}: {self.path}"
        return f"{base} ({self.fix})" if self.fix else base


class ConfigError(TelemetryError):
    """Configuration that cannot work, e.g. no write key or a plain-http remote endpoint."""


class UnitError(TelemetryError):
    """systemd unit files could not be written, or the timer could not be enabled."""
