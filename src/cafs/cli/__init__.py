"""The ``cafs`` command line."""

from __future__ import annotations

import logging
import sys

import click

from cafs import __version__, tracing
from cafs.cli.castore import castore
from cafs.cli.daemon import daemon
from cafs.cli.maintenance import MAINTENANCE_COMMANDS
from cafs.cli.store import STORE_COMMANDS
from cafs.tuning import tune_malloc

LOG_LEVELS = ["TRACE", "DEBUG", "INFO", "WARN", "WARNING", "ERROR"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="INFO",
    envvar="CAFS_LOG_LEVEL",
    show_default=True,
    help="Log messages at this level and above (to stderr).",
)
@click.option(
    "--otlp/--no-otlp",
    default=False,
    envvar="CAFS_OTLP",
    help="Export OpenTelemetry traces over OTLP (to OTEL_EXPORTER_OTLP_ENDPOINT, "
    "default http://localhost:4317).",
)
@click.version_option(__version__, prog_name="cafs")
def main(log_level: str, otlp: bool) -> None:
    """cafs: a content-addressed store with a lazy, read-only FUSE filesystem."""
    tune_malloc()
    if otlp:
        tracing.enable("cafs")
    level = log_level.upper()
    level = {"TRACE": "DEBUG", "WARN": "WARNING"}.get(level, level)
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # grpc and asyncio say nothing at debug level that helps a cafs user.
    for noisy in ("grpc", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLogger().level))


main.add_command(castore)
main.add_command(daemon)
for command in [*STORE_COMMANDS, *MAINTENANCE_COMMANDS]:
    main.add_command(command)

__all__ = ["main"]
