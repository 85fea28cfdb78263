"""``cafs gc`` and ``cafs verify``: reclaim space, and check a store end to end."""

from __future__ import annotations

import re
from collections import Counter

import click

from cafs.castore.blobs.plain import PlainFiles
from cafs.castore.maintenance import DEFAULT_GRACE, Problem
from cafs.cli.common import run_async, using
from cafs.cli.store import store_service_options
from cafs.config import store_home
from cafs.errors import IntegrityError
from cafs.store.maintenance import collect_garbage, verify_store
from cafs.store.services import StoreServices

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``90``, ``30s``, ``10m``, ``1h`` or ``2d`` as seconds (0 is allowed)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if match is None:
        raise click.BadParameter(f"{text!r} is not a duration such as 30s, 10m, 1h or 2d")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def plural(kind: str, n: int) -> str:
    if n == 1:
        return kind
    if kind.endswith("y"):
        return kind[:-1] + "ies"
    return kind + ("es" if kind.endswith("x") else "s")


def human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


@click.command("gc")
@click.option(
    "--grace",
    default=f"{int(DEFAULT_GRACE)}s",
    show_default=True,
    metavar="DURATION",
    help="Keep objects written this recently (30s, 10m, 1h, 2d), so running imports lose nothing.",
)
@click.option("--dry-run", is_flag=True, help="Print what would be freed; delete nothing.")
@store_service_options
@run_async
async def gc_command(
    grace: str,
    dry_run: bool,
    blob_service_addr: str | None,
    directory_service_addr: str | None,
    path_info_service_addr: str | None,
) -> None:
    """Free blobs, chunks and directories that no PathInfo and no pin reaches.

    Works on the store of record: for cache:// URLs, the far side.
    """
    seconds = parse_duration(grace)

    async def body(services: StoreServices) -> None:
        result = await collect_garbage(
            services, seconds, dry_run, lambda line: click.echo(line, err=True)
        )
        verb = "would free" if dry_run else "freed"
        if dry_run:
            for found in result.freed:
                click.echo(f"{found.kind}\t{found.key}\t{found.size}")
        kinds = Counter(found.kind for found in result.freed)
        detail = ", ".join(f"{n} {plural(kind, n)}" for kind, n in sorted(kinds.items()))
        click.echo(
            f"{verb} {len(result.freed)} objects ({detail}), {human_bytes(result.freed_bytes)}",
            err=True,
        )

    services = StoreServices.from_addrs(
        blob_service_addr, directory_service_addr, path_info_service_addr
    )
    await using(services, body)


@click.command("verify")
@click.option("--nar", is_flag=True, help="Also render every NAR and check its size and hash.")
@click.option(
    "--repair",
    is_flag=True,
    help="Remove corrupt objects from near caches (cache://), so that they are fetched again.",
)
@store_service_options
@run_async
async def verify_command(
    nar: bool,
    repair: bool,
    blob_service_addr: str | None,
    directory_service_addr: str | None,
    path_info_service_addr: str | None,
) -> None:
    """Re-hash every chunk, blob index, directory and PathInfo; exit 5 if anything is wrong."""

    def report(problem: Problem) -> None:
        click.echo(f"{problem.kind}\t{problem.key}\t{problem.reason}")

    async def body(services: StoreServices) -> None:
        result = await verify_store(services, nar, repair, report, lambda checked: None)
        for skipped in result.skipped:
            click.echo(f"not checked here (remote): {skipped}", err=True)
        click.echo(f"checked {result.checked} objects, {len(result.problems)} problems", err=True)
        if result.repaired:
            click.echo(f"removed {result.repaired} corrupt objects from near caches", err=True)
        bad: list[Problem] = []

        def plain_problem(problem: Problem) -> None:
            bad.append(problem)
            report(problem)

        plain = PlainFiles(store_home() / "plain", limit=1 << 62)  # check, never evict
        copies, removed = await plain.verify(plain_problem, repair)
        if copies:
            click.echo(f"checked {copies} plain copies, {len(bad)} problems", err=True)
        if removed:
            click.echo(f"removed {removed} corrupt plain copies", err=True)
        if result.problems or bad:
            raise IntegrityError(f"{len(result.problems) + len(bad)} problems found")

    services = StoreServices.from_addrs(
        blob_service_addr, directory_service_addr, path_info_service_addr
    )
    await using(services, body)


MAINTENANCE_COMMANDS = [gc_command, verify_command]
