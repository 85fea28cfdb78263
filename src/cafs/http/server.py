"""Running nar-bridge: listen, log readiness, stop on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable

from aiohttp import web

from cafs.http.nar_bridge import BridgeOptions, NarBridge
from cafs.sockets import ListenAddress, check_bindable
from cafs.store.services import StoreServices

log = logging.getLogger(__name__)

SHUTDOWN_GRACE = 30.0
"""Seconds requests in flight may take to finish after SIGINT/SIGTERM."""


async def serve_bridge(
    services: StoreServices,
    address: ListenAddress,
    options: BridgeOptions,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve ``services`` as a binary cache at ``address`` until SIGINT/SIGTERM."""
    check_bindable(address)
    bridge = NarBridge(services, options)
    runner = web.AppRunner(bridge.application(), access_log=None,
                           shutdown_timeout=SHUTDOWN_GRACE)  # fmt: skip
    await runner.setup()
    path = address.socket_path
    site: web.BaseSite
    if path is not None:
        site = web.UnixSite(runner, str(path))
        url = f"unix:{path}"
    else:
        host, port = address.host_port
        site = web.TCPSite(runner, host, port, reuse_address=True)
        url = f"http://{address.text}"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await site.start()
        log.info("listening on %s", url)
        if on_ready is not None:
            on_ready(url)
        await stop.wait()
        log.info("stopping")
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await runner.cleanup()
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
