"""``egfr-node serve | scp | worker``: the SCP and the worker in one process or apart (the
console too with ``serve`` when ``[web] enabled``), until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import threading
from typing import Any, Callable

from dicom_node.commands._common import load

__all__ = ["register", "serve"]


def register(sub: Any) -> None:
    sub.add_parser("serve", help="run the SCP and the worker").set_defaults(run=serve, scp=True, worker=True)
    sub.add_parser("scp", help="run the SCP only").set_defaults(run=serve, scp=True, worker=False)
    sub.add_parser("worker", help="run the worker only").set_defaults(run=serve, scp=False, worker=True)


def _run_until_stopped(start: Callable[[], None], stop: Callable[[], None]) -> int:
    stopped = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stopped.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        start()
        print("running; Ctrl-C stops", flush=True)
        while not stopped.wait(1.0):
            pass
    finally:
        stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0


def _check_training_table(config: Any) -> None:
    """``[training]`` checked when the node starts, as every other section is, not first when
    ``train`` runs weeks later: an unknown key or a bad value stops the start, naming
    ``training.<key>`` (the recipe's own checks, ``training.settings``; lazily imported, the
    receive path never loads training)."""
    from training.settings import TrainSettings

    TrainSettings.from_mapping(config.training)


def serve(args: argparse.Namespace) -> int:
    from dicom_node.log_safety import configure_logging
    from dicom_node.store.open import open_runtime
    from dicom_node.shared_metrics import share_metrics_between_processes

    config = load(args)
    _check_training_table(config)
    if args.scp:
        share_metrics_between_processes(config)  # before prometheus_client is imported
    from dicom_node.receive.server import DicomNode
    from dicom_node.worker import Worker

    configure_logging(config.logging.level)
    runtime = open_runtime(config)
    node = DicomNode(config, runtime.archive, runtime.sessions) if args.scp else None
    worker = Worker(config, runtime.sessions, runtime.archive) if args.worker else None
    if node and worker:
        worker.wake_on_masks(node.mask_arrivals)  # a mask arriving is scanned at once, not at the interval
    console = None
    if node and worker and config.web.enabled:
        from dicom_node.web.server import ConsoleProcess

        console = ConsoleProcess(config)
    def start() -> None:
        for part in (node, worker, console):
            if part is not None:
                part.start()

    def stop() -> None:
        for part in (console, node, worker):
            if part is not None:
                part.stop()
        runtime.close()

    return _run_until_stopped(start, stop)
