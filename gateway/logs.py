"""Logging: structlog to stdout, JSON lines for the journal, readable on a terminal."""

from __future__ import annotations

import logging
import sys

import structlog

from gateway.config.models import LoggingConfig

__all__ = ["configure_logging"]


def configure_logging(config: LoggingConfig) -> None:
    """Set the level and renderer for every logger of the process.

    ``format = "auto"`` renders JSON lines when stdout is not a terminal (under
    systemd the journal stores them) and aligned, coloured text when it is.
    """
    level = logging.getLevelNamesMapping()[config.level.upper()]
    as_json = config.format == "json" or (
        config.format == "auto" and not sys.stdout.isatty()
    )
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=False,
    )
