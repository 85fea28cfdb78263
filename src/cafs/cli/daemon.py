"""``cafs daemon``: serve the store over gRPC, as ``tvix-store daemon`` does."""

from __future__ import annotations

import click

from cafs.cli.common import log, run_async, using
from cafs.cli.store import store_service_options
from cafs.store.services import StoreServices


@click.command()
@click.option(
    "-l",
    "--listen-address",
    envvar="LISTEN_ADDRESS",
    default="127.0.0.1:8000",  # cafs.grpc.listen.DEFAULT_LISTEN_ADDRESS, without importing grpc
    show_default=True,
    metavar="ADDR",
    help="host:port to listen on, or a unix socket path starting with / or .",
)
@click.option(
    "--metrics-listen-address",
    envvar="METRICS_LISTEN_ADDRESS",
    metavar="HOST:PORT",
    help="Serve Prometheus metrics (calls by method and status, latency) at /metrics there.",
)
@store_service_options
@run_async
async def daemon(
    listen_address: str,
    metrics_listen_address: str | None,
    blob_service_addr: str | None,
    directory_service_addr: str | None,
    path_info_service_addr: str | None,
) -> None:
    """Serve the blob, directory and PathInfo services over gRPC.

    Answers tvix's and snix's method names, the gRPC health service and
    reflection. Stops on SIGINT or SIGTERM after finishing calls in flight.
    """
    # Imported here: grpc costs start-up time that only the daemon and remote URLs need.
    from cafs.grpc.listen import parse_listen_address
    from cafs.grpc.server import serve

    address = parse_listen_address(listen_address)  # a ListenError is a one-line error
    observer = None
    if metrics_listen_address is not None:
        from cafs.metrics import observe_grpc, serve_metrics

        log.info("metrics at %s", serve_metrics(metrics_listen_address))
        observer = observe_grpc
    services = StoreServices.from_addrs(
        blob_service_addr, directory_service_addr, path_info_service_addr
    )
    await using(services, lambda s: serve(s, address, observer=observer))
