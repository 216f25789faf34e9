"""The rules a configuration's values must meet beyond their types (ranges, AE titles, ports,
files that must exist, keys that go together); ``load_config`` runs :func:`validate` after
reading the file and the environment."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.settings import SettingError as ConfigError

if TYPE_CHECKING:
    from dicom_node.config import Config, Peer, RetentionSection, WebSection

__all__ = ["AUTO", "MAX_RECEIVE_PROCESSES", "validate"]

#: the word a count setting takes for "one per core" (node.receive_processes)
AUTO = "auto"
MAX_RECEIVE_PROCESSES = 64

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE VR: no backslash, 16 chars


def _check_port(key: str, port: int) -> None:
    if not 1 <= port <= 65535:
        raise ConfigError(f"{key}: must be between 1 and 65535, got {port}")


def _check_ae(key: str, title: str) -> None:
    if not _AE_TITLE.match(title) or not title.strip():
        raise ConfigError(f"{key}: {title!r} is not a valid AE title (1-16 characters, no backslash)")


def _check_peer(where: str, peer: Peer) -> None:
    """A destination or source: a DIMSE address (AE title, host, port) and/or a DICOMweb URL,
    and every file it names present."""
    from urllib.parse import urlparse

    if not peer.name.strip():
        raise ConfigError(f"{where}.name: must not be empty")
    if peer.ae_title or peer.host or peer.port:
        _check_ae(f"{where}.ae_title", peer.ae_title)
        if not peer.host:
            raise ConfigError(f"{where}.host: missing")
        _check_port(f"{where}.port", peer.port)
    if not peer.dimse and not peer.dicomweb_url:
        raise ConfigError(f"{where}: needs ae_title, host and port (DIMSE) or dicomweb_url (DICOMweb)")
    if peer.dicomweb_url:
        url = urlparse(peer.dicomweb_url)
        if url.scheme not in ("http", "https") or not url.netloc:
            raise ConfigError(f"{where}.dicomweb_url: {peer.dicomweb_url!r} is not an http(s) URL")
    if peer.token_file and peer.username:
        raise ConfigError(f"{where}: token_file and username are two ways to authenticate: set one")
    if peer.password_file and not peer.username:
        raise ConfigError(f"{where}.username: password_file needs the user it belongs to")
    for key in ("ca_certificates", "certificate", "private_key", "token_file", "password_file"):
        value = getattr(peer, key)
        if value and not Path(value).is_file():
            raise ConfigError(f"{where}.{key}: file {value} does not exist")


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def validate(config: Config) -> None:
    """Every rule across keys and sections; raises ConfigError naming the key."""
    n = config.node
    _check_ae("node.ae_title", n.ae_title)
    _check_port("node.port", n.port)
    for aet in n.allowed_calling_aets:
        _check_ae("node.allowed_calling_aets", aet)
    if n.max_associations < 1:
        raise ConfigError(f"node.max_associations: must be at least 1, got {n.max_associations}")
    if n.maximum_pdu_size != 0 and n.maximum_pdu_size < 4096:
        raise ConfigError(f"node.maximum_pdu_size: must be 0 (unlimited) or at least 4096, got {n.maximum_pdu_size}")
    if n.network_timeout_seconds <= 0:
        raise ConfigError("node.network_timeout_seconds: must be positive")
    if n.acse_timeout_seconds <= 0:
        raise ConfigError("node.acse_timeout_seconds: must be positive")
    if n.max_associate_request_bytes < 4096:
        raise ConfigError(f"node.max_associate_request_bytes: must be at least 4096, got {n.max_associate_request_bytes}")
    if n.max_associations_per_calling_ae < 0:
        raise ConfigError("node.max_associations_per_calling_ae: must not be negative (0 = only node.max_associations)")
    if n.max_negotiating_per_source < 1:
        raise ConfigError(f"node.max_negotiating_per_source: must be at least 1, got {n.max_negotiating_per_source}")
    if n.max_negotiating < n.max_negotiating_per_source:
        raise ConfigError(f"node.max_negotiating: must be at least node.max_negotiating_per_source, got {n.max_negotiating}")
    if n.receive_processes != AUTO and not (isinstance(n.receive_processes, int)
                                            and 1 <= n.receive_processes <= MAX_RECEIVE_PROCESSES):
        raise ConfigError(f'node.receive_processes: must be "{AUTO}" (one per core) or between 1 and '
                          f"{MAX_RECEIVE_PROCESSES}, got {n.receive_processes!r}")
    if n.max_instance_size_mb < 1:
        raise ConfigError(f"node.max_instance_size_mb: must be at least 1, got {n.max_instance_size_mb}")
    t = config.tls
    if t.enabled:
        _check_port("tls.port", t.port)
        if t.port == n.port:
            raise ConfigError(f"tls.port: must differ from node.port ({n.port})")
        for key in ("certificate", "private_key"):
            value = getattr(t, key)
            if not value:
                raise ConfigError(f"tls.{key}: required when tls.enabled is true")
            if not Path(value).is_file():
                raise ConfigError(f"tls.{key}: file {value} does not exist")
        if t.ca_certificates and not Path(t.ca_certificates).is_file():
            raise ConfigError(f"tls.ca_certificates: file {t.ca_certificates} does not exist")
    s = config.storage
    if not s.data_dir:
        raise ConfigError("storage.data_dir: must not be empty")
    if s.free_space_reserve_mb < 0:
        raise ConfigError("storage.free_space_reserve_mb: must not be negative")
    if config.database.url and "://" not in config.database.url:
        raise ConfigError(f"database.url: {config.database.url!r} is not an SQLAlchemy URL (dialect://...)")
    w = config.worker
    if w.study_stable_seconds < 0:
        raise ConfigError("worker.study_stable_seconds: must not be negative")
    if not 0 <= w.content_settle_seconds <= 10:
        raise ConfigError(f"worker.content_settle_seconds: must be between 0 and 10, got {w.content_settle_seconds}")
    if w.scan_interval_seconds <= 0:
        raise ConfigError("worker.scan_interval_seconds: must be positive")
    if w.lease_seconds <= 0:
        raise ConfigError("worker.lease_seconds: must be positive")
    if w.max_attempts < 1:
        raise ConfigError("worker.max_attempts: must be at least 1")
    if w.claim_interval_seconds <= 0:
        raise ConfigError("worker.claim_interval_seconds: must be positive")
    if w.stop_grace_seconds < 0:
        raise ConfigError("worker.stop_grace_seconds: must not be negative")
    if not 0 <= w.parallel_jobs <= 64:
        raise ConfigError(f"worker.parallel_jobs: must be between 0 (one per core) and 64, got {w.parallel_jobs}")
    if w.fetch_after_seconds < 0:
        raise ConfigError(f"worker.fetch_after_seconds: must not be negative (0 = never), got {w.fetch_after_seconds:g}")
    if w.prefit_after_seconds < 0:
        raise ConfigError(f"worker.prefit_after_seconds: must not be negative (0 = never), got {w.prefit_after_seconds:g}")
    if not 0 <= w.prefit_cache_mb <= 1_048_576:
        raise ConfigError(f"worker.prefit_cache_mb: must be between 0 and 1048576 MiB, got {w.prefit_cache_mb}")
    from pipeline.model.device import DEVICES

    if config.inference.device not in DEVICES:
        raise ConfigError(f"inference.device: must be auto, cpu or cuda, got {config.inference.device!r}")
    if config.inference.torch_threads < 0:
        raise ConfigError("inference.torch_threads: must not be negative (0 = the cores shared by the jobs running)")
    try:
        re.compile(config.contrast.series_description_pattern)
    except re.error as exc:
        raise ConfigError(f"contrast.series_description_pattern: not a regular expression: {exc}") from None
    d = config.delivery
    if d.max_attempts < 1:
        raise ConfigError("delivery.max_attempts: must be at least 1")
    for key in ("initial_backoff_seconds", "max_backoff_seconds", "timeout_seconds", "scan_interval_seconds"):
        if getattr(d, key) <= 0:
            raise ConfigError(f"delivery.{key}: must be positive")
    if config.report.sr_sop_class not in ("comprehensive3d", "comprehensive"):
        raise ConfigError(f"report.sr_sop_class: must be comprehensive3d or comprehensive, got {config.report.sr_sop_class!r}")
    if not config.report.manufacturer.strip():
        raise ConfigError("report.manufacturer: must not be empty")
    for i, dest in enumerate(config.destinations):
        _check_peer(f"destinations[{i}]", dest)
    from dicom_node.config import RETRIEVE_METHODS

    for i, src in enumerate(config.sources):
        where = f"sources[{i}]"
        _check_peer(where, src)
        if src.retrieve not in RETRIEVE_METHODS:
            raise ConfigError(f"{where}.retrieve: must be one of {', '.join(RETRIEVE_METHODS)}, got {src.retrieve!r}")
        if src.retrieve == "wado" and not src.dicomweb_url:
            raise ConfigError(f"{where}.dicomweb_url: retrieve = \"wado\" needs the source's DICOMweb URL")
        if src.retrieve != "wado" and not src.dimse:
            raise ConfigError(f"{where}: retrieve = {src.retrieve!r} needs ae_title, host and port")
    m = config.monitoring
    if m.enabled:
        _check_port("monitoring.port", m.port)
        if not m.allow_non_loopback and not _is_loopback(m.host):
            raise ConfigError(f"monitoring.host: {m.host!r} is not a loopback address; set monitoring.allow_non_loopback = true to serve metrics off this host")
    _validate_web(config.web)
    _validate_retention(config.retention)
    if config.logging.level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigError(f"logging.level: must be DEBUG, INFO, WARNING or ERROR, got {config.logging.level!r}")


def _validate_retention(retention: RetentionSection) -> None:
    for name in ("keep_days", "min_age_hours"):
        if getattr(retention, name) < 0:
            raise ConfigError(f"retention.{name}: must be 0 or more, not {getattr(retention, name)}")
    for name in ("high_watermark_percent", "low_watermark_percent"):
        if not 0 < getattr(retention, name) <= 100:
            raise ConfigError(f"retention.{name}: must be above 0 and at most 100, not {getattr(retention, name)}")
    if retention.low_watermark_percent >= retention.high_watermark_percent:
        raise ConfigError(f"retention.low_watermark_percent ({retention.low_watermark_percent:g}) must be below "
                          f"retention.high_watermark_percent ({retention.high_watermark_percent:g})")
    if retention.interval_seconds <= 0:
        raise ConfigError(f"retention.interval_seconds: must be above 0, not {retention.interval_seconds}")


def _validate_web(web: WebSection) -> None:
    _check_port("web.port", web.port)
    if not web.allow_non_loopback and not _is_loopback(web.host):
        raise ConfigError(f"web.host: {web.host!r} is not a loopback address; set web.allow_non_loopback = true "
                          "(and web.certificate / web.private_key for HTTPS) to serve the console off this host")
    if bool(web.certificate) != bool(web.private_key):
        raise ConfigError("web.certificate: web.certificate and web.private_key go together (both or neither)")
    for key in ("certificate", "private_key"):
        value = getattr(web, key)
        if value and not Path(value).is_file():
            raise ConfigError(f"web.{key}: file {value} does not exist")
    if web.session_max_age_seconds < 60:
        raise ConfigError(f"web.session_max_age_seconds: must be at least 60, got {web.session_max_age_seconds}")
    if web.session_idle_seconds < 60:
        raise ConfigError(f"web.session_idle_seconds: must be at least 60, got {web.session_idle_seconds}")
    if web.login_max_failures < 1:
        raise ConfigError(f"web.login_max_failures: must be at least 1, got {web.login_max_failures}")
    if web.login_lockout_seconds < 1:
        raise ConfigError(f"web.login_lockout_seconds: must be at least 1, got {web.login_lockout_seconds}")
    if web.refresh_seconds < 1:
        raise ConfigError(f"web.refresh_seconds: must be at least 1, got {web.refresh_seconds:g}")
    if web.trusted_user_header and not _HEADER.match(web.trusted_user_header):
        raise ConfigError(f"web.trusted_user_header: {web.trusted_user_header!r} is not an HTTP header name")


_HEADER = re.compile(r"^[A-Za-z0-9-]{1,64}$")
