"""The node's one configuration file (TOML), its defaults, environment overrides and validation.

Every key has a documented default (``DEFAULT_CONFIG_TEXT`` is what ``egfr-node init`` writes).
Environment variables override the file: ``EGFR_NODE_<SECTION>_<KEY>`` (for example
``EGFR_NODE_NODE_PORT=11113`` or ``EGFR_NODE_DATABASE_URL=postgresql+psycopg://...``);
``EGFR_NODE_CONFIG`` names the file. A bad value stops the start with a ``ConfigError``
that names the key.
"""

from __future__ import annotations

import os
import re
import tomllib
from importlib import resources
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

__all__ = [
    "ConfigError",
    "NodeSection",
    "TlsSection",
    "StorageSection",
    "DatabaseSection",
    "WorkerSection",
    "InferenceSection",
    "DeliverySection",
    "ReportSection",
    "Destination",
    "LoggingSection",
    "MonitoringSection",
    "Config",
    "load_config",
    "config_path_from_env",
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_CONFIG_TEXT",
]

ENV_PREFIX = "EGFR_NODE_"
DEFAULT_CONFIG_PATH = Path("egfr-node.toml")
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE VR: no backslash, 16 chars


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the key."""


@dataclass(frozen=True)
class NodeSection:
    """[node]: the DICOM Application Entity PACS sends to."""

    ae_title: str = "EGFR_NODE"
    host: str = "0.0.0.0"
    port: int = 11112
    allowed_calling_aets: tuple[str, ...] = ()
    require_called_aet: bool = True
    max_associations: int = 10
    maximum_pdu_size: int = 262144
    network_timeout_seconds: float = 60.0
    acse_timeout_seconds: float = 10.0
    max_associate_request_bytes: int = 1048576
    max_associations_per_calling_ae: int = 0
    max_negotiating_per_source: int = 8
    max_negotiating: int = 64
    max_instance_size_mb: int = 1024
    receive_processes: int = 1
    receive_speedups: bool = True


@dataclass(frozen=True)
class TlsSection:
    """[tls]: DICOM over TLS on its own port beside the plain one."""

    enabled: bool = False
    port: int = 2762
    certificate: str = ""
    private_key: str = ""
    ca_certificates: str = ""


@dataclass(frozen=True)
class StorageSection:
    """[storage]: where received instances are archived."""

    data_dir: str = "./egfr-data"
    free_space_reserve_mb: int = 1024
    fsync: bool = True

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    @property
    def archive_path(self) -> Path:
        return self.data_path / "archive"


@dataclass(frozen=True)
class DatabaseSection:
    """[database]: SQLAlchemy URL; empty means the SQLite file in the data folder."""

    url: str = ""


@dataclass(frozen=True)
class WorkerSection:
    """[worker]: study completeness and the job queue."""

    study_stable_seconds: float = 30.0
    scan_interval_seconds: float = 5.0
    lease_seconds: float = 600.0
    max_attempts: int = 3
    claim_interval_seconds: float = 1.0
    #: on stop, how long a running job may go on before it is handed back to the queue
    stop_grace_seconds: float = 10.0


@dataclass(frozen=True)
class InferenceSection:
    """[inference]: where and how the fold ensemble runs."""

    device: str = "auto"
    torch_threads: int = 0

    def threads(self, cores: int) -> int:
        """CPU threads for torch: the configured count, or all cores but one (the SCP's)."""
        return self.torch_threads if self.torch_threads > 0 else max(1, cores - 1)


@dataclass(frozen=True)
class ContrastSection:
    """[contrast]: the evidence of a contrast agent a series needs before it is predicted."""

    require_evidence: bool = True
    series_description_pattern: str = ""


@dataclass(frozen=True)
class DeliverySection:
    """[delivery]: C-STORE of results to the destinations, with retries."""

    max_attempts: int = 8
    initial_backoff_seconds: float = 5.0
    max_backoff_seconds: float = 600.0
    timeout_seconds: float = 30.0
    scan_interval_seconds: float = 2.0


@dataclass(frozen=True)
class ReportSection:
    """[report]: what the node sends back."""

    sr_sop_class: str = "comprehensive3d"
    result_card: bool = True
    manufacturer: str = "egfr-node"
    institution_name: str = ""


@dataclass(frozen=True)
class Destination:
    """One [[destinations]] entry: where results are sent by C-STORE (TLS when ``tls``)."""

    name: str
    ae_title: str
    host: str
    port: int
    tls: bool = False
    ca_certificates: str = ""
    certificate: str = ""
    private_key: str = ""


@dataclass(frozen=True)
class MonitoringSection:
    """[monitoring]: /metrics (Prometheus) and /healthz over HTTP, served by the SCP process."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 9112
    allow_non_loopback: bool = False


@dataclass(frozen=True)
class WebSection:
    """[web]: the admin console and its HTTP API (``egfr-node web``; ``serve`` starts it when enabled)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 8080
    allow_non_loopback: bool = False
    #: ``name:scrypt$...`` lines, one user each (``egfr-node web add-user NAME``); default <data_dir>/web-users
    users_file: str = ""
    #: a header a reverse proxy sets to the signed-in user (e.g. X-Remote-User); empty: not trusted
    trusted_user_header: str = ""
    #: addresses whose trusted_user_header is believed (the proxy's)
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")
    session_max_age_seconds: int = 28800
    #: HTTPS: certificate and private key (PEM); session cookies are then Secure
    certificate: str = ""
    private_key: str = ""
    refresh_seconds: float = 5.0


@dataclass(frozen=True)
class RetentionSection:
    """[retention]: which finished studies the worker deletes from the archive, and when."""

    enabled: bool = True
    #: a finished study (its jobs ended, its results delivered) is deleted this many days after; 0: never by age
    keep_days: float = 0.0
    #: above this share of the archive's file system in use, the longest-finished studies are deleted ...
    high_watermark_percent: float = 90.0
    #: ... until the use is at or below this
    low_watermark_percent: float = 80.0
    #: a study finished less than this long ago is not deleted for the watermarks
    min_age_hours: float = 1.0
    interval_seconds: float = 60.0


@dataclass(frozen=True)
class LoggingSection:
    """[logging]"""

    level: str = "INFO"


@dataclass(frozen=True)
class Config:
    node: NodeSection = field(default_factory=NodeSection)
    tls: TlsSection = field(default_factory=TlsSection)
    storage: StorageSection = field(default_factory=StorageSection)
    database: DatabaseSection = field(default_factory=DatabaseSection)
    worker: WorkerSection = field(default_factory=WorkerSection)
    inference: InferenceSection = field(default_factory=InferenceSection)
    contrast: ContrastSection = field(default_factory=ContrastSection)
    delivery: DeliverySection = field(default_factory=DeliverySection)
    report: ReportSection = field(default_factory=ReportSection)
    destinations: tuple[Destination, ...] = ()
    logging: LoggingSection = field(default_factory=LoggingSection)
    monitoring: MonitoringSection = field(default_factory=MonitoringSection)
    web: WebSection = field(default_factory=WebSection)
    retention: RetentionSection = field(default_factory=RetentionSection)
    source: str = "<defaults>"

    @property
    def web_users_path(self) -> Path:
        """The console's users file: web.users_file, else <data_dir>/web-users."""
        return Path(self.web.users_file) if self.web.users_file else self.storage.data_path / "web-users"

    @property
    def database_url(self) -> str:
        if self.database.url:
            return self.database.url
        return f"sqlite:///{self.storage.data_path / 'egfr-node.sqlite3'}"


_SECTIONS: dict[str, type] = {
    "node": NodeSection,
    "tls": TlsSection,
    "storage": StorageSection,
    "database": DatabaseSection,
    "worker": WorkerSection,
    "inference": InferenceSection,
    "contrast": ContrastSection,
    "delivery": DeliverySection,
    "report": ReportSection,
    "logging": LoggingSection,
    "monitoring": MonitoringSection,
    "web": WebSection,
    "retention": RetentionSection,
}


def config_path_from_env(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The config file to read: an explicit path, else ``$EGFR_NODE_CONFIG``, else ./egfr-node.toml if present."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(ENV_PREFIX + "CONFIG")
    if env:
        return Path(env)
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None


def load_config(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Read, override from the environment, and validate the configuration.

    Raises ConfigError naming the key at fault (``node.port: must be ...``).
    """
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {p} is not valid TOML: {exc}") from exc
        source = str(p)

    unknown = set(raw) - set(_SECTIONS) - {"destinations"}
    if unknown:
        raise ConfigError(f"{sorted(unknown)[0]}: unknown section (known: {', '.join([*_SECTIONS, 'destinations'])})")

    sections: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        table = raw.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{name}: must be a table ([{name}])")
        table = dict(table)
        _apply_env(name, cls, table, environ)
        sections[name] = _build_section(name, cls, table)

    destinations = _build_destinations(raw.get("destinations", []))
    config = Config(destinations=destinations, source=source, **sections)
    _validate(config)
    return config


def _apply_env(section: str, cls: type, table: dict[str, Any], environ: Mapping[str, str]) -> None:
    for f in fields(cls):
        key = f"{ENV_PREFIX}{section.upper()}_{f.name.upper()}"
        if key in environ:
            table[f.name] = _parse_env(f"{section}.{f.name}", f.type, environ[key])


def _parse_env(key: str, type_name: Any, text: str) -> Any:
    type_name = str(type_name)
    try:
        if type_name == "bool":
            lowered = text.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
            raise ValueError(text)
        if type_name == "int":
            return int(text)
        if type_name == "float":
            return float(text)
        if type_name.startswith("tuple"):
            return [item.strip() for item in text.split(",") if item.strip()]
    except ValueError:
        raise ConfigError(f"{key}: environment value {text!r} is not a {type_name}") from None
    return text


def _build_section(name: str, cls: type, table: dict[str, Any]) -> Any:
    known = {f.name: f for f in fields(cls)}
    for key in table:
        if key not in known:
            raise ConfigError(f"{name}.{key}: unknown key (known: {', '.join(known)})")
    values = {}
    for key, value in table.items():
        values[key] = _coerce(f"{name}.{key}", str(known[key].type), value)
    return cls(**values)


def _coerce(key: str, type_name: str, value: Any) -> Any:
    if type_name == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: must be true or false, got {value!r}")
        return value
    if type_name == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: must be an integer, got {value!r}")
        return value
    if type_name == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: must be a number, got {value!r}")
        return float(value)
    if type_name.startswith("tuple"):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: must be a list of strings, got {value!r}")
        return tuple(value)
    if not isinstance(value, str):
        raise ConfigError(f"{key}: must be a string, got {value!r}")
    return value


def _build_destinations(items: Any) -> tuple[Destination, ...]:
    if not isinstance(items, list):
        raise ConfigError("destinations: must be an array of tables ([[destinations]])")
    known = {f.name: f for f in fields(Destination)}
    out = []
    for i, item in enumerate(items):
        where = f"destinations[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: must be a table")
        for key in item:
            if key not in known:
                raise ConfigError(f"{where}.{key}: unknown key (known: {', '.join(known)})")
        for key, f in known.items():
            if key not in item and f.default is MISSING:
                raise ConfigError(f"{where}.{key}: missing")
        values = {k: _coerce(f"{where}.{k}", str(known[k].type), v) for k, v in item.items()}
        out.append(Destination(**values))
    names = [d.name for d in out]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"destinations.name: {name!r} is used twice")
    return tuple(out)


def _check_port(key: str, port: int) -> None:
    if not 1 <= port <= 65535:
        raise ConfigError(f"{key}: must be between 1 and 65535, got {port}")


def _check_ae(key: str, title: str) -> None:
    if not _AE_TITLE.match(title) or not title.strip():
        raise ConfigError(f"{key}: {title!r} is not a valid AE title (1-16 characters, no backslash)")


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _validate(config: Config) -> None:
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
    if not 1 <= n.receive_processes <= 64:
        raise ConfigError(f"node.receive_processes: must be between 1 and 64, got {n.receive_processes}")
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
    if config.inference.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"inference.device: must be auto, cpu or cuda, got {config.inference.device!r}")
    if config.inference.torch_threads < 0:
        raise ConfigError("inference.torch_threads: must not be negative (0 = all cores but one)")
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
        _check_ae(f"destinations[{i}].ae_title", dest.ae_title)
        _check_port(f"destinations[{i}].port", dest.port)
        for key in ("ca_certificates", "certificate", "private_key"):
            value = getattr(dest, key)
            if value and not Path(value).is_file():
                raise ConfigError(f"destinations[{i}].{key}: file {value} does not exist")
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
    if web.refresh_seconds < 1:
        raise ConfigError(f"web.refresh_seconds: must be at least 1, got {web.refresh_seconds:g}")
    if web.trusted_user_header and not _HEADER.match(web.trusted_user_header):
        raise ConfigError(f"web.trusted_user_header: {web.trusted_user_header!r} is not an HTTP header name")


_HEADER = re.compile(r"^[A-Za-z0-9-]{1,64}$")


#: What ``egfr-node init`` writes: every key with its default and what it means
#: (``{data_dir}`` is filled in). Kept in step with the sections above by a test.
DEFAULT_CONFIG_TEXT = (resources.files("dicom_node") / "default-config.toml").read_text(encoding="utf-8")
