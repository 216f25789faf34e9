"""What every ``egfr-node`` command body shares: the node's config from ``--config``, one
way to fail, and the runtime or a database session opened and closed around the work."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from dicom_node.config import Config, config_path_from_env, load_config

__all__ = ["load", "fail", "with_runtime", "with_session"]


def load(args: argparse.Namespace) -> Config:
    """The node's config: ``--config``, else ``$EGFR_NODE_CONFIG``, else ./egfr-node.toml."""
    return load_config(config_path_from_env(args.config))


def fail(message: str, code: int = 1) -> int:
    """Print ``egfr-node: message`` on stderr; return the exit status."""
    print(f"egfr-node: {message}", file=sys.stderr)
    return code


def with_runtime(args: argparse.Namespace, action: Callable[[Any], int]) -> int:
    """Run ``action(runtime)``; a bundle or registry error becomes a one-line failure."""
    from db.bundles import BundleRegistryError
    from dicom_node.store.open import open_runtime
    from pipeline.model.bundle import BundleError

    runtime = open_runtime(load(args))
    try:
        return action(runtime)
    except (BundleError, BundleRegistryError) as exc:
        return fail(str(exc))
    finally:
        runtime.close()


def with_session(args: argparse.Namespace, action: Callable[[Any], int]) -> int:
    """Run ``action(session)`` in one transaction; a queue error becomes a one-line failure."""
    from db.queue import QueueError

    def in_session(runtime: Any) -> int:
        try:
            with runtime.sessions.begin() as session:
                return action(session)
        except QueueError as exc:
            return fail(str(exc))

    return with_runtime(args, in_session)
