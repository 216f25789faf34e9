"""prometheus_client's multiprocess mode for the node's processes: set up (by ``egfr-node
scp|serve``, before prometheus_client is imported) so the SCP's ``/metrics`` sums what every
receive process and the console's STOW-RS counted."""

from __future__ import annotations

import os
import shutil
import sys

from dicom_node.config import Config
from dicom_node.store.archive import process_alive

__all__ = ["SHARED_METRICS_ENV", "share_metrics_between_processes"]

#: prometheus_client's own variable: it reads it when imported (a folder of per-process value files).
SHARED_METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"


def share_metrics_between_processes(config: Config) -> None:
    """With several receive processes, or STOW-RS served by the console's process, count in
    prometheus_client's multiprocess mode, in ``<data_dir>/.metrics/<pid>`` (emptied): called
    before prometheus_client is imported, by the process that starts the receive processes
    and the console (they inherit the setting), so the SCP's /metrics sums them all."""
    several = config.receive_process_count() > 1 or (config.web.enabled and config.web.stow_enabled)
    if not several or not config.monitoring.enabled or os.environ.get(SHARED_METRICS_ENV):
        return
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before its multiprocess folder was set")
    shared = config.storage.data_path / ".metrics"
    for old in shared.glob("*"):  # left by nodes that ended (their pid names the folder)
        if not old.name.isdigit() or not process_alive(int(old.name)):
            shutil.rmtree(old, ignore_errors=True)
    folder = shared / str(os.getpid())
    folder.mkdir(parents=True)
    os.environ[SHARED_METRICS_ENV] = str(folder)
