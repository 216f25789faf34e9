"""Serving the console: :func:`run_console` (``egfr-node web``: uvicorn in this process, until
a signal) and :class:`ConsoleProcess` (``egfr-node serve`` with ``[web] enabled``: the same in
a process of its own, so neither the pages nor their database reads ever hold the SCP's
interpreter).

Limits of its own: at most ``CONCURRENCY`` requests at once (more get 503), keep-alive
connections closed after 5 s idle, no access log (paths carry UIDs; actions are in the
audit trail instead). A stop waits at most ``GRACEFUL_STOP_SECONDS`` for requests in flight and
connections to close (then uvicorn cancels them and says so in an ERROR line): over HTTPS an
idle keep-alive client that does not answer the TLS close otherwise held ``egfr-node web``
for asyncio's 30 s. It is shorter than the 10 s after which ``serve`` kills its console
process (:meth:`ConsoleProcess.stop`), so the console still closes its database itself.
"""

from __future__ import annotations

import logging
import multiprocessing
import socket
from typing import TYPE_CHECKING

from dicom_node.config import Config

if TYPE_CHECKING:
    from fastapi import FastAPI

    from dicom_node.store.open import Runtime

__all__ = ["run_console", "ConsoleProcess", "CONCURRENCY", "GRACEFUL_STOP_SECONDS"]

log = logging.getLogger(__name__)
CONCURRENCY = 32
GRACEFUL_STOP_SECONDS = 5


def build(config: Config) -> tuple[FastAPI, Runtime]:  # imported late so the CLI starts fast
    from dicom_node.store.open import open_runtime
    from dicom_node.web.app import create_app
    from dicom_node.web.console import Console

    runtime = open_runtime(config)
    return create_app(Console(config, runtime.sessions, runtime.archive)), runtime


def run_console(config: Config, sock: socket.socket | None = None) -> None:
    """Serve the console until SIGINT/SIGTERM (uvicorn's own handling)."""
    import uvicorn

    app, runtime = build(config)
    # The console's C-ECHOs (its own SCP, a destination) report their outcome on the page and in
    # the audit; pynetdicom's own error lines for a refused connection would only repeat them.
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    web = config.web
    server = uvicorn.Server(uvicorn.Config(
        app, host=web.host, port=web.port, access_log=False, log_level="warning", limit_concurrency=CONCURRENCY,
        timeout_keep_alive=5, timeout_graceful_shutdown=GRACEFUL_STOP_SECONDS, ssl_certfile=web.certificate or None,
        ssl_keyfile=web.private_key or None,
        proxy_headers=False, server_header=False))
    scheme = "https" if web.certificate else "http"
    log.info("console on %s://%s:%d/", scheme, web.host, web.port)
    try:
        server.run(sockets=[sock] if sock else None)
    finally:
        runtime.close()


def _child(config: Config) -> None:
    from dicom_node.log_safety import configure_logging

    configure_logging(config.logging.level)
    run_console(config)


class ConsoleProcess:
    """The console in a process of its own (spawned: nothing of the SCP's state is shared)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.process: multiprocessing.process.BaseProcess | None = None

    def start(self) -> None:
        self.process = multiprocessing.get_context("spawn").Process(target=_child, args=(self.config,),
                                                                    name="egfr-node-console", daemon=True)
        self.process.start()
        log.info("console process %d for http%s://%s:%d/", self.process.pid, "s" if self.config.web.certificate else "",
                 self.config.web.host, self.config.web.port)

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or not self.process.is_alive():
            return
        self.process.terminate()  # SIGTERM: uvicorn finishes the requests in flight
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
